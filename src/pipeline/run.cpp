// The quantization pipeline of `requant-dist run` (requant/pipeline/run.h).
#include "requant/pipeline/run.h"

#include <ATen/ATen.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "requant/dist/control.h"
#include "requant/dist/mpi_env.h"
#include "requant/dist/partition.h"
#include "requant/dist/schedule.h"
#include "requant/io/dataset.h"
#include "requant/io/error.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/model/evaluate.h"
#include "requant/pipeline/calibrate.h"
#include "requant/pipeline/checkpoint.h"
#include "requant/pipeline/progress.h"
#include "requant/pipeline/requant.h"
#include "requant/pipeline/state.h"
#include "requant/pipeline/stop.h"
#include "requant/pipeline/study.h"
#include "requant/quant/quantized.h"
#include "requant/sensitivity/pqi.h"

#ifndef RQ_VERSION
#define RQ_VERSION "unknown"
#endif

namespace rq::pipeline {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct EvalSet {
    std::string name;  // file name, the key in results.json
    at::Tensor  tokens;
};

QuantSpec quant_spec(const io::Job& job) {
    QuantSpec s;
    s.method             = job.quant.method;
    s.bits               = job.quant.bits;
    s.group_size         = job.quant.group_size;
    s.damp               = job.quant.damp;
    s.act_order          = job.quant.act_order;
    s.block_size         = job.quant.block_size;
    s.sequential         = job.quant.sequential;
    s.awq_grid           = job.quant.awq_grid;
    s.kmeans_iters       = job.quant.kmeans_iters;
    s.outlier_ratio      = job.requant.outlier_ratio;
    s.outlier_select     = job.requant.outlier_ratio > 0 ? job.requant.outlier_select : "none";
    s.outlier_candidates = job.requant.outlier_candidates;
    s.significant_ratio  = job.requant.significant_ratio;
    s.significant_select =
        job.requant.significant_ratio > 0 ? job.requant.significant_select : "none";
    s.step_ratio     = job.requant.step_ratio;
    s.scope          = job.requant.scope;
    s.signed_ranking = job.requant.signed_ranking;
    return s;
}

}  // namespace

namespace {
sensitivity::LinearSet stage_linears(const model::Stage& s) {
    sensitivity::LinearSet out(s.weights().layers.size());
    for (std::size_t il = 0; il < out.size(); ++il)
        for (std::size_t i = 0; i < model::kLinears.size(); ++i)
            out[il][i] = s.weights().layers[il].linear(model::kLinears[i]).detach().clone();
    return out;
}
void set_stage_linears(model::Stage& s, const sensitivity::LinearSet& w) {
    for (std::size_t il = 0; il < w.size(); ++il)
        for (std::size_t i = 0; i < model::kLinears.size(); ++i)
            s.weights().layers[il].linear(model::kLinears[i]) = w[il][i].clone();
}
}  // namespace

namespace {
// Every rank has written its files for a phase: only then does rank 0 record the phase.
void barrier(dist::Transport& t) {
    at::Tensor z = at::zeros({1}, at::kDouble);
    t.allreduce_sum(z)->wait();
}
bool all_ranks(dist::Transport& t, bool mine) {
    at::Tensor z = at::tensor({mine ? 0.0 : 1.0}, at::kDouble);
    t.allreduce_sum(z)->wait();
    return z.item<double>() == 0;
}
std::string which_differs(const Fingerprint& a, const Fingerprint& b) {
    std::string s;
    if (a.model != b.model) s += "the model";
    if (a.data != b.data) s += std::string(s.empty() ? "" : ", ") + "the data";
    if (a.job != b.job) s += std::string(s.empty() ? "" : ", ") + "the job";
    return s;
}
// --restart: removes what a run writes (and nothing else the folder may hold).
void clear_run(const std::string& out) {
    for (const char* f : {"run.h5", "model.requant.h5", "results.json"})
        std::filesystem::remove(out + "/" + f);
    std::filesystem::remove_all(out + "/layers");
}
// OUT/logs/rank-NNN.log: what this rank did (phases, layers, rounds), for every rank; the
// console shows rank 0 only.
std::shared_ptr<spdlog::logger> open_rank_log(const std::string& out, int rank, int P) {
    char name[32];
    std::snprintf(name, sizeof name, "rank-%03d.log", rank);
    std::filesystem::create_directories(out + "/logs");
    auto log = std::make_shared<spdlog::logger>(
        name, std::make_shared<spdlog::sinks::basic_file_sink_mt>(out + "/logs/" + name));
    log->set_pattern("[%Y-%m-%d %H:%M:%S] %v");
    log->flush_on(spdlog::level::info);
    log->info("rank {} of {} starts", rank, P);
    return log;
}
}  // namespace

int run_job(const io::Job& job, bool with_pqi, bool restart) {
    auto                          t    = dist::make_transport(job.run.transport);
    const int                     rank = t->rank(), P = t->size();
    io::HfCheckpoint              ckpt(job.model.path);
    const auto&                   cfg = ckpt.config();
    const std::string&            out = job.run.out;
    std::map<std::string, double> phases;  // measured in this invocation

    // ---- prepare: rank 0 fingerprints, reads the state or tokenizes; everyone receives ------
    auto     t0 = Clock::now();
    RunState st;
    if (rank == 0) {
        std::error_code ec;
        std::filesystem::create_directories(out, ec);
        if (ec) throw IoError(out + ": cannot create the run directory: " + ec.message());
        if (restart) clear_run(out);
        const Fingerprint fp  = fingerprint(job, ckpt.dir());
        auto              old = read_run_state(out);
        if (old && !(old->fp == fp))
            throw StateError(out + " holds a run of another job (" + which_differs(old->fp, fp) +
                             " differ); use --restart to start over there, or another --out");
        if (old) {
            st = std::move(*old);
            std::string done;
            for (const auto& [k, v] : st.log["done"].items()) done += " " + k;
            spdlog::info("resuming {}: done:{}", out, done);
        } else {
            st.fp           = fp;
            io::TokenData c = io::load_eval_data(job.data.calibration, ckpt.dir(), job.data.seq_len,
                                                 job.data.calibration_seqs);
            model::check_token_ids(c.tokens, cfg.n_vocab, io::base_name(job.data.calibration));
            st.calib           = c.tokens;
            st.calib_available = c.n_available;
            if (c.n_available < job.data.calibration_seqs)
                spdlog::warn(
                    "calibration: {} has {} sequences, fewer than calibration_seqs = {}; using "
                    "all",
                    io::base_name(job.data.calibration), c.n_available, job.data.calibration_seqs);
            for (const auto& path : job.data.eval) {
                io::TokenData e =
                    io::load_eval_data(path, ckpt.dir(), job.data.seq_len, job.data.eval_max_seqs);
                model::check_token_ids(e.tokens, cfg.n_vocab, io::base_name(path));
                st.eval_names.push_back(io::base_name(path));
                st.eval_tokens.push_back(e.tokens);
            }
            st.mark("prepare", since(t0));
            write_run_state(out, st);
        }
    }
    std::string log = rank == 0 ? st.log.dump() : "", fp = rank == 0 ? st.fp.combined() : "";
    dist::broadcast_bytes(log, 0);
    dist::broadcast_bytes(fp, 0);
    st.log   = nlohmann::json::parse(log);
    st.calib = dist::broadcast_tensor(*t, st.calib, 0, at::kLong);
    std::vector<EvalSet> evals(job.data.eval.size());
    for (std::size_t i = 0; i < evals.size(); ++i) {
        evals[i].name = io::base_name(job.data.eval[i]);
        evals[i].tokens =
            dist::broadcast_tensor(*t, rank == 0 ? st.eval_tokens[i] : at::Tensor(), 0, at::kLong);
    }
    const at::Tensor& calib    = st.calib;
    const auto        rank_log = open_rank_log(out, rank, P);
    int64_t           max_t    = calib.size(1);
    for (const auto& e : evals) max_t = std::max(max_t, e.tokens.size(1));
    const dist::PipelinePlan plan = dist::plan_pipeline(cfg, P, calib.size(1));
    if (rank == 0) {
        spdlog::info("run: {} on {} ranks, {} {}-bit g{}; calibration {} x {} tokens",
                     job.model.path, P, job.quant.method, job.quant.bits, job.quant.group_size,
                     calib.size(0), calib.size(1));
        if (P > 1) std::fprintf(stderr, "%s", dist::format_plan(plan).c_str());
    }
    const auto&          range = plan.stages[std::size_t(rank)].range;
    model::Stage         stage(cfg, model::load_stage_weights(ckpt, range, at::kFloat), max_t);
    dist::PipelineRunner runner(stage, *t, job.run.microbatch);
    phases["prepare"] = since(t0);
    // A phase is recorded once every rank has written its part of it.
    // A signal (pipeline/stop.h) stops every rank here, once the phase is recorded.
    auto mark = [&](const std::string& phase, double seconds) {
        rank_log->info("phase {} done on this rank ({:.1f} s)", phase, seconds);
        barrier(*t);
        st.mark(phase, seconds);
        st.log["phases"][phase] = seconds;
        if (rank == 0) write_run_state(out, st);
        if (all_ranks(*t, !stop_requested())) return;
        rank_log->info("stopping on a signal after phase {}", phase);
        throw Stopped("stopped on a signal after phase " + phase + "; " + out +
                      " holds the state: run the same command again to resume");
    };

    auto perplexities = [&](const char* what) {
        std::map<std::string, double> r;
        for (const auto& e : evals) {
            const double loss = runner.forward(e.tokens).mean();
            r[e.name]         = std::exp(loss);
            if (rank == 0) spdlog::info("{}: {} perplexity {:.4f}", what, e.name, r[e.name]);
        }
        r["calibration"] = std::exp(runner.forward(calib).mean());
        return r;
    };

    // ---- baseline -----------------------------------------------------------------------------
    t0 = Clock::now();
    if (!st.done("baseline")) {
        st.log["ppl_fp"] = perplexities("fp32");
        mark("baseline", since(t0));
    }
    const auto ppl_fp = st.log["ppl_fp"].get<std::map<std::string, double>>();

    // ---- statistics + prequant (+ Alg. 1 outliers), resumable layer by layer ----------------
    const QuantSpec spec = quant_spec(job);
    const bool detach    = spec.significant_select == "pqi" || spec.significant_select == "random";
    const sensitivity::LinearSet w_orig =
        with_pqi || detach ? stage_linears(stage) : sensitivity::LinearSet{};
    std::vector<LayerQuant> q;
    nlohmann::json          requant_report = nlohmann::json::object();
    t0                                     = Clock::now();
    if (st.done("quantize")) {  // every layer file is there (redo any that is not)
        for (int64_t l = range.layer_begin; l < range.layer_end; ++l) {
            auto lq = read_layer_state(out, l, fp);
            if (!lq) break;
            set_layer_weights(stage, std::size_t(l - range.layer_begin), *lq);
            q.push_back(std::move(*lq));
        }
        requant_report = st.log["requant"];
    }
    if (!all_ranks(*t, q.size() == std::size_t(range.layer_end - range.layer_begin))) {
        if (!q.empty()) {  // undo the layers loaded above: the statistics need w
            const model::Stage fresh(cfg, model::load_stage_weights(ckpt, range, at::kFloat), 1);
            set_stage_linears(stage, stage_linears(fresh));
        }
        q.clear();
        CalibrationTimes  ct;
        std::set<int64_t> loaded;
        LayerHooks        hooks;
        hooks.load = [&](int64_t l) {
            auto lq = read_layer_state(out, l, fp);
            if (lq) loaded.insert(l);
            return lq;
        };
        Progress progress("quantize (rank 0's layers)", range.layer_end - range.layer_begin,
                          "layers");
        hooks.saved = [&](int64_t done, int64_t l, const LayerQuant& lq) {
            if (loaded.count(l)) {
                progress.skip(1);
                rank_log->info("layer {}: reused from an earlier run", l);
            } else {
                write_layer_state(out, l, lq, fp);
                rank_log->info("layer {}: quantized and saved ({}/{} of this rank)", l, done,
                               range.layer_end - range.layer_begin);
            }
            if (rank == 0) progress.update(done);
        };
        q = calibrate_and_quantize(stage, *t, calib, job.run.microbatch, spec, ct, hooks,
                                   &requant_report);
        if (rank == 0) progress.finish();
        st.log["phases"]["statistics"] = ct.statistics_s;
        st.log["phases"]["prequant"]   = ct.quantize_s;
        if (ct.outliers_s > 0) st.log["phases"]["outlier_search"] = ct.outliers_s;
        st.log["requant"] = requant_report;
        mark("quantize", since(t0));
    }

    // ---- Alg. 2: step-wise significant-weight detach, resumable round by round -------------
    if (detach && !st.done("detach")) {
        t0 = Clock::now();
        for (std::size_t il = 0; il < q.size(); ++il)  // W_hat = dense + outliers on entry
            for (auto& lq : q[il]) lq.significant = {};
        for (std::size_t il = 0; il < q.size(); ++il) set_layer_weights(stage, il, q[il]);
        DetachResume res;
        const int done = st.log.contains("detach") ? st.log["detach"].value("rounds_done", 0) : 0;
        res.rounds_done =
            read_detach_rounds(*t, out, range.layer_begin, w_orig, done, fp, res.picked);
        if (res.rounds_done > 0)
            rank_log->info("detach: {} of {} finished rounds reused", res.rounds_done, done);
        if (res.rounds_done > 0) {
            res.rounds = st.log["detach"]["rounds"];
            res.rounds.get_ref<nlohmann::json::array_t&>().resize(std::size_t(res.rounds_done));
        }
        res.on_round = [&](int k, const std::vector<std::array<at::Tensor, 7>>& pick,
                           const nlohmann::json& rounds) {
            for (std::size_t il = 0; il < pick.size(); ++il)
                write_detach_state(out, range.layer_begin + int64_t(il), k, pick[il], fp);
            st.log["detach"] = {{"rounds_done", k}, {"rounds", rounds}};
            mark("detach-" + std::to_string(k), since(t0));
        };
        detach_significant(stage, *t, w_orig, q, calib, job.run.microbatch, spec, job.sensitivity,
                           requant_report, res);
        for (std::size_t il = 0; il < q.size(); ++il)
            write_layer_state(out, range.layer_begin + int64_t(il), q[il], fp);
        st.log["requant"] = requant_report;
        mark("detach", since(t0));
    }
    requant_report = st.log["requant"];

    // ---- evaluate -------------------------------------------------------------------------------
    t0 = Clock::now();
    if (!st.done("evaluate")) {
        st.log["ppl_q"] = perplexities(job.quant.method.c_str());
        mark("evaluate", since(t0));
    }
    const auto ppl_q = st.log["ppl_q"].get<std::map<std::string, double>>();

    // ---- sensitivity: PQI between w and w~ on the calibration set (not resumable) ------------
    nlohmann::json sens;
    if (with_pqi) {
        const sensitivity::LinearSet wq = stage_linears(stage);
        set_stage_linears(stage, w_orig);
        sens = sensitivity_study(stage, *t, wq, calib, job, phases);
    }

    // ---- accounting: linear weights and their storage, summed over ranks ----------------------
    StorageBits mine;
    for (const auto& layer : q) mine += storage_bits(layer);
    at::Tensor acc = at::tensor(
        {mine.dense, mine.weights, mine.sparse, mine.sparse_paper, mine.outliers, mine.significant},
        at::kDouble);
    t->allreduce_sum(acc)->wait();
    StorageBits  all{acc[0].item<double>(), acc[2].item<double>(), acc[3].item<double>(),
                    acc[1].item<double>(), acc[4].item<double>(), acc[5].item<double>()};
    const double other  = double(io::n_params(cfg)) - all.weights;  // embeddings, head, norms
    const double gib    = 8.0 * 1024 * 1024 * 1024;
    const double memory = (all.dense + all.sparse + 16 * other) / gib;

    // ---- assemble: the final checkpoint, from the layer files (rank 0) ------------------------
    t0 = Clock::now();
    if (!st.done("assemble")) {
        if (rank == 0)
            write_final_checkpoint(out, cfg.n_layer, ckpt, fp,
                                   {{"method", job.quant.method},
                                    {"bits", int64_t(job.quant.bits)},
                                    {"group_size", job.quant.group_size},
                                    {"bits_per_weight", all.bits_per_weight()},
                                    {"bits_per_weight_paper", all.bits_per_weight_paper()},
                                    {"linear_weights", all.weights},
                                    {"outliers", all.outliers},
                                    {"significant", all.significant},
                                    {"memory_gib", memory}});
        mark("assemble", since(t0));
    }
    if (rank != 0) return 0;

    for (const auto& [k, v] : st.log["phases"].items())
        if (!phases.count(k)) phases[k] = v.get<double>();
    nlohmann::json r;
    r["version"]               = RQ_VERSION;
    r["model"]                 = job.model.path;
    r["ranks"]                 = P;
    r["threads"]               = job.run.threads;
    r["microbatch"]            = job.run.microbatch;
    r["method"]                = job.quant.method;
    r["bits"]                  = job.quant.bits;
    r["group_size"]            = job.quant.group_size;
    r["sequential"]            = job.quant.sequential;
    r["calibration"]           = {{"file", job.data.calibration},
                                  {"seqs", calib.size(0)},
                                  {"available", st.calib_available},
                                  {"seq_len", calib.size(1)}};
    r["bits_per_weight"]       = all.bits_per_weight();
    r["bits_per_weight_paper"] = all.bits_per_weight_paper();  // sparse at 48 bits/nnz
    r["bits_per_weight_dense"] = all.dense / all.weights;
    requant_report.update({{"outlier_ratio", job.requant.outlier_ratio},
                           {"outlier_select", spec.outlier_select},
                           {"significant_ratio", job.requant.significant_ratio},
                           {"significant_select", spec.significant_select},
                           {"outliers", all.outliers},
                           {"significant", all.significant}});
    r["requant"]         = requant_report;
    r["linear_weights"]  = all.weights;
    r["memory_gib"]      = memory;
    r["memory_gib_fp16"] = 16 * (all.weights + other) / gib;
    r["perplexity"]      = ppl_q;
    r["perplexity_fp"]   = ppl_fp;
    r["phases"]          = phases;
    r["checkpoint"]      = final_checkpoint_path(out);
    if (with_pqi) r["sensitivity"] = sens;
    const std::string path = out + "/results.json";
    std::ofstream     o(path);
    if (!o) throw IoError(path + ": cannot write: " + errno_string());
    o << r.dump(2) << "\n";
    std::ofstream(out + "/job.toml") << io::job_to_toml(job);
    std::printf("%s %d-bit g%lld: %.3f bits/weight, %.4f GiB;", job.quant.method.c_str(),
                job.quant.bits, (long long)job.quant.group_size, all.bits_per_weight(), memory);
    for (const auto& [name, v] : ppl_q)
        std::printf("  %s ppl %.4f (fp %.4f)", name.c_str(), v, ppl_fp.at(name));
    std::printf("\nresults: %s\ncheckpoint: %s\n", path.c_str(),
                final_checkpoint_path(out).c_str());
    return 0;
}

}  // namespace rq::pipeline
