// requant-dist eval: loss and perplexity of a model on a text file or token dataset.
#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "requant/cli/commands.h"
#include "requant/cli/progress.h"
#include "requant/cli/sysinfo.h"
#include "requant/io/dataset.h"
#include "requant/io/error.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/model/evaluate.h"

namespace rq::cli {

int run_eval(const EvalOptions& o) {
    set_threads(o.threads);
    io::HfCheckpoint ckpt(o.model);
    const auto&      cfg = ckpt.config();
    spdlog::info("model {}: {} layers, hidden {}, {} heads ({} kv), vocab {}, {:.2f} M params",
                 o.model, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_head_kv, cfg.n_vocab,
                 io::n_params(cfg) / 1e6);
    io::TokenData data = io::load_eval_data(o.data, ckpt.dir(), o.seq_len, o.max_seqs);
    const int64_t N = data.tokens.size(0), T = data.tokens.size(1);
    if (o.seq_len_given && T != o.seq_len)
        spdlog::warn("--seq-len {} ignored: {} is a token dataset of sequences of {}", o.seq_len,
                     io::base_name(o.data), T);
    model::check_token_ids(data.tokens, cfg.n_vocab, io::base_name(o.data));
    spdlog::info("data {}: {} tokens, {} sequences of {} (using {}); {} threads, {}", o.data,
                 data.n_tokens, data.n_available, T, N, o.threads, blas_info());

    model::Stage stage(cfg, model::load_stage_weights(ckpt, model::whole_model(cfg), at::kFloat),
                       T);
    Progress     progress("eval", N, "seqs");
    const auto   r =
        model::evaluate(stage, data.tokens, o.batch, [&](int64_t done) { progress.update(done); });
    progress.finish();
    const double secs = progress.elapsed_s();

    std::printf(
        "loss %.6f  perplexity %.4f  (%lld sequences x %lld tokens, %lld predictions, "
        "%.0f tokens/s)\n",
        r.mean_loss(), r.perplexity(), (long long)N, (long long)T, (long long)r.n_predicted,
        double(N * T) / secs);
    if (!o.json.empty()) {
        nlohmann::json j = {{"loss", r.mean_loss()},
                            {"perplexity", r.perplexity()},
                            {"tokens", r.n_predicted},
                            {"seqs", r.n_seqs},
                            {"seq_len", T},
                            {"model", o.model},
                            {"data", o.data},
                            {"seconds", secs},
                            {"threads", o.threads}};
        std::ofstream  out(o.json);
        if (!out) throw IoError(o.json + ": cannot write: " + errno_string());
        out << j.dump(2) << "\n";
    }
    return 0;
}

}  // namespace rq::cli
