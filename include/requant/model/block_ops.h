#pragma once
#include <ATen/core/Tensor.h>

// RMSNorm and SwiGLU as fused kernels: one pass over the data each way, with a hand-written
// backward (as llm.c writes its layers), in place of the chains of ATen ops of their _ref twins,
// each of which allocates and sweeps the whole tensor. fp32 and fp64 (other dtypes take the
// _ref path). Rows run in parallel, each row in one thread, and the one cross-row sum (the norm
// weight's gradient) adds fixed chunks in a fixed order: results do not depend on the thread
// count. Legend: N rows (all leading dims), C features.

namespace rq::model {

// x * rsqrt(mean(x^2) + eps) * w over the last dim. x [..., C], w [C] -> [..., C].
// Differentiable in x and w.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps);
at::Tensor rms_norm_ref(const at::Tensor& x, const at::Tensor& w, double eps);

// silu(g) * u, the SwiGLU gate. g, u [..., F] -> [..., F]. Differentiable in g and u.
at::Tensor swiglu(const at::Tensor& g, const at::Tensor& u);
at::Tensor swiglu_ref(const at::Tensor& g, const at::Tensor& u);

}  // namespace rq::model
