// Phases baseline and evaluate: perplexities of the stage's model (requant/phases/phases.h).
#include <spdlog/spdlog.h>

#include <cmath>

#include "requant/phases/phases.h"
#include "requant/units.h"

namespace rq::phases {
namespace {

// Every eval set, then the calibration set, through the pipeline in microbatches of
// run.microbatch: `requant-dist eval --batch <run.microbatch> --threads <run.threads>` on the
// exported model runs the same computation.
store::Perplexities perplexities(RunContext& ctx, const char* what) {
    store::Perplexities r;
    for (const auto& e : ctx.evals) {
        r[e.name] = std::exp(ctx.runner->forward(e.tokens).mean());
        if (ctx.lead()) spdlog::info("{}: {} perplexity {:.4f}", what, e.name, r[e.name]);
    }
    r["calibration"] = std::exp(ctx.runner->forward(ctx.calib).mean());
    return r;
}

}  // namespace

store::Perplexities baseline(RunContext& ctx) {
    const auto t0 = Clock::now();
    if (!ctx.st.done("baseline")) {
        ctx.st.ppl_fp = perplexities(ctx, "fp32");
        ctx.mark("baseline", since(t0));
    }
    return *ctx.st.ppl_fp;
}

store::Perplexities evaluate(RunContext& ctx) {
    const auto t0 = Clock::now();
    if (!ctx.st.done("evaluate")) {
        ctx.st.ppl_q = perplexities(ctx, io::name(ctx.job.quant.method));
        ctx.mark("evaluate", since(t0));
    }
    return *ctx.st.ppl_q;
}

}  // namespace rq::phases
