// Phase detach: Alg. 2's rounds, resumable round by round (requant/phases/phases.h).
#include <spdlog/spdlog.h>

#include "requant/decompose/detach.h"
#include "requant/phases/phases.h"
#include "requant/phases/progress.h"
#include "requant/units.h"

namespace rq::phases {

void detach(RunContext& ctx, const model::StageTensors& w_orig,
            std::vector<decompose::LayerQuant>& q) {
    if (!ctx.job.requant.detaches() || ctx.st.done("detach")) return;
    const auto    t0 = Clock::now();
    const int64_t l0 = ctx.range().layer_begin;
    for (auto& layer : q)  // W_hat = dense + outliers on entry
        for (auto& lq : layer) lq.significant = {};
    for (std::size_t il = 0; il < q.size(); ++il)
        decompose::set_layer_weights(*ctx.stage, il, q[il]);

    decompose::DetachHooks hooks;
    const int              done = ctx.st.detach_rounds_done;
    hooks.rounds_done = store::read_detach_rounds(ctx.t, ctx.out, l0, w_orig, done, ctx.fp,
                                                  hooks.picked, &ctx.across);
    if (hooks.rounds_done > 0) {
        ctx.log->info("detach: {} of {} finished rounds reused", hooks.rounds_done, done);
        hooks.rounds = ctx.st.detach_rounds;
        hooks.rounds.resize(std::size_t(hooks.rounds_done));
    }
    hooks.on_round = [&](int k, const model::StageTensors& pick,
                         const std::vector<decompose::DetachRound>& rounds) {
        for (std::size_t il = 0; ctx.writes() && il < pick.size(); ++il)
            store::write_detach_state(ctx.out, l0 + int64_t(il), k, pick[il], ctx.fp);
        ctx.st.detach_rounds_done = k;
        ctx.st.detach_rounds      = rounds;
        ctx.mark("detach-" + std::to_string(k), since(t0));
    };
    hooks.node_progress = [&](int k, int K) {
        return step_progress(ctx.lead(),
                             "detach " + std::to_string(k) + "/" + std::to_string(K) + ": pqi",
                             "forward+backward passes");
    };
    if (ctx.holdout.defined())
        hooks.holdout_loss = [&] { return ctx.runner->forward(ctx.holdout).mean(); };
    decompose::detach_significant(*ctx.stage, ctx.t, w_orig, q, ctx.calib, ctx.schedule,
                                  ctx.job.requant, ctx.job.sensitivity, ctx.st.requant, hooks);
    for (std::size_t il = 0; ctx.writes() && il < q.size(); ++il) {
        // The quantize-time errors stay with the layer (the statistics are gone by now).
        const auto errors = store::read_layer_errors(ctx.out, l0 + int64_t(il), ctx.fp);
        store::write_layer_state(ctx.out, l0 + int64_t(il), q[il], ctx.fp,
                                 errors ? &*errors : nullptr);
    }
    ctx.mark("detach", since(t0));
}

}  // namespace rq::phases
