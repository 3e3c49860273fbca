// Stage split and per-rank memory from config.json (requant/parallel/memory_plan.h).
#include "requant/parallel/memory_plan.h"

#include <algorithm>
#include <cstdio>

#include "requant/units.h"

namespace rq::parallel {

double MemoryPlan::max_total() const {
    double m = 0;
    for (const auto& r : ranks) m = std::max(m, r.total());
    return m;
}

MemoryPlan plan_memory(const io::LlamaConfig& c, const io::Job& job, int n_ranks) {
    const int64_t T = job.data.seq_len;
    MemoryPlan    p;
    p.pipeline     = parallel::plan_pipeline(c, n_ranks, T);
    const double C = double(c.n_embd), F = double(c.n_ff), V = double(c.n_vocab);
    const double HD = double(c.n_head * c.head_dim), KD = double(c.n_head_kv * c.head_dim);
    const double lin    = C * (HD + 2 * KD) + HD * C + 3 * C * F;  // linear weights per layer
    const double mb     = double(job.run.microbatch);
    const bool   detach = job.requant.detaches();
    const bool   sens   = detach;
    const bool   fisher = job.quant.method == io::QuantMethod::SqueezeLlm ||
                        job.requant.significant() == io::SignificantSelect::Fisher;
    const bool xtx = job.quant.method == io::QuantMethod::Gptq;
    for (int r = 0; r < n_ranks; ++r) {
        const auto&  s = p.pipeline.stages[std::size_t(r)];
        const double L = double(s.range.layer_end - s.range.layer_begin);
        RankMemory   m;
        m.weights = 4.0 * double(s.params);
        if (detach) m.w_orig = 4 * lin * L;
        if (fisher) m.statistics += 4 * lin * L;
        if (xtx) m.statistics += 8 * (2 * C * C + HD * HD + F * F) * (job.quant.sequential ? 1 : L);
        if (sens || fisher) m.pqi = (4 + (sens ? 8 : 0)) * lin * L;
        // Saved per token and layer for backward: norms, q/k/v, attention output, the MLP's
        // gate/up/product, residuals (~10 C + 4 F floats) and the attention weights (H x T).
        const double per_layer =
            4 * mb * double(T) * (10 * C + 4 * F + double(c.n_head) * double(T));
        const double in_flight = double(n_ranks - r);
        m.activations          = per_layer * L * in_flight;
        if (s.range.last) m.activations += 2 * 4 * mb * double(T) * V;  // logits + gradient
        p.ranks.push_back(m);
    }
    return p;
}

int ranks_for_memory(const io::LlamaConfig& c, const io::Job& job, double gib) {
    for (int P = 1; P <= c.n_layer; ++P)
        if (plan_memory(c, job, P).max_total() <= gib * kGiB) return P;
    return 0;
}

std::string format_memory_plan(const MemoryPlan& p, const io::LlamaConfig& c) {
    std::string out = parallel::format_plan(p.pipeline);
    char        line[200];
    std::snprintf(line, sizeof line, "%5s  %9s  %9s  %9s  %9s  %9s  %9s\n", "rank", "weights",
                  "w_orig", "stats", "pqi", "activ.", "total GiB");
    out += line;
    for (std::size_t r = 0; r < p.ranks.size(); ++r) {
        const auto& m = p.ranks[r];
        std::snprintf(line, sizeof line, "%5zu  %9.2f  %9.2f  %9.2f  %9.2f  %9.2f  %9.2f\n", r,
                      m.weights / kGiB, m.w_orig / kGiB, m.statistics / kGiB, m.pqi / kGiB,
                      m.activations / kGiB, m.total() / kGiB);
        out += line;
    }
    std::snprintf(line, sizeof line,
                  "%lld layers on %zu ranks: at most %.2f GiB per rank (estimate; add ~0.3 GiB "
                  "of libraries per process)\n",
                  (long long)c.n_layer, p.ranks.size(), p.max_total() / kGiB);
    out += line;
    return out;
}

}  // namespace rq::parallel
