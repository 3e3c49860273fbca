// requant-dist eval: loss and perplexity of a model on a text file or token dataset, on one
// process or across an MPI pipeline (mpirun -np P): rank 0 reads and tokenizes the data and
// broadcasts it, each rank loads only its stage's tensors, microbatches stream through.
#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "requant/cli/commands.h"
#include "requant/cli/sysinfo.h"
#include "requant/error.h"
#include "requant/io/atomic_file.h"
#include "requant/io/dataset.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/model/evaluate.h"
#include "requant/parallel/control.h"
#include "requant/parallel/mpi_env.h"
#include "requant/parallel/partition.h"
#include "requant/parallel/schedule.h"
#include "requant/parallel/transport.h"
#include "requant/phases/progress.h"
#include "requant/units.h"

namespace rq::cli {

namespace {

void print_ranks(const std::vector<parallel::RankStatus>& all) {
    std::fprintf(stderr,
                 "  rank  host          layers     tensors  loaded (MiB)  peak RSS (MiB)  busy (s) "
                 " wall (s)\n");
    for (const auto& s : all)
        std::fprintf(stderr, "  %4d  %-12s  [%3lld,%3lld)  %7lld  %12.1f  %14.1f  %8.2f  %8.2f\n",
                     s.rank, s.host.c_str(), (long long)s.layer_begin, (long long)s.layer_end,
                     (long long)s.n_tensors, s.n_bytes / 1048576.0, s.peak_rss / 1048576.0,
                     s.busy_s, s.wall_s);
}

}  // namespace

int run_eval(const EvalOptions& o) {
    set_threads(o.threads);
    auto             transport = parallel::make_mpi_transport();
    const int        rank = transport->rank(), P = transport->size();
    io::HfCheckpoint ckpt(o.model);
    const auto&      cfg = ckpt.config();

    at::Tensor tokens;
    int64_t    n_available = 0;
    if (rank == 0) {
        spdlog::info("model {}: {} layers, hidden {}, {} heads ({} kv), vocab {}, {:.2f} M params",
                     o.model, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_head_kv, cfg.n_vocab,
                     io::n_params(cfg) / 1e6);
        io::TokenData data =
            io::load_eval_data(o.data, ckpt.dir(), o.seq_len, o.max_seqs, o.threads);
        model::check_token_ids(data.tokens, cfg.n_vocab, io::base_name(o.data));
        tokens      = data.tokens;
        n_available = data.n_available;
        if (o.seq_len_given && tokens.size(1) != o.seq_len)
            spdlog::warn("--seq-len {} ignored: {} is a token dataset of sequences of {}",
                         o.seq_len, io::base_name(o.data), tokens.size(1));
        spdlog::info("data {}: {} tokens, {} sequences of {} (using {}); {} ranks x {} threads, {}",
                     o.data, data.n_tokens, n_available, tokens.size(1), tokens.size(0), P,
                     o.threads, blas_info());
    }
    tokens          = parallel::broadcast_tensor(*transport, tokens, 0, at::kLong);
    const int64_t N = tokens.size(0), T = tokens.size(1);

    const parallel::PipelinePlan plan = parallel::plan_pipeline(cfg, P, T);
    if (rank == 0 && P > 1) std::fprintf(stderr, "%s", parallel::format_plan(plan).c_str());
    const auto&              range = plan.stages[std::size_t(rank)].range;
    model::Stage             stage(cfg, model::load_stage_weights(ckpt, range, at::kFloat), T);
    parallel::PipelineRunner runner(stage, *transport, o.batch);

    const int64_t    M = (N + o.batch - 1) / o.batch;
    phases::Progress progress("eval", M, "microbatches");
    const auto       loss = runner.forward(tokens, [&](int64_t done) {
        if (rank == 0) progress.update(done);
    });
    if (rank == 0) progress.finish();

    parallel::RankStatus me{rank,
                            parallel::host_name(),
                            range.layer_begin,
                            range.layer_end,
                            int64_t(process_memory().peak),
                            runner.stats().wall_s,
                            runner.stats().busy_s,
                            int64_t(ckpt.used().size()),
                            int64_t(ckpt.bytes_loaded())};
    const auto           all = parallel::gather_objects(me, 0);
    if (rank != 0) return 0;
    if (P > 1) print_ranks(all);

    const double secs = runner.stats().wall_s, ppl = std::exp(loss.mean());
    std::printf(
        "loss %.6f  perplexity %.4f  (%lld sequences x %lld tokens, %lld predictions, "
        "%d ranks, %.0f tokens/s)\n",
        loss.mean(), ppl, (long long)N, (long long)T, (long long)loss.n_predicted, P,
        double(N * T) / secs);
    if (!o.json.empty()) {
        nlohmann::json j = {
            {"loss", loss.mean()}, {"perplexity", ppl}, {"tokens", loss.n_predicted},
            {"seqs", N},           {"seq_len", T},      {"model", o.model},
            {"data", o.data},      {"seconds", secs},   {"threads", o.threads},
            {"ranks", P}};
        for (const auto& s : all) j["peak_rss_bytes"].push_back(s.peak_rss);
        io::write_file_atomic(o.json, j.dump(2) + "\n");
    }
    return 0;
}

}  // namespace rq::cli
