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

// Held-out stop: the stage's loss on the held-out sequences after a round (recorded in `r`)
// must be below `f_held`, which it then becomes.
bool keeps_round(const DetachHooks& hooks, double& f_held, DetachRound& r, bool log) {
    r.f_holdout = hooks.holdout_loss();
    r.kept      = r.f_holdout < f_held;
    if (log)
        spdlog::info("detach {}: held-out loss {:.6f} -> {:.6f}: {}", r.round, f_held, r.f_holdout,
                     r.kept ? "kept" : "undone, and the last round");
    if (r.kept) f_held = r.f_holdout;
    return r.kept;
}

}  // namespace

nlohmann::json rounds_json(const std::vector<DetachRound>& rounds) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : rounds) {
        nlohmann::json o = {{"round", r.round},
                            {"delta_f", r.delta_f},
                            {"pqi_sum", r.pqi_sum},
                            {"f_orig", r.f_orig},
                            {"f_quant", r.f_quant}};
        if (!std::isnan(r.f_holdout)) o["f_holdout"] = r.f_holdout, o["kept"] = r.kept;
        j.push_back(o);
    }
    return j;
}

std::vector<DetachRound> rounds_from_json(const nlohmann::json& j) {
    std::vector<DetachRound> out;
    for (const auto& r : j) {
        DetachRound d{r.at("round").get<int>(), r.at("delta_f").get<double>(),
                      r.at("pqi_sum").get<double>(), r.at("f_orig").get<double>(),
                      r.at("f_quant").get<double>()};
        if (r.contains("f_holdout")) d.f_holdout = r["f_holdout"].get<double>();
        if (r.contains("kept")) d.kept = r["kept"].get<bool>();
        out.push_back(d);
    }
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
    // w~ of the linear (il, i) with the weights in `ch` restored: made per linear from its
    // parts whenever needed, never held whole.
    auto w_tilde = [&](const model::StageTensors& ch, std::size_t il, std::size_t i) {
        const at::Tensor w = quant::reconstruct(q[il][i]).to(stage.dtype());
        const at::Tensor m = ch.empty() ? at::Tensor() : ch[il][i];
        return m.defined() ? at::where(m, w_orig[il][i].to(w.scalar_type()), w) : w;
    };
    const bool held_out = hooks.holdout_loss && !random;
    bool       stopped  = false;  // a round was undone (here or in the run resumed)
    for (const auto& r : rounds) stopped = stopped || !r.kept;
    double f_held = NAN;  // the held-out loss of the stage as it is
    if (held_out && !stopped && rounds.empty()) {
        f_held                  = hooks.holdout_loss();
        report["holdout_start"] = f_held;  // kept in the run state across a resume
    } else if (held_out && !stopped) {
        f_held = rounds.back().f_holdout;
    }
    for (int k = hooks.rounds_done; k < K && !stopped; ++k) {
        model::StageTensors pick;
        if (random) {
            pick = select_random(w_orig, taken, r_s, l0, 2025);
        } else {
            const sensitivity::LinearPath::Source wq = [&](std::size_t il, std::size_t i) {
                return w_tilde(chosen, il, i);
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
        restore(stage, pick, w_orig);
        if (held_out && !keeps_round(hooks, f_held, rounds.back(), t.rank() == 0)) {
            for (std::size_t il = 0; il < layers.size(); ++il)  // undone: back to w~
                for (std::size_t i = 0; i < model::kNumLinears; ++i) {
                    layers[il].linear(model::kLinears[i]) = w_tilde(chosen, il, i);
                    if (pick[il][i].defined()) pick[il][i] = at::zeros_like(pick[il][i]);
                }
            stopped = true;
        }
        chosen = masks_or(chosen, pick);
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
