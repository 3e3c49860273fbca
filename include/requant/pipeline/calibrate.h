#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>

#include "requant/dist/transport.h"
#include "requant/model/llama.h"
#include "requant/quant/quantized.h"
#include "requant/quant/sparse.h"

// Phases 2-3 on one rank: statistics of each linear's calibration inputs, gathered in the
// distributed forward, and the base quantizer applied to every linear of the rank's layers.
// N calibration sequences, T tokens, C n_embd.

namespace rq::pipeline {

// What to keep of each linear input seen during forward.
struct StatsOptions {
    bool    xtx         = false;  // X^T X (fp64), GPTQ's Hessian
    bool    abs_mean    = false;  // mean |x| per input channel over every token (AWQ)
    int64_t max_samples = 0;      // keep up to this many input rows, evenly strided (AWQ search)
    int64_t total_rows  = 0;      // rows that will be observed per input (sets the stride)
};

// Accumulates statistics per (layer, linear input) during forward.
class StatsCollector : public model::LinearObserver {
  public:
    explicit StatsCollector(StatsOptions o = {}) : opt_(o) {}
    void observe(int64_t layer, model::LinearInput which, const at::Tensor& x) override;
    // Each throws Error if nothing was observed for (layer, which).
    const at::Tensor& xtx(int64_t layer, model::LinearInput which) const;       // double [I, I]
    at::Tensor        abs_mean(int64_t layer, model::LinearInput which) const;  // float [I]
    at::Tensor        samples(int64_t layer, model::LinearInput which) const;   // float [n, I]
    void              clear() { acc_.clear(); }

  private:
    struct Entry {
        at::Tensor              xtx, abs_sum;
        std::vector<at::Tensor> samples;
        int64_t                 rows = 0;
    };
    const Entry& entry(int64_t layer, model::LinearInput which) const;

    StatsOptions                             opt_;
    std::map<std::pair<int64_t, int>, Entry> acc_;
};

struct QuantSpec {
    std::string method       = "rtn";  // rtn | gptq | awq | squeezellm
    int         bits         = 4;
    int64_t     group_size   = 128;
    double      damp         = 0.01;
    bool        act_order    = false;
    int64_t     block_size   = 128;
    bool        sequential   = false;  // statistics through already-quantized earlier layers
    int         awq_grid     = 20;
    int         kmeans_iters = 50;
    int64_t     awq_samples  = 2048;  // input rows kept per linear input for the AWQ search
    // Dense-and-Sparse (SqueezeLLM's recipe): outliers by the range rule with one global rho so
    // that outlier_ratio of all linear weights are selected, and the significant_ratio of each
    // linear with the largest Fisher diagonal. ReQuant (pipeline/requant.h): outliers
    // "adaptive" (Alg. 1) over candidate ratios outlier_ratio * outlier_candidates[j], or
    // "random"; significant weights "pqi" (Alg. 2, rounds of step_ratio) or "random".
    double              outlier_ratio      = 0;
    std::string         outlier_select     = "none";  // none | fixed | adaptive | random
    std::vector<double> outlier_candidates = {0, 0.25, 0.5, 1, 1.5, 2, 3, 4};
    double              significant_ratio  = 0;
    std::string         significant_select = "none";    // none | fisher | pqi | random
    double              step_ratio         = 0;         // beta; 0 = one round of significant_ratio
    std::string         scope              = "global";  // global | linear
    bool                signed_ranking     = true;
};

// Fisher diagonal of every linear of the stage: the sum over calibration sequences of squared
// per-sequence gradients of that sequence's mean loss (SqueezeLLM), from 1F1B passes with one
// sequence per microbatch. [layer of the stage][kLinears order] -> float [O, I].
std::vector<std::array<at::Tensor, 7>> fisher_diagonal(model::Stage& stage, dist::Transport& t,
                                                       const at::Tensor& tokens);

// The statistics a method needs from the forward pass.
StatsOptions stats_options(const QuantSpec& spec, int64_t total_rows);

// One linear, decomposed: W_hat = dequant(dense) + outliers + significant.
struct LinearQuant {
    quant::QuantizedLinear dense;
    quant::SparseCsr       outliers;     // values are residuals W - dequant(dense) (fp16)
    quant::SparseCsr       significant;  // same, for the significant weights
};
using LayerQuant = std::array<LinearQuant, 7>;  // model::kLinears order

// W_hat = dequant(dense) + outliers + significant (each part added when present), fp32 [O, I]:
// the one reconstruction used in the run, on resume and in export.
at::Tensor reconstruct(const LinearQuant& q);

// Masks [layer of the stage][kLinears] of the weights kept sparse (bool [O, I]; undefined = none).
using SparseMasks = std::vector<std::array<at::Tensor, 7>>;
struct SparseSelection {
    SparseMasks outliers, significant;  // empty when not selected
};

// The sparse masks of this rank's layers; collective over the transport (the global rho of the
// range rule is bisected on weight counts summed over ranks). `fisher` is needed for "fisher".
// `outliers`, when given, are the outlier masks (Alg. 1's, chosen before). Significant weights
// by PQI or at random are chosen after quantization (pipeline/requant.h), not here.
SparseSelection select_sparse(const model::Stage& stage, dist::Transport& t, const QuantSpec& spec,
                              const std::vector<std::array<at::Tensor, 7>>* fisher,
                              const SparseMasks*                            outliers = nullptr);

// Quantizes the 7 linears of `layer` of the stage with the spec's method and replaces each
// weight by its dequantized value (fp32). `stats` may be null for methods that need none.
// `fisher`: this layer's Fisher diagonals (SqueezeLLM), else null. `masks`: this layer's sparse
// masks, else null: masked weights are left out of the dense fit (zeroed for uniform methods,
// zero k-means weight for SqueezeLLM) and stored as CSR residuals.
LayerQuant quantize_layer(model::Stage& stage, int64_t layer, const StatsCollector* stats,
                          const std::array<at::Tensor, 7>* fisher,
                          const std::array<at::Tensor, 7>* outlier_masks,
                          const std::array<at::Tensor, 7>* significant_masks,
                          const QuantSpec&                 spec);

// The same on given weights w (the layer's 7 linears), leaving the stage alone: the dequantized
// W_hat = dense + outliers + significant goes to w_hat (fp32 -> w's dtype).
LayerQuant quantize_weights(const std::array<at::Tensor, 7>& w, int64_t layer,
                            const StatsCollector* stats, const std::array<at::Tensor, 7>* fisher,
                            const std::array<at::Tensor, 7>* outlier_masks,
                            const std::array<at::Tensor, 7>* significant_masks,
                            const QuantSpec& spec, std::array<at::Tensor, 7>& w_hat);

struct CalibrationTimes {
    double statistics_s = 0, quantize_s = 0, outliers_s = 0;
};

// Statistics (if the method needs them) and quantization of every layer of this rank's stage.
// Non-sequential: one streamed full-precision forward through the whole pipeline collects
// every layer's statistics (SqueezeLLM: the Fisher diagonal from forward+backward passes).
// Sequential: layer by layer in model order, each layer's statistics taken from inputs that passed
// through the already-quantized layers before it (hidden states pass from rank to rank).
// With outlier_select = adaptive, Alg. 1 (pipeline/requant.h) picks the outliers first;
// `report` gets its tables.
// Resume: `hooks.load(layer)` may return a layer finished by an earlier run; it is used as is
// (its W_hat goes into the stage in place of quantizing), which gives the same result because
// the statistics of every other layer come from the same full-precision or quantized inputs.
// `hooks.saved(done, layer, q)` is called on each rank after each of its layers.
struct LayerHooks {
    std::function<std::optional<LayerQuant>(int64_t layer)>             load;
    std::function<void(int64_t done, int64_t layer, const LayerQuant&)> saved;
};
std::vector<LayerQuant> calibrate_and_quantize(model::Stage& stage, dist::Transport& t,
                                               const at::Tensor& calib_tokens, int64_t microbatch,
                                               const QuantSpec& spec, CalibrationTimes& times,
                                               const LayerHooks& hooks  = {},
                                               nlohmann::json*   report = nullptr);

// Puts W_hat = reconstruct(q) of every linear of stage layer `il` (0-based in the stage).
void set_layer_weights(model::Stage& stage, std::size_t il, const LayerQuant& q);

bool method_needs_forward_stats(const std::string& method);  // gptq, awq

}  // namespace rq::pipeline
