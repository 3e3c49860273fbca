#pragma once

// Names of the model's parts in a libtorch profiler trace (RECORD_USER_SCOPE in the forward;
// a custom autograd Function's backward is named by its node). `bench_model --profile` records
// them and launch/profile_summary.py sorts a step's time by them: keep the three in step.

namespace rq::model {

constexpr const char* kScopeEmbed     = "rq::embed";
constexpr const char* kScopeRmsNorm   = "rq::rms_norm";
constexpr const char* kScopeRope      = "rq::rope";
constexpr const char* kScopeAttention = "rq::attention";  // scores, softmax, weighted values
constexpr const char* kScopeSwiglu    = "rq::swiglu";     // silu(gate) * up
constexpr const char* kScopeHeadLoss  = "rq::head_loss";  // LM head + cross-entropy

}  // namespace rq::model
