// Stage split and per-rank memory from config.json (requant/parallel/memory_plan.h).
#include "requant/parallel/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "requant/model/attention.h"
#include "requant/model/head_loss.h"
#include "requant/units.h"

namespace rq::parallel {

double MemoryPlan::max_total() const {
    double m = 0;
    for (const auto& r : ranks) m = std::max(m, r.total());
    return m;
}

namespace {

// One layer's saved internals for backward (norms, q/k/v, attention output, the MLP's
// gate/up/product, residuals: ~10 C + 4 F floats per token), fp32, and attention's
// probabilities where it keeps them (short sequences, model/attention.h).
double layer_saved_bytes(const io::LlamaConfig& c, double mb, int64_t T) {
    return 4 * mb * double(T) * (10 * double(c.n_embd) + 4 * double(c.n_ff)) +
           double(model::attention_kept_bytes(int64_t(mb), c.n_head, T));
}

// One layer's replay in backward: its saved internals, one attention block's
// scores with their softmax and gradients (4 x [B, H, n, T]), and on the last stage one loss
// chunk's logits, log-softmax and gradient (3 x [rows, V]).
double replay_bytes(const io::LlamaConfig& c, double mb, int64_t T, bool last) {
    const double V     = double(c.n_vocab);
    const auto   B     = int64_t(mb);
    double       bytes = layer_saved_bytes(c, mb, T);
    bytes +=
        4 * 4 * mb * double(c.n_head) * double(model::attention_block(B, c.n_head, T)) * double(T);
    if (last) bytes += 3 * 4 * double(std::min(B * (T - 1), model::loss_chunk_rows(c.n_vocab))) * V;
    return bytes;
}

}  // namespace

MemoryPlan plan_memory(const io::LlamaConfig& c, const io::Job& job, int n_ranks) {
    const int64_t T = job.data.seq_len;
    MemoryPlan    p;
    p.pipeline     = parallel::plan_pipeline(c, n_ranks, T);
    const double C = double(c.n_embd), F = double(c.n_ff);
    const double HD = double(c.n_head * c.head_dim), KD = double(c.n_head_kv * c.head_dim);
    const double lin    = C * (HD + 2 * KD) + HD * C + 3 * C * F;  // linear weights per layer
    const double mb     = double(job.run.microbatch);
    const bool   detach = job.requant.detaches();
    const bool   fisher = job.quant.method == io::QuantMethod::SqueezeLlm ||
                        job.requant.significant() == io::SignificantSelect::Fisher;
    const bool qtip = job.quant.method == io::QuantMethod::Qtip;
    const bool xtx  = job.quant.method == io::QuantMethod::Gptq || qtip;
    const bool awq_block =
        job.quant.method == io::QuantMethod::Awq && job.quant.awq_loss == io::AwqLoss::Block;
    const double stored = c.torch_dtype == "float32" ? 4 : c.torch_dtype == "float64" ? 8 : 2;
    for (int r = 0; r < n_ranks; ++r) {
        const auto&  s    = p.pipeline.stages[std::size_t(r)];
        const double L    = double(s.range.layer_end - s.range.layer_begin);
        const bool   last = s.range.last;
        RankMemory   m;
        m.weights = 4.0 * double(s.params);
        if (fisher) m.statistics += (4 + 4) * lin * L;  // diagonal + gradients
        if (awq_block) {
            // Layer by layer: the layer's inputs and outputs and every row of its two block
            // inputs (fp32 [N, T, C] each), one layer's X^T X (fp64), and the block loss's
            // originals and one chunk of the MLP ([8192, F], fp32).
            const double rows = double(job.data.calibration_seqs) * double(T);
            m.statistics += 4 * 4 * rows * C + 8 * (2 * C * C + HD * HD + F * F) + 4 * rows * C +
                            4 * 8192.0 * F * 2;
        }
        if (xtx) {
            // X^T X per linear input (q/k/v share one, gate/up another), and the workspace
            // on the widest linear, fp64: GPTQ two [I, I] matrices at a time (the Cholesky
            // steps) and W, Q; QTIP six [I, I] (H and H_r, the Cholesky factor and block LDL)
            // and four [O, I] (W, W_r, the target and its trellis values).
            m.xtx_layer    = 8 * (2 * C * C + HD * HD + F * F);
            m.xtx_layers   = job.quant.sequential ? 1 : int64_t(L);
            const double I = std::max({C, HD, F});
            m.statistics += qtip ? 8 * (6 * I * I + 4 * C * F) : 8 * (2 * I * I + 2 * C * F);
        }
        if (detach) m.w_orig = stored * lin * L;
        if (detach) m.pqi = (4 + 4) * lin * L;  // gradients, accumulators (fp32)
        // The quantized parts, held from quantize on: codes and fp16 scale + zero per group.
        const double group = job.quant.group_size > 0 ? double(job.quant.group_size) : C;
        if (detach) m.w_orig += (double(job.quant.bits) + 32.0 / group) / 8 * lin * L;
        // Rank 0 assembles the checkpoint after the stage is let go: the largest tensor outside
        // the decoder layers (the embedding), stored, its file pages and an fp32 copy.
        if (r == 0) m.assembly = (2 * stored + 4) * double(c.n_vocab) * C;
        m.per_micro = 4 * mb * double(T) * C * (L + (last ? 1 : 0));  // StageTape
        m.transient = replay_bytes(c, mb, T, last);
        // Kept graphs: every layer's internals, and the head's normed input on the last stage.
        m.graph_per_micro = layer_saved_bytes(c, mb, T) * L + (last ? 4 * mb * double(T) * C : 0);
        m.in_flight       = n_ranks - r;
        m.activations     = m.per_micro * double(m.in_flight) + m.transient;
        p.ranks.push_back(m);
    }
    if (job.run.mem_gib > 0) {
        if (stats_in_passes(job)) {
            p.stats_passes = stats_passes(p, job.run.mem_gib * kGiB);
            for (std::size_t r = 0; r < p.ranks.size(); ++r)
                p.ranks[r].xtx_layers = layers_per_pass(p.pipeline.stages[r].range, p.stats_passes);
        }
        const int64_t cap = in_flight_cap(p, job.run.mem_gib * kGiB);
        for (auto& m : p.ranks) {
            m.in_flight   = std::min(m.in_flight, cap);
            m.activations = m.per_micro * double(m.in_flight) + m.transient;
        }
    }
    return p;
}

int64_t in_flight_cap(const MemoryPlan& p, double budget) {
    int64_t cap = std::numeric_limits<int64_t>::max();
    for (const auto& m : p.ranks) {
        const double fixed = m.total() - m.per_micro * double(m.in_flight);
        const double room  = m.per_micro > 0 ? (budget - fixed) / m.per_micro : double(cap);
        cap = std::min<int64_t>(cap, room >= double(cap) ? cap : int64_t(std::floor(room)));
    }
    return std::max<int64_t>(1, cap);
}

bool stats_in_passes(const io::Job& job) {
    const bool xtx =
        job.quant.method == io::QuantMethod::Gptq || job.quant.method == io::QuantMethod::Qtip;
    return xtx && !job.quant.sequential && job.requant.outliers() != io::OutlierSelect::Adaptive;
}

int64_t layers_per_pass(const model::StageRange& range, int64_t passes) {
    const int64_t L = range.layer_end - range.layer_begin;
    return (L + passes - 1) / passes;
}

int64_t stats_passes(const MemoryPlan& p, double budget) {
    int64_t most = 1;
    for (const auto& s : p.pipeline.stages)
        most = std::max(most, s.range.layer_end - s.range.layer_begin);
    for (int64_t G = 1; G < most; ++G) {
        bool fits = true;  // the statistics phase, one microbatch in flight, on every rank
        for (std::size_t r = 0; r < p.ranks.size(); ++r) {
            RankMemory m = p.ranks[r];
            m.xtx_layers = layers_per_pass(p.pipeline.stages[r].range, G);
            fits         = fits && m.weights + m.per_micro + m.transient + m.stats() <= budget;
        }
        if (fits) return G;
    }
    return most;
}

int ranks_for_memory(const io::LlamaConfig& c, const io::Job& job, double gib) {
    for (int P = 1; P <= c.n_layer; ++P)
        if (plan_memory(c, job, P).max_total() <= gib * kGiB) return P;
    return 0;
}

std::string format_memory_plan(const MemoryPlan& p, const io::LlamaConfig& c) {
    std::string out = parallel::format_plan(p.pipeline);
    char        line[200];
    std::snprintf(line, sizeof line, "%5s  %9s  %9s  %9s  %9s  %9s  %9s  %9s  %9s\n", "rank",
                  "weights", "w_orig", "stats", "pqi", "activ.", "runtime", "total GiB",
                  "in flight");
    out += line;
    for (std::size_t r = 0; r < p.ranks.size(); ++r) {
        const auto& m = p.ranks[r];
        std::snprintf(
            line, sizeof line, "%5zu  %9.3f  %9.3f  %9.3f  %9.3f  %9.3f  %9.3f  %9.3f  %9lld\n", r,
            m.weights / kGiB, m.w_orig / kGiB, m.stats() / kGiB, m.pqi / kGiB, m.activations / kGiB,
            m.runtime / kGiB, m.total() / kGiB, (long long)m.in_flight);
        out += line;
    }
    if (p.stats_passes > 1) {
        std::snprintf(line, sizeof line,
                      "X^T X in %lld calibration passes (a group of layers each) to fit the "
                      "budget\n",
                      (long long)p.stats_passes);
        out += line;
    }
    std::snprintf(line, sizeof line,
                  "%lld layers on %zu ranks: at most %.2f GiB per rank (estimate, above the "
                  "~0.2 GiB of libraries a process holds at start-up)\n",
                  (long long)c.n_layer, p.ranks.size(), p.max_total() / kGiB);
    out += line;
    return out;
}

}  // namespace rq::parallel
