// The driver of `requant-dist run|sensitivity` (requant/phases/run.h): the phases in order.
#include "requant/phases/run.h"

#include "requant/decompose/layer.h"
#include "requant/error.h"
#include "requant/phases/phases.h"
#include "requant/phases/study.h"
#include "requant/units.h"

namespace rq::phases {

int run_job(const io::Job& job, const RunFlags& flags) {
    const bool with_study = flags.with_study;
    RunContext ctx(job, flags.restart);
    for (int64_t l : flags.dump_layers) {
        if (l >= ctx.ckpt.config().n_layer)
            throw ConfigError("--dump-layer " + std::to_string(l) + ": the model has " +
                              std::to_string(ctx.ckpt.config().n_layer) + " layers");
        ctx.dump_layers.insert(l);
    }
    prepare(ctx);
    baseline(ctx);

    // w, where a later phase moves along the path from it (detach, the study): the
    // checkpoint's own bytes, mapped, not a copy.
    const model::StageTensors w_orig = with_study || job.requant.detaches()
                                           ? model::view_stage_linears(ctx.ckpt, ctx.range())
                                           : model::StageTensors{};
    auto                      q      = reuse_quantized(ctx);
    if (!q) {  // statistics, outliers and quantize, resumed layer by layer
        const auto     t0     = Clock::now();
        Statistics     stats  = statistics(ctx);
        nlohmann::json report = nlohmann::json::object();
        const auto     sel    = outliers(ctx, stats, report);
        q                     = quantize(ctx, stats, sel);
        ctx.st.requant        = report;
        ctx.mark("quantize", since(t0));
    }
    detach(ctx, w_orig, *q);
    evaluate(ctx);

    nlohmann::json study;  // PQI between w and w~ on the calibration set (not resumable)
    if (with_study) {
        const model::StageTensors wq = decompose::stage_linears(*ctx.stage);
        decompose::set_stage_linears(*ctx.stage, w_orig);
        study = sensitivity_study(*ctx.stage, ctx.t, wq, ctx.calib, job, ctx.schedule, ctx.seconds);
    }
    const quant::StorageBits all     = total_storage(ctx, *q);
    const nlohmann::json     linears = linear_table(ctx, *q);
    // The stage is done with: rank 0 assembles the checkpoint in the memory it held.
    ctx.runner.reset();
    ctx.stage.reset();
    assemble(ctx, all);
    write_results(ctx, all, with_study ? &study : nullptr, linears);
    return 0;
}

}  // namespace rq::phases
