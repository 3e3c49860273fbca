#pragma once
#include <ATen/ATen.h>

#include <map>
#include <utility>
#include <vector>

#include "../common/shared_dir.h"
#include "requant/io/dataset.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/model/llama.h"

// Real llama-7m-en layers 0 and 4 with every input row of their linears, from 8 windows of 256
// tokens of sotu-1790-1980.txt. Loaded once per test binary and shared by the quantizer tests.

namespace rq::test {

struct RealLayers {
    std::vector<model::LayerWeights>                             layers;  // layers 0 and 4
    std::map<std::pair<int64_t, model::LinearInput>, at::Tensor> rows;    // float [B*T, in]
    static int64_t layer_index(std::size_t i) { return i == 0 ? 0 : 4; }
};

inline const RealLayers& real_layers() {
    static const RealLayers r = [] {
        class Observer : public model::LinearObserver {
          public:
            void observe(int64_t layer, model::LinearInput which, const at::Tensor& x) override {
                if (layer == 0 || layer == 4)
                    parts[{layer, which}].push_back(
                        x.reshape({-1, x.size(-1)}).to(at::kFloat).clone());
            }
            std::map<std::pair<int64_t, model::LinearInput>, std::vector<at::Tensor>> parts;
        };
        const std::string dir = shared_path("models/llama-7m-en");
        io::HfCheckpoint  ckpt(dir);
        io::TokenData     d = io::load_text_windows(shared_path("data/sotu-1790-1980.txt"),
                                                    dir + "/tokenizer.model", 256, 8);
        model::Stage      m(
                 ckpt.config(),
                 model::load_stage_weights(ckpt, model::whole_model(ckpt.config()), at::kFloat), 256);
        Observer obs;
        m.set_observer(&obs);
        at::NoGradGuard g;
        m.forward(d.tokens, d.tokens);
        RealLayers out;
        out.layers = {m.weights().layers[0], m.weights().layers[4]};
        for (auto& [key, parts] : obs.parts) out.rows[key] = at::cat(parts, 0);
        return out;
    }();
    return r;
}

}  // namespace rq::test
