// Sparse masks chosen before the dense fit: Alg. 1, the fixed rule, Fisher, random
// (requant/decompose/outliers.h). Legend: L n_layer, R outlier candidates, O out_features,
// I in_features.
#include "requant/decompose/outliers.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <limits>

#include "requant/decompose/budget.h"
#include "requant/decompose/layer.h"
#include "requant/decompose/select.h"
#include "requant/error.h"
#include "requant/quant/sparse.h"

namespace rq::decompose {
namespace {

constexpr int64_t kLin = int64_t(model::kNumLinears);

// One value per (layer, linear, candidate) of this rank in a zero [L*7, R] table, summed over
// ranks: exact, and the same table for every P.
at::Tensor gather_table(parallel::Transport& t, const std::vector<std::vector<double>>& rows,
                        int64_t first_row, int64_t n_rows, int64_t R) {
    at::Tensor table = at::zeros({n_rows, R}, at::kDouble);
    auto       a     = table.accessor<double, 2>();
    for (std::size_t k = 0; k < rows.size(); ++k)
        for (int64_t r = 0; r < R; ++r) a[first_row + int64_t(k)][r] = rows[k][std::size_t(r)];
    t.allreduce_sum(table)->wait();
    return table;
}

double global_sum(parallel::Transport& t, double v) {
    at::Tensor x = at::tensor({v}, at::kDouble);
    t.allreduce_sum(x)->wait();
    return x.item<double>();
}

// The per-linear [error, count] rows of every candidate for this rank's layers.
void candidate_tables(const model::Stage& stage, const io::JobQuant& quant,
                      const io::JobRequant& requant, const sensitivity::StatsCollector& stats,
                      const model::StageTensors* fisher, std::vector<std::vector<double>>& err,
                      std::vector<std::vector<double>>& cnt) {
    const auto&             layers = stage.weights().layers;
    const int64_t           l0     = stage.range().layer_begin;
    const auto&             cand   = requant.outlier_candidates;
    const std::size_t       R      = cand.size();
    const quant::Quantizer& method = quant::quantizer(quant.method);
    for (std::size_t il = 0; il < layers.size(); ++il) {
        const int64_t       layer = l0 + int64_t(il);
        const auto*         f     = fisher ? &(*fisher)[il] : nullptr;
        const LayerStats    ls    = layer_stats(&stats, layer, f);
        model::LayerTensors w;
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            w[i] = layers[il].linear(model::kLinears[i]).detach();
        std::vector<std::vector<double>> e(model::kNumLinears, std::vector<double>(R)), n = e;
        for (std::size_t r = 0; r < R; ++r) {
            model::LayerTensors masks, w_hat;
            for (std::size_t i = 0; i < model::kNumLinears; ++i) {
                const auto k =
                    int64_t(std::floor(cand[r] * requant.outlier_ratio * double(w[i].numel())));
                masks[i] = quant::topk_mask(w[i].abs(), k);
                n[i][r]  = double(k);
            }
            quantize_weights(w, layer, ls, &masks, nullptr, quant, w_hat);
            for (std::size_t i = 0; i < model::kNumLinears; ++i) {
                const auto which = std::size_t(model::linear_input(model::kLinears[i]));
                e[i][r] =
                    method.objective(w[i], w_hat[i], ls.inputs[which], f ? (*f)[i] : at::Tensor());
            }
        }
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            err.push_back(e[i]), cnt.push_back(n[i]);
    }
}

}  // namespace

model::StageTensors adaptive_outliers(const model::Stage& stage, parallel::Transport& t,
                                      const io::JobQuant& quant, const io::JobRequant& requant,
                                      const sensitivity::StatsCollector& stats,
                                      const model::StageTensors* fisher, nlohmann::json& report) {
    const auto&   layers = stage.weights().layers;
    const int64_t L = stage.config().n_layer, l0 = stage.range().layer_begin;
    const auto&   cand = requant.outlier_candidates;
    const int64_t R    = int64_t(cand.size());
    if (cand.empty() || cand.front() != 0.0)
        throw ConfigError("requant.outlier_candidates must start with 0 (no outliers)");
    // Every candidate of every linear: outliers = the top r |w|, the rest quantized.
    std::vector<std::vector<double>> err, cnt;
    candidate_tables(stage, quant, requant, stats, fisher, err, cnt);
    double local_n = 0;
    for (const auto& lw : layers)
        for (model::Linear l : model::kLinears) local_n += double(lw.linear(l).numel());
    const at::Tensor E      = gather_table(t, err, kLin * l0, kLin * L, R);
    const at::Tensor N      = gather_table(t, cnt, kLin * l0, kLin * L, R);
    const double     total  = global_sum(t, local_n);
    const auto       budget = int64_t(std::floor(requant.outlier_ratio * total));

    // The coordinator solves the budget and sends every rank the choice.
    at::Tensor choice = at::zeros({kLin * L}, at::kDouble);
    if (t.rank() == 0) {
        const auto sol = solve_budget(E, N.to(at::kLong), budget);
        for (int64_t k = 0; k < kLin * L; ++k) choice[k] = double(sol.choice[std::size_t(k)]);
        spdlog::info("outliers: {} of budget {} ({:.4f}%), objective {:.6e} -> {:.6e}", sol.count,
                     budget, 100.0 * double(sol.count) / total, E.select(1, 0).sum().item<double>(),
                     sol.error);
    }
    t.broadcast(choice, 0)->wait();

    model::StageTensors masks(layers.size());
    nlohmann::json      per    = nlohmann::json::array();
    int64_t             chosen = 0;
    for (int64_t k = 0; k < kLin * L; ++k) {
        const auto        r = int64_t(choice[k].item<double>());
        const std::size_t i = std::size_t(k % kLin);
        per.push_back({{"layer", k / kLin},
                       {"linear", model::linear_name(model::kLinears[i])},
                       {"ratio", cand[std::size_t(r)] * requant.outlier_ratio},
                       {"count", N[k][r].item<double>()},
                       {"objective_dense", E[k][0].item<double>()},
                       {"objective", E[k][r].item<double>()}});
        chosen += int64_t(N[k][r].item<double>());
        const int64_t il = k / kLin - l0;
        if (il < 0 || il >= int64_t(layers.size())) continue;
        const at::Tensor& w = layers[std::size_t(il)].linear(model::kLinears[i]);
        masks[std::size_t(il)][i] =
            quant::topk_mask(w.detach().abs(), int64_t(N[k][r].item<double>()));
    }
    report["outlier_selection"] = {{"select", "adaptive"},
                                   {"budget", budget},
                                   {"count", chosen},
                                   {"candidates", cand},
                                   {"per_linear", per}};
    return masks;
}

namespace {

// SqueezeLLM's range rule with one rho for every linear of the model, bisected so that the
// outliers summed over all ranks come to outlier_ratio of the linear weights.
model::StageTensors fixed_rule_outliers(const model::Stage& stage, parallel::Transport& t,
                                        double ratio, const model::StageTensors& taken) {
    const auto&                 layers = stage.weights().layers;
    std::vector<quant::IqrRule> rules;
    double                      local_n = 0;
    for (std::size_t il = 0; il < layers.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const at::Tensor& w = layers[il].linear(model::kLinears[i]);
            rules.emplace_back(w, taken.empty() ? at::Tensor() : taken[il][i]);
            local_n += double(w.numel());
        }
    const double target = std::floor(ratio * global_sum(t, local_n));
    auto         count  = [&](double rho) {
        double c = 0;
        for (const auto& r : rules) c += double(r.count(rho));
        return global_sum(t, c);
    };
    double lo = 0, hi = 1;
    while (count(hi) > target && hi < 1e6) lo = hi, hi *= 2;
    for (int it = 0; it < 50; ++it) {  // smallest rho whose count does not exceed the target
        const double mid                = 0.5 * (lo + hi);
        (count(mid) > target ? lo : hi) = mid;
    }
    model::StageTensors out(layers.size());
    for (std::size_t il = 0, k = 0; il < layers.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) out[il][i] = rules[k++].mask(hi);
    return out;
}

// The significant_ratio of each linear with the largest Fisher diagonal, outliers excluded.
model::StageTensors fisher_significant(const model::StageTensors& fisher,
                                       const model::StageTensors& outliers, double ratio) {
    model::StageTensors out(fisher.size());
    for (std::size_t il = 0; il < fisher.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            at::Tensor score = fisher[il][i].to(at::kDouble);
            if (!outliers.empty())  // already sparse: not a candidate
                score =
                    score.masked_fill(outliers[il][i], -std::numeric_limits<double>::infinity());
            const auto k = int64_t(std::llround(ratio * double(score.numel())));
            out[il][i]   = quant::topk_mask(score, k);
        }
    return out;
}

}  // namespace

SparseSelection select_sparse(const model::Stage& stage, parallel::Transport& t,
                              const io::JobRequant& requant, const model::StageTensors* fisher,
                              const model::StageTensors* outliers) {
    SparseSelection sel;
    const bool      by_fisher = requant.significant() == io::SignificantSelect::Fisher;
    if (by_fisher && fisher == nullptr)
        throw InternalError("significant_select = fisher needs the Fisher diagonal");
    const io::OutlierSelect how = outliers ? io::OutlierSelect::Adaptive : requant.outliers();
    if (by_fisher && how == io::OutlierSelect::Fixed) {
        // Dense-and-Sparse as the reference (outliers.py): the Fisher-sensitive weights first,
        // then the range rule's outliers among the rest.
        sel.significant = fisher_significant(*fisher, {}, requant.significant_ratio);
        sel.outliers    = fixed_rule_outliers(stage, t, requant.outlier_ratio, sel.significant);
        return sel;
    }
    switch (how) {
        case io::OutlierSelect::None:
            break;
        case io::OutlierSelect::Random: {  // only the shapes are read: no copies
            model::StageTensors like(stage.weights().layers.size());
            for (std::size_t il = 0; il < like.size(); ++il)
                for (std::size_t i = 0; i < model::kNumLinears; ++i)
                    like[il][i] = stage.weights().layers[il].linear(model::kLinears[i]);
            sel.outliers =
                select_random(like, {}, requant.outlier_ratio, stage.range().layer_begin, 2024);
            break;
        }
        case io::OutlierSelect::Fixed:
            sel.outliers = fixed_rule_outliers(stage, t, requant.outlier_ratio, {});
            break;
        case io::OutlierSelect::Adaptive:
            if (outliers == nullptr)
                throw InternalError("adaptive outliers come from Alg. 1 (adaptive_outliers)");
            sel.outliers = *outliers;
            break;
    }
    if (by_fisher)  // outliers taken by another rule: the sensitive weights among the rest
        sel.significant = fisher_significant(*fisher, sel.outliers, requant.significant_ratio);
    return sel;
}

}  // namespace rq::decompose
