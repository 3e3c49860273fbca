// Alg. 2, step-wise significant-weight detach across the ranks (requant/decompose/detach.h).
#include "requant/decompose/detach.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <cmath>

#include "requant/decompose/select.h"
#include "requant/quant/sparse.h"
#include "requant/sensitivity/pqi.h"

namespace rq::decompose {
namespace {

// Every linear of the stage to where(mask, w_orig, current) (the chosen weights restored).
void restore(model::Stage& stage, const model::StageTensors& mask,
             const model::StageTensors& w_orig) {
    auto& layers = stage.weights().layers;
    for (std::size_t il = 0; il < layers.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            at::Tensor& w = layers[il].linear(model::kLinears[i]);
            w             = at::where(mask[il][i], w_orig[il][i].to(w.scalar_type()), w.detach());
        }
}

// The outliers of q: never chosen again.
model::StageTensors outlier_masks(const std::vector<LayerQuant>& q) {
    model::StageTensors taken(q.size());
    for (std::size_t il = 0; il < q.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            if (q[il][i].outliers.nnz() > 0) taken[il][i] = quant::csr_mask(q[il][i].outliers);
    return taken;
}

}  // namespace

nlohmann::json rounds_json(const std::vector<DetachRound>& rounds) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : rounds)
        j.push_back({{"round", r.round},
                     {"delta_f", r.delta_f},
                     {"pqi_sum", r.pqi_sum},
                     {"f_orig", r.f_orig},
                     {"f_quant", r.f_quant}});
    return j;
}

std::vector<DetachRound> rounds_from_json(const nlohmann::json& j) {
    std::vector<DetachRound> out;
    for (const auto& r : j)
        out.push_back({r.at("round").get<int>(), r.at("delta_f").get<double>(),
                       r.at("pqi_sum").get<double>(), r.at("f_orig").get<double>(),
                       r.at("f_quant").get<double>()});
    return out;
}

void detach_significant(model::Stage& stage, parallel::Transport& t,
                        const model::StageTensors& w_orig, std::vector<LayerQuant>& q,
                        const at::Tensor& tokens, const parallel::ScheduleOptions& schedule,
                        const io::JobRequant& requant, const io::JobSensitivity& pqi_opt,
                        nlohmann::json& report, const DetachHooks& hooks) {
    auto&         layers = stage.weights().layers;
    const int64_t L = stage.config().n_layer, l0 = stage.range().layer_begin;
    const double  r_s    = requant.significant_ratio;
    const double  beta   = requant.step_ratio > 0 ? requant.step_ratio : r_s;
    const bool    random = requant.significant() == io::SignificantSelect::Random;
    // K = ceil(r_s / beta) rounds of beta, the last one taking what is left of r_s.
    const int K       = random ? 1 : std::max(1, int(std::ceil(r_s / beta - 1e-9)));
    auto      step_of = [&](int k) { return k < K - 1 ? beta : r_s - (K - 1) * beta; };
    const model::StageTensors taken = outlier_masks(q);
    model::StageTensors       chosen;
    std::vector<DetachRound>  rounds = hooks.rounds;
    if (hooks.rounds_done > 0) {  // the stage as the finished rounds left it
        chosen = hooks.picked;
        restore(stage, chosen, w_orig);
    }
    for (int k = hooks.rounds_done; k < K; ++k) {
        model::StageTensors pick;
        if (random) {
            pick = select_random(w_orig, taken, r_s, l0, 2025);
        } else {
            // w~ is what the stage holds now, W_hat with the chosen weights restored: made
            // per linear from its parts whenever the path needs it, never held whole.
            const sensitivity::LinearPath::Source wq = [&](std::size_t il, std::size_t i) {
                const at::Tensor w = quant::reconstruct(q[il][i]).to(stage.dtype());
                const at::Tensor m = chosen.empty() ? at::Tensor() : chosen[il][i];
                return m.defined() ? at::where(m, w_orig[il][i].to(w.scalar_type()), w) : w;
            };
            const auto r = sensitivity::compute_pqi(
                stage, t, w_orig, wq, tokens, schedule,
                {sensitivity::quadrature(pqi_opt.rule, pqi_opt.nodes), {}},
                hooks.node_progress ? hooks.node_progress(k + 1, K) : nullptr);
            // The ranking needs 4 bytes per weight beside the PQI: the stage's linears (4 more)
            // are let go meanwhile and made again from their parts after it.
            for (auto& lw : layers)
                for (model::Linear l : model::kLinears) lw.linear(l) = at::Tensor();
            pick = select_top(t, r.pqi, masks_or(taken, chosen), step_of(k),
                              {requant.scope, requant.signed_ranking}, l0, L);
            for (std::size_t il = 0; il < layers.size(); ++il)
                for (std::size_t i = 0; i < model::kNumLinears; ++i)
                    layers[il].linear(model::kLinears[i]) = wq(il, i);
            rounds.push_back({k + 1, r.delta_f(), r.pqi_sum, r.f_orig, r.f_quant});
            if (t.rank() == 0)
                spdlog::info("detach {}/{}: dF {:.6e}, sum PQI {:.6e}", k + 1, K, r.delta_f(),
                             r.pqi_sum);
        }
        chosen = masks_or(chosen, pick);
        restore(stage, pick, w_orig);
        if (hooks.on_round) hooks.on_round(k + 1, pick, rounds);
    }
    // Store them: W - dequant(dense) on the chosen weights, fp16 CSR; the stage gets W_hat as
    // stored (the fp16 residuals, not the exact originals).
    for (std::size_t il = 0; il < layers.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const at::Tensor dense = quant::dequantize(q[il][i].dense);
            q[il][i].significant =
                quant::csr_from_mask(w_orig[il][i].to(at::kFloat) - dense, chosen[il][i]);
            layers[il].linear(model::kLinears[i]) = quant::reconstruct(q[il][i]).to(stage.dtype());
        }
    at::Tensor n = at::tensor({double(masks_count(chosen))}, at::kDouble);
    t.allreduce_sum(n)->wait();
    report["detach"] = {{"select", io::name(requant.significant())},
                        {"rounds", K},
                        {"step_ratio", beta},
                        {"scope", io::name(requant.scope)},
                        {"signed_ranking", requant.signed_ranking},
                        {"count", n.item<double>()},
                        {"pqi", rounds_json(rounds)}};
}

}  // namespace rq::decompose
