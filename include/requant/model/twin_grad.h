#pragma once
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cstddef>
#include <vector>

// A fused kernel's backward is loops over raw data: its result has no graph. When autograd asks
// for one (create_graph: the double backward of sensitivity's exact second-order term), the
// kernels' backward goes through the plain twin instead: autograd of twin(inputs), with a graph.

namespace rq::model {

// True inside a backward that must itself be differentiable.
inline bool backward_needs_graph() {
    return at::GradMode::is_enabled();
}

// Gradients of twin(inputs) against `grad`, with a graph: one per input, undefined where the
// input does not require grad. inputs are the Function's saved inputs.
template <class F>
std::vector<at::Tensor> twin_backward(F twin, const std::vector<at::Tensor>& inputs,
                                      const at::Tensor& grad) {
    std::vector<at::Tensor>  need;
    std::vector<std::size_t> at_index;
    for (std::size_t i = 0; i < inputs.size(); ++i)
        if (inputs[i].requires_grad()) need.push_back(inputs[i]), at_index.push_back(i);
    std::vector<at::Tensor> out(inputs.size());
    if (need.empty()) return out;
    const at::Tensor y = twin(inputs);
    const auto       g = torch::autograd::grad({y}, need, {grad}, /*retain_graph=*/true,
                                               /*create_graph=*/true, /*allow_unused=*/true);
    for (std::size_t k = 0; k < g.size(); ++k) out[at_index[k]] = g[k];
    return out;
}

}  // namespace rq::model
