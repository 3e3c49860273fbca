// ReQuant's phases 4 and 5 across the ranks (requant/pipeline/requant.h).
// Legend: L n_layer, R outlier candidates, O out_features, I in_features.
#include "requant/pipeline/requant.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <cmath>

#include "requant/dist/schedule.h"
#include "requant/io/error.h"
#include "requant/pipeline/progress.h"
#include "requant/quant/quantized.h"
#include "requant/quant/sparse.h"
#include "requant/requant/budget.h"
#include "requant/requant/select.h"
#include "requant/sensitivity/pqi.h"

namespace rq::pipeline {
namespace {

// The base method's own measure of how far W_hat is from W (what the method minimises).
double objective(const QuantSpec& spec, const at::Tensor& w, const at::Tensor& w_hat,
                 const StatsCollector& stats, int64_t layer, model::Linear l,
                 const at::Tensor* fisher) {
    const at::Tensor d = (w.to(at::kDouble) - w_hat.to(at::kDouble));  // [O, I]
    if (spec.method == "gptq")                                         // tr(dW H dW^T), H = X^T X
        return (d.matmul(stats.xtx(layer, model::linear_input(l))) * d).sum().item<double>();
    if (spec.method == "awq")  // |dW X^T|^2 on the sampled input rows
        return stats.samples(layer, model::linear_input(l))
            .to(at::kDouble)
            .matmul(d.t())
            .square()
            .sum()
            .item<double>();
    if (spec.method == "squeezellm")
        return (fisher->to(at::kDouble) * d.square()).sum().item<double>();
    return d.square().sum().item<double>();  // rtn: the rounding error itself
}

// One value per (layer, linear, candidate) of this rank in a zero [L*7, R] table, summed over
// ranks: exact, and the same table for every P.
at::Tensor gather_table(dist::Transport& t, const std::vector<std::vector<double>>& rows,
                        int64_t first_row, int64_t n_rows, int64_t R) {
    at::Tensor table = at::zeros({n_rows, R}, at::kDouble);
    auto       a     = table.accessor<double, 2>();
    for (std::size_t k = 0; k < rows.size(); ++k)
        for (int64_t r = 0; r < R; ++r) a[first_row + int64_t(k)][r] = rows[k][std::size_t(r)];
    t.allreduce_sum(table)->wait();
    return table;
}

}  // namespace

SparseMasks adaptive_outliers(model::Stage& stage, dist::Transport& t, const at::Tensor& tokens,
                              int64_t microbatch, const QuantSpec& spec,
                              const std::vector<std::array<at::Tensor, 7>>* fisher,
                              nlohmann::json&                               report) {
    const auto&   layers = stage.weights().layers;
    const int64_t L = stage.config().n_layer, l0 = stage.range().layer_begin;
    const auto&   cand = spec.outlier_candidates;
    const int64_t R    = int64_t(cand.size());
    if (cand.empty() || cand.front() != 0.0)
        throw ConfigError("requant.outlier_candidates must start with 0 (no outliers)");
    // Statistics of the full-precision model for the objective (and for GPTQ/AWQ themselves).
    StatsCollector stats(stats_options(spec, tokens.size(0) * tokens.size(1)));
    if (method_needs_forward_stats(spec.method)) {
        at::NoGradGuard no_grad;
        stage.set_observer(&stats);
        dist::PipelineRunner(stage, t, microbatch).forward(tokens);
        stage.set_observer(nullptr);
    }
    // Every candidate of every linear: outliers = the top r |w|, the rest quantized.
    std::vector<std::vector<double>> err, cnt;
    double                           local_n = 0;
    for (std::size_t il = 0; il < layers.size(); ++il) {
        const int64_t             layer = l0 + int64_t(il);
        std::array<at::Tensor, 7> w;
        for (std::size_t i = 0; i < 7; ++i) {
            w[i] = layers[il].linear(model::kLinears[i]).detach();
            local_n += double(w[i].numel());
        }
        std::vector<std::vector<double>> e(7, std::vector<double>(std::size_t(R))), n = e;
        for (int64_t r = 0; r < R; ++r) {
            std::array<at::Tensor, 7> masks, w_hat;
            for (std::size_t i = 0; i < 7; ++i) {
                const auto k = int64_t(
                    std::floor(cand[std::size_t(r)] * spec.outlier_ratio * double(w[i].numel())));
                masks[i]             = quant::topk_mask(w[i].abs(), k);
                n[i][std::size_t(r)] = double(k);
            }
            const auto* f = fisher ? &(*fisher)[il] : nullptr;
            quantize_weights(w, layer, &stats, f, &masks, nullptr, spec, w_hat);
            for (std::size_t i = 0; i < 7; ++i)
                e[i][std::size_t(r)] = objective(spec, w[i], w_hat[i], stats, layer,
                                                 model::kLinears[i], f ? &(*f)[i] : nullptr);
        }
        for (std::size_t i = 0; i < 7; ++i) err.push_back(e[i]), cnt.push_back(n[i]);
    }
    const at::Tensor E     = gather_table(t, err, 7 * l0, 7 * L, R);
    const at::Tensor N     = gather_table(t, cnt, 7 * l0, 7 * L, R);
    at::Tensor       total = at::tensor({local_n}, at::kDouble);
    t.allreduce_sum(total)->wait();
    const auto budget = int64_t(std::floor(spec.outlier_ratio * total.item<double>()));

    // The coordinator solves the budget and sends every rank the choice.
    at::Tensor choice = at::zeros({7 * L}, at::kDouble);
    if (t.rank() == 0) {
        const auto sol = requant::solve_budget(E, N.to(at::kLong), budget);
        for (int64_t k = 0; k < 7 * L; ++k) choice[k] = double(sol.choice[std::size_t(k)]);
        spdlog::info("outliers: {} of budget {} ({:.4f}%), objective {:.6e} -> {:.6e}", sol.count,
                     budget, 100.0 * double(sol.count) / total.item<double>(),
                     E.select(1, 0).sum().item<double>(), sol.error);
    }
    t.broadcast(choice, 0)->wait();

    SparseMasks    masks(layers.size());
    nlohmann::json per    = nlohmann::json::array();
    int64_t        chosen = 0;
    for (int64_t k = 0; k < 7 * L; ++k) {
        const auto   r     = int64_t(choice[k].item<double>());
        const double ratio = cand[std::size_t(r)] * spec.outlier_ratio;
        per.push_back({{"layer", k / 7},
                       {"linear", model::linear_name(model::kLinears[std::size_t(k % 7)])},
                       {"ratio", ratio},
                       {"count", N[k][r].item<double>()},
                       {"objective_dense", E[k][0].item<double>()},
                       {"objective", E[k][r].item<double>()}});
        chosen += int64_t(N[k][r].item<double>());
        const int64_t il = k / 7 - l0;
        if (il < 0 || il >= int64_t(layers.size())) continue;
        const at::Tensor& w = layers[std::size_t(il)].linear(model::kLinears[std::size_t(k % 7)]);
        masks[std::size_t(il)][std::size_t(k % 7)] =
            quant::topk_mask(w.detach().abs(), int64_t(N[k][r].item<double>()));
    }
    report["outlier_selection"] = {{"select", "adaptive"},
                                   {"budget", budget},
                                   {"count", chosen},
                                   {"candidates", cand},
                                   {"per_linear", per}};
    return masks;
}

void detach_significant(model::Stage& stage, dist::Transport& t,
                        const sensitivity::LinearSet& w_orig, std::vector<LayerQuant>& q,
                        const at::Tensor& tokens, int64_t microbatch, const QuantSpec& spec,
                        const io::JobSensitivity& pqi_opt, nlohmann::json& report,
                        DetachResume resume) {
    auto&         layers = stage.weights().layers;
    const int64_t L = stage.config().n_layer, l0 = stage.range().layer_begin;
    const double  beta   = spec.step_ratio > 0 ? spec.step_ratio : spec.significant_ratio;
    const bool    random = spec.significant_select == "random";
    // K = ceil(r_s / beta) rounds of beta, the last one taking what is left of r_s.
    const int K = random ? 1 : std::max(1, int(std::ceil(spec.significant_ratio / beta - 1e-9)));
    auto      step_of = [&](int k) {
        return k < K - 1 ? beta : spec.significant_ratio - (K - 1) * beta;
    };
    requant::Masks taken(layers.size()), chosen;
    for (std::size_t il = 0; il < layers.size(); ++il)
        for (std::size_t i = 0; i < 7; ++i)
            if (q[il][i].outliers.nnz() > 0)
                taken[il][i] = quant::csr_mask(q[il][i].outliers);  // never chosen again
    auto current = [&] {
        sensitivity::LinearSet w(layers.size());
        for (std::size_t il = 0; il < layers.size(); ++il)
            for (std::size_t i = 0; i < 7; ++i)
                w[il][i] = layers[il].linear(model::kLinears[i]).detach().clone();
        return w;
    };
    nlohmann::json rounds = resume.rounds;
    if (resume.rounds_done > 0) {  // the stage as the finished rounds left it
        chosen = resume.picked;
        for (std::size_t il = 0; il < layers.size(); ++il)
            for (std::size_t i = 0; i < 7; ++i)
                layers[il].linear(model::kLinears[i]) = at::where(
                    chosen[il][i], w_orig[il][i], layers[il].linear(model::kLinears[i]).detach());
    }
    for (int k = resume.rounds_done; k < K; ++k) {
        requant::Masks pick;
        if (random) {
            pick = requant::select_random(w_orig, taken, spec.significant_ratio, l0, 2025);
        } else {
            const sensitivity::LinearSet wq = current();
            for (std::size_t il = 0; il < layers.size(); ++il)  // PQI needs w in the stage
                for (std::size_t i = 0; i < 7; ++i)
                    layers[il].linear(model::kLinears[i]) = w_orig[il][i].clone();
            const auto r = sensitivity::compute_pqi(
                stage, t, wq, tokens, microbatch,
                {sensitivity::quadrature(pqi_opt.rule, pqi_opt.nodes), {}},
                step_progress(t.rank() == 0,
                              "detach " + std::to_string(k + 1) + "/" + std::to_string(K) + ": pqi",
                              "forward+backward passes"));
            for (std::size_t il = 0; il < layers.size(); ++il)
                for (std::size_t i = 0; i < 7; ++i)
                    layers[il].linear(model::kLinears[i]) = wq[il][i];
            pick = requant::select_top(t, r.pqi, requant::masks_or(taken, chosen), step_of(k),
                                       {spec.scope, spec.signed_ranking}, l0, L);
            rounds.push_back({{"round", k + 1},
                              {"delta_f", r.delta_f()},
                              {"pqi_sum", r.pqi_sum},
                              {"f_orig", r.f_orig},
                              {"f_quant", r.f_quant}});
            if (t.rank() == 0)
                spdlog::info("detach {}/{}: dF {:.6e}, sum PQI {:.6e}", k + 1, K, r.delta_f(),
                             r.pqi_sum);
        }
        chosen = requant::masks_or(chosen, pick);
        for (std::size_t il = 0; il < layers.size(); ++il)  // restore the originals
            for (std::size_t i = 0; i < 7; ++i)
                layers[il].linear(model::kLinears[i]) = at::where(
                    pick[il][i], w_orig[il][i], layers[il].linear(model::kLinears[i]).detach());
        if (resume.on_round) resume.on_round(k + 1, pick, rounds);
    }
    // Store them: W - dequant(dense) on the chosen weights, fp16 CSR; the stage gets W_hat as
    // stored (the fp16 residuals, not the exact originals).
    for (std::size_t il = 0; il < layers.size(); ++il)
        for (std::size_t i = 0; i < 7; ++i) {
            const at::Tensor dense = quant::dequantize(q[il][i].dense);
            q[il][i].significant =
                quant::csr_from_mask(w_orig[il][i].to(at::kFloat) - dense, chosen[il][i]);
            layers[il].linear(model::kLinears[i]) =
                reconstruct(q[il][i]).to(w_orig[il][i].scalar_type());
        }
    at::Tensor n = at::tensor({double(requant::masks_count(chosen))}, at::kDouble);
    t.allreduce_sum(n)->wait();
    report["detach"] = {{"select", spec.significant_select},
                        {"rounds", K},
                        {"step_ratio", beta},
                        {"scope", spec.scope},
                        {"signed_ranking", spec.signed_ranking},
                        {"count", n.item<double>()},
                        {"pqi", rounds}};
}

}  // namespace rq::pipeline
