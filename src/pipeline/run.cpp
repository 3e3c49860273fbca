// The quantization pipeline of `requant-dist run` (requant/pipeline/run.h).
#include "requant/pipeline/run.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "requant/dist/control.h"
#include "requant/dist/mpi_env.h"
#include "requant/dist/partition.h"
#include "requant/dist/schedule.h"
#include "requant/io/dataset.h"
#include "requant/io/error.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/model/evaluate.h"
#include "requant/pipeline/calibrate.h"
#include "requant/pipeline/requant.h"
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

int run_job(const io::Job& job, bool with_pqi) {
    auto                          t    = dist::make_transport(job.run.transport);
    const int                     rank = t->rank(), P = t->size();
    io::HfCheckpoint              ckpt(job.model.path);
    const auto&                   cfg = ckpt.config();
    std::map<std::string, double> phases;

    // ---- prepare: rank 0 reads and tokenizes, everyone receives -----------------------------
    auto                 t0 = Clock::now();
    at::Tensor           calib;
    int64_t              calib_available = 0;
    std::vector<EvalSet> evals(job.data.eval.size());
    if (rank == 0) {
        std::error_code ec;
        std::filesystem::create_directories(job.run.out, ec);
        if (ec) throw IoError(job.run.out + ": cannot create the run directory: " + ec.message());
        io::TokenData c = io::load_eval_data(job.data.calibration, ckpt.dir(), job.data.seq_len,
                                             job.data.calibration_seqs);
        model::check_token_ids(c.tokens, cfg.n_vocab, io::base_name(job.data.calibration));
        calib           = c.tokens;
        calib_available = c.n_available;
        if (c.n_available < job.data.calibration_seqs)
            spdlog::warn(
                "calibration: {} has {} sequences, fewer than calibration_seqs = {}; using all",
                io::base_name(job.data.calibration), c.n_available, job.data.calibration_seqs);
        for (std::size_t i = 0; i < evals.size(); ++i) {
            io::TokenData e = io::load_eval_data(job.data.eval[i], ckpt.dir(), job.data.seq_len,
                                                 job.data.eval_max_seqs);
            model::check_token_ids(e.tokens, cfg.n_vocab, io::base_name(job.data.eval[i]));
            evals[i].tokens = e.tokens;
        }
    }
    calib = dist::broadcast_tensor(*t, calib, 0, at::kLong);
    for (std::size_t i = 0; i < evals.size(); ++i) {
        evals[i].name   = io::base_name(job.data.eval[i]);
        evals[i].tokens = dist::broadcast_tensor(*t, evals[i].tokens, 0, at::kLong);
    }
    int64_t max_t = calib.size(1);
    for (const auto& e : evals) max_t = std::max(max_t, e.tokens.size(1));
    const dist::PipelinePlan plan = dist::plan_pipeline(cfg, P, calib.size(1));
    if (rank == 0) {
        spdlog::info("run: {} on {} ranks, {} {}-bit g{}; calibration {} x {} tokens",
                     cfg.n_layer > 0 ? job.model.path : "", P, job.quant.method, job.quant.bits,
                     job.quant.group_size, calib.size(0), calib.size(1));
        if (P > 1) std::fprintf(stderr, "%s", dist::format_plan(plan).c_str());
    }
    const auto&          range = plan.stages[std::size_t(rank)].range;
    model::Stage         stage(cfg, model::load_stage_weights(ckpt, range, at::kFloat), max_t);
    dist::PipelineRunner runner(stage, *t, job.run.microbatch);
    phases["prepare"] = since(t0);

    auto perplexities = [&](const char* what) {
        std::map<std::string, double> out;
        for (const auto& e : evals) {
            const double loss = runner.forward(e.tokens).mean();
            out[e.name]       = std::exp(loss);
            if (rank == 0) spdlog::info("{}: {} perplexity {:.4f}", what, e.name, out[e.name]);
        }
        out["calibration"] = std::exp(runner.forward(calib).mean());
        return out;
    };

    // ---- baseline -----------------------------------------------------------------------------
    t0                 = Clock::now();
    const auto ppl_fp  = perplexities("fp32");
    phases["baseline"] = since(t0);

    // ---- statistics + prequant (+ Alg. 1 outliers) ------------------------------------------
    const QuantSpec spec = quant_spec(job);
    const bool detach    = spec.significant_select == "pqi" || spec.significant_select == "random";
    const sensitivity::LinearSet w_orig =
        with_pqi || detach ? stage_linears(stage) : sensitivity::LinearSet{};
    CalibrationTimes ct;
    nlohmann::json   requant_report = nlohmann::json::object();
    auto             q              = calibrate_and_quantize(
                                 stage, *t, calib, job.run.microbatch, spec, ct,
                                 [&](int64_t done) {
            if (rank == 0)
                spdlog::info("quantized layer {}/{} of rank 0", done,
                                                      range.layer_end - range.layer_begin);
        },
                                 &requant_report);
    phases["statistics"] = ct.statistics_s;
    phases["prequant"]   = ct.quantize_s;
    if (ct.outliers_s > 0) phases["outlier_search"] = ct.outliers_s;

    // ---- Alg. 2: step-wise significant-weight detach ------------------------------------------
    if (detach) {
        t0 = Clock::now();
        detach_significant(stage, *t, w_orig, q, calib, job.run.microbatch, spec, job.sensitivity,
                           requant_report);
        phases["detach"] = since(t0);
    }

    // ---- evaluate -------------------------------------------------------------------------------
    t0                 = Clock::now();
    const auto ppl_q   = perplexities(job.quant.method.c_str());
    phases["evaluate"] = since(t0);

    // ---- sensitivity: PQI between w and w~ on the calibration set -----------------------------
    nlohmann::json sens;
    if (with_pqi) {
        const sensitivity::LinearSet wq = stage_linears(stage);
        set_stage_linears(stage, w_orig);
        sens = sensitivity_study(stage, *t, wq, calib, job, phases);
    }

    // ---- accounting: linear weights and their storage, summed over ranks ----------------------
    // [dense bits, weights, sparse bits (CSR with row pointers), sparse bits at 48/nnz,
    //  outliers, significant]
    at::Tensor acc = at::zeros({6}, at::kDouble);
    for (const auto& layer : q)
        for (const auto& ql : layer) {
            acc[0] += double(quant::dense_storage_bits(ql.dense));
            acc[1] += double(ql.dense.codes.numel());
            acc[2] += double(quant::csr_storage_bits(ql.outliers) +
                             quant::csr_storage_bits(ql.significant));
            acc[3] +=
                double(quant::csr_paper_bits(ql.outliers) + quant::csr_paper_bits(ql.significant));
            acc[4] += double(ql.outliers.nnz());
            acc[5] += double(ql.significant.nnz());
        }
    t->allreduce_sum(acc)->wait();
    if (rank != 0) return 0;

    const double   dense_bits = acc[0].item<double>(), lin_weights = acc[1].item<double>();
    const double   lin_bits   = dense_bits + acc[2].item<double>();
    const double   paper_bits = dense_bits + acc[3].item<double>();
    const double   other      = double(io::n_params(cfg)) - lin_weights;  // embeddings, head, norms
    const double   gib        = 8.0 * 1024 * 1024 * 1024;
    nlohmann::json r;
    r["version"]         = RQ_VERSION;
    r["model"]           = job.model.path;
    r["ranks"]           = P;
    r["threads"]         = job.run.threads;
    r["microbatch"]      = job.run.microbatch;
    r["method"]          = job.quant.method;
    r["bits"]            = job.quant.bits;
    r["group_size"]      = job.quant.group_size;
    r["sequential"]      = job.quant.sequential;
    r["calibration"]     = {{"file", job.data.calibration},
                            {"seqs", calib.size(0)},
                            {"available", calib_available},
                            {"seq_len", calib.size(1)}};
    r["bits_per_weight"] = lin_bits / lin_weights;
    r["bits_per_weight_paper"] =
        paper_bits / lin_weights;  // sparse at 48 bits/nnz, no row pointers
    r["bits_per_weight_dense"] = dense_bits / lin_weights;
    requant_report.update({{"outlier_ratio", job.requant.outlier_ratio},
                           {"outlier_select", spec.outlier_select},
                           {"significant_ratio", job.requant.significant_ratio},
                           {"significant_select", spec.significant_select},
                           {"outliers", acc[4].item<double>()},
                           {"significant", acc[5].item<double>()}});
    r["requant"]         = requant_report;
    r["linear_weights"]  = lin_weights;
    r["memory_gib"]      = (lin_bits + 16 * other) / gib;
    r["memory_gib_fp16"] = 16 * (lin_weights + other) / gib;
    r["perplexity"]      = ppl_q;
    r["perplexity_fp"]   = ppl_fp;
    r["phases"]          = phases;
    if (with_pqi) r["sensitivity"] = sens;
    const std::string path = job.run.out + "/results.json";
    std::ofstream     out(path);
    if (!out) throw IoError(path + ": cannot write: " + errno_string());
    out << r.dump(2) << "\n";
    std::ofstream(job.run.out + "/job.toml") << io::job_to_toml(job);
    std::printf("%s %d-bit g%lld: %.3f bits/weight, %.4f GiB;", job.quant.method.c_str(),
                job.quant.bits, (long long)job.quant.group_size, lin_bits / lin_weights,
                (lin_bits + 16 * other) / gib);
    for (const auto& [name, v] : ppl_q)
        std::printf("  %s ppl %.4f (fp %.4f)", name.c_str(), v, ppl_fp.at(name));
    std::printf("\nresults: %s\n", path.c_str());
    return 0;
}

}  // namespace rq::pipeline
