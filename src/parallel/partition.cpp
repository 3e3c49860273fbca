// Cost-balanced contiguous partition of decoder layers (requant/parallel/partition.h).
#include "requant/parallel/partition.h"

#include <algorithm>
#include <cstdio>
#include <limits>

#include "requant/error.h"

namespace rq::parallel {

namespace {

struct Costs {
    double  layer_flops = 0, embd_flops = 0, head_flops = 0;
    int64_t layer_params = 0, embd_params = 0, head_params = 0;
    int64_t shared_head  = 0;  // head parameters that are the embedding's when one stage has both
    double  total_flops  = 0;
    int64_t total_params = 0;
};

Costs costs(const io::LlamaConfig& c, int64_t T) {
    Costs        k;
    const double q = double(c.n_head * c.head_dim), kv = double(c.n_head_kv * c.head_dim);
    const double lin = double(c.n_embd) * (2 * q + 2 * kv) + 3.0 * c.n_embd * c.n_ff;
    k.layer_params   = int64_t(lin) + 2 * c.n_embd;
    k.layer_flops    = 2 * lin + 4.0 * T * q;  // linears + QK^T and PV over the T x T scores
    k.embd_params    = c.n_vocab * c.n_embd;
    k.embd_flops     = 0;
    k.head_params    = c.n_vocab * c.n_embd + c.n_embd;  // a copy of the embedding when tied
    k.head_flops     = 2.0 * c.n_embd * c.n_vocab;
    k.shared_head    = c.tie_word_embeddings ? c.n_vocab * c.n_embd : 0;
    k.total_flops    = c.n_layer * k.layer_flops + k.embd_flops + k.head_flops;
    k.total_params   = c.n_layer * k.layer_params + k.embd_params + k.head_params;
    return k;
}

StagePlan stage_plan(const Costs& k, int64_t lb, int64_t le, bool first, bool last) {
    StagePlan s;
    s.range = {lb, le, first, last};
    s.flops_per_token =
        double(le - lb) * k.layer_flops + (first ? k.embd_flops : 0) + (last ? k.head_flops : 0);
    s.params = (le - lb) * k.layer_params + (first ? k.embd_params : 0) +
               (last ? k.head_params : 0) - (first && last ? k.shared_head : 0);
    s.cost = s.flops_per_token / k.total_flops + double(s.params) / double(k.total_params);
    return s;
}

}  // namespace

double PipelinePlan::imbalance() const {
    double mx = 0, sum = 0;
    for (const auto& s : stages) mx = std::max(mx, s.cost), sum += s.cost;
    return stages.empty() ? 1.0 : mx / (sum / double(stages.size()));
}

PipelinePlan plan_pipeline(const io::LlamaConfig& c, int n_ranks, int64_t seq_len) {
    const int64_t L = c.n_layer, P = n_ranks;
    if (P < 1 || P > L)
        throw ConfigError("cannot split " + std::to_string(L) + " decoder layers over " +
                          std::to_string(P) + " ranks (need 1 <= ranks <= layers)");
    const Costs k = costs(c, seq_len);
    // best[p][l]: the smallest possible maximum stage cost when stages 0..p-1 hold layers 0..l-1.
    // Exact dynamic programme, O(P L^2); ties go to the earliest cut (deterministic).
    const double                      inf = std::numeric_limits<double>::infinity();
    std::vector<std::vector<double>>  best(P + 1, std::vector<double>(L + 1, inf));
    std::vector<std::vector<int64_t>> cut(P + 1, std::vector<int64_t>(L + 1, -1));
    best[0][0] = 0;
    for (int64_t p = 1; p <= P; ++p)
        for (int64_t l = p; l <= L - (P - p); ++l)
            for (int64_t j = p - 1; j < l; ++j) {
                if (best[p - 1][j] == inf) continue;
                const double c_stage = stage_plan(k, j, l, p == 1, p == P).cost;
                const double v       = std::max(best[p - 1][j], c_stage);
                if (v < best[p][l] - 1e-12) best[p][l] = v, cut[p][l] = j;
            }
    PipelinePlan plan;
    plan.seq_len = seq_len;
    std::vector<int64_t> ends(P + 1);
    ends[P] = L;
    for (int64_t p = P; p >= 1; --p) ends[p - 1] = cut[p][ends[p]];
    for (int64_t p = 0; p < P; ++p)
        plan.stages.push_back(stage_plan(k, ends[p], ends[p + 1], p == 0, p == P - 1));
    return plan;
}

std::string format_plan(const PipelinePlan& p) {
    std::string out;
    char        line[256];
    std::snprintf(line, sizeof line,
                  "pipeline plan: %zu stages, seq %lld, imbalance %.3f (max/mean cost)\n",
                  p.stages.size(), (long long)p.seq_len, p.imbalance());
    out += line;
    out += "  rank  layers      embd head   params(M)  MFLOP/token   cost\n";
    for (std::size_t r = 0; r < p.stages.size(); ++r) {
        const auto& s = p.stages[r];
        std::snprintf(line, sizeof line, "  %4zu  [%3lld,%3lld)   %-4s %-4s %10.3f %12.2f %6.3f\n",
                      r, (long long)s.range.layer_begin, (long long)s.range.layer_end,
                      s.range.first ? "yes" : "-", s.range.last ? "yes" : "-", s.params / 1e6,
                      s.flops_per_token / 1e6, s.cost);
        out += line;
    }
    return out;
}

}  // namespace rq::parallel
