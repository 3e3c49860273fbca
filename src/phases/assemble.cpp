// Phase assemble, the storage accounting and results.json (requant/phases/phases.h).
#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <utility>

#include "requant/error.h"
#include "requant/io/atomic_file.h"
#include "requant/phases/phases.h"
#include "requant/report/run_report.h"
#include "requant/store/checkpoint.h"
#include "requant/units.h"

#ifndef RQ_VERSION
#define RQ_VERSION "unknown"
#endif

namespace rq::phases {
namespace {

// Memory of the quantized model: linear weights as stored, every other tensor in fp16.
double memory_gib(const RunContext& ctx, const quant::StorageBits& all) {
    const double other = double(io::n_params(ctx.ckpt.config())) - all.weights;
    return (all.dense + all.sparse + 16 * other) / (8 * kGiB);
}

// Per phase of this invocation, each rank's compute, sums over replicas and bytes sent.
nlohmann::json loads_json(const RunContext& ctx) {
    nlohmann::json out = nlohmann::json::object();
    for (const auto& [phase, ranks] : ctx.loads)
        for (const auto& l : ranks)
            out[phase].push_back({{"rank", l.world_rank},
                                  {"replica", l.replica},
                                  {"stage", l.stage},
                                  {"cpu_s", l.cpu_s},
                                  {"reduce_s", l.reduce_s},
                                  {"reductions", l.reductions},
                                  {"reduced_bytes", l.reduced_bytes},
                                  {"sent_bytes", l.sent_bytes}});
    return out;
}

// Alg. 1 scored the base method alone (its r = 0 candidate) on every linear: the error before
// any sparse part, which the run does not otherwise compute.
void add_base_objectives(const nlohmann::json& requant, nlohmann::json& linears) {
    if (!requant.contains("outlier_selection")) return;
    std::map<std::pair<int64_t, std::string>, double> base;
    for (const auto& x : requant["outlier_selection"]["per_linear"])
        if (x["objective_dense"].is_number())  // null: NaN, as the run log stores it
            base[{x["layer"].get<int64_t>(), x["linear"].get<std::string>()}] =
                x["objective_dense"].get<double>();
    for (auto& lin : linears) {
        const auto it = base.find({lin["layer"].get<int64_t>(), lin["name"].get<std::string>()});
        if (it != base.end() && lin.contains("errors"))
            lin["errors"]["objective_base"] = it->second;
    }
}

}  // namespace

quant::StorageBits total_storage(RunContext& ctx, const std::vector<decompose::LayerQuant>& q) {
    quant::StorageBits mine;
    for (const auto& layer : q) mine += store::storage_bits(layer);
    at::Tensor acc = at::tensor(
        {mine.dense, mine.weights, mine.sparse, mine.sparse_paper, mine.outliers, mine.significant},
        at::kDouble);
    ctx.t.allreduce_sum(acc)->wait();
    quant::StorageBits all;
    all.dense        = acc[0].item<double>();
    all.weights      = acc[1].item<double>();
    all.sparse       = acc[2].item<double>();
    all.sparse_paper = acc[3].item<double>();
    all.outliers     = acc[4].item<double>();
    all.significant  = acc[5].item<double>();
    if (!q.empty()) all.dense += store::shared_storage_bits(q.front());  // once per model
    return all;
}

nlohmann::json linear_table(RunContext& ctx, const std::vector<decompose::LayerQuant>& q) {
    // One row per linear of the model; this rank fills its own layers, the sum fills them all
    // (a value not computed is NaN, and NaN + 0 stays NaN).
    constexpr int64_t kCols = 17;
    const int64_t     L = ctx.ckpt.config().n_layer, l0 = ctx.range().layer_begin;
    const auto        n_lin = int64_t(model::kNumLinears);
    at::Tensor        t     = at::zeros({L, n_lin, kCols}, at::kDouble);
    auto              a     = t.accessor<double, 3>();
    for (std::size_t il = 0; il < q.size(); ++il) {
        const int64_t l = l0 + int64_t(il);
        const auto    e = store::read_layer_errors(ctx.out, l, ctx.fp);
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const quant::LinearQuant&     x        = q[il][i];
            const quant::StorageBits      b        = quant::storage_bits(x);
            const decompose::LinearErrors err      = e ? (*e)[i] : decompose::LinearErrors{};
            const double                  v[kCols] = {double(x.dense.out_features()),
                                                      double(x.dense.in_features()),
                                                      double(x.dense.bits),
                                                      double(x.dense.group_size),
                                     x.dense.is_lut() ? 1.0 : 0.0,
                                                      b.dense,
                                                      double(quant::csr_storage_bits(x.outliers)),
                                                      double(quant::csr_storage_bits(x.significant)),
                                                      b.outliers,
                                                      b.significant,
                                                      err.objective_dense,
                                                      err.objective,
                                                      err.proxy_dense,
                                                      err.proxy,
                                                      err.weight_dense,
                                                      err.weight,
                                                      b.weights};
            for (int64_t c = 0; c < kCols; ++c) a[l][int64_t(i)][c] = v[c];
        }
    }
    ctx.t.allreduce_sum(t)->wait();
    nlohmann::json out = nlohmann::json::array();
    auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); };
    for (int64_t l = 0; l < L; ++l)
        for (int64_t i = 0; i < n_lin; ++i) {
            auto         r      = [&](int64_t c) { return a[l][i][c]; };
            const double sparse = r(6) + r(7);
            out.push_back({{"layer", l},
                           {"name", model::linear_name(model::kLinears[std::size_t(i)])},
                           {"shape", {int64_t(r(0)), int64_t(r(1))}},
                           {"bits", int64_t(r(2))},
                           {"group_size", int64_t(r(3))},
                           {"lut", r(4) > 0},
                           {"bits_per_weight", (r(5) + sparse) / r(16)},
                           {"dense_bits", r(5)},
                           {"sparse_bits", sparse},
                           {"outlier_bits", r(6)},
                           {"significant_bits", r(7)},
                           {"outliers", r(8)},
                           {"significant", r(9)},
                           {"errors",
                            {{"objective_dense", num(r(10))},
                             {"objective", num(r(11))},
                             {"proxy_dense", num(r(12))},
                             {"proxy", num(r(13))},
                             {"weight_dense", num(r(14))},
                             {"weight", num(r(15))}}}});
        }
    return out;
}

void assemble(RunContext& ctx, const quant::StorageBits& all) {
    if (ctx.st.done("assemble")) return;
    const auto     t0  = Clock::now();
    const io::Job& job = ctx.job;
    if (ctx.lead())
        store::write_final_checkpoint(ctx.out, ctx.ckpt.config().n_layer, ctx.ckpt, ctx.fp,
                                      {{"method", io::name(job.quant.method)},
                                       {"bits", int64_t(job.quant.bits)},
                                       {"group_size", job.quant.group_size},
                                       {"bits_per_weight", all.bits_per_weight()},
                                       {"bits_per_weight_paper", all.bits_per_weight_paper()},
                                       {"linear_weights", all.weights},
                                       {"outliers", all.outliers},
                                       {"significant", all.significant},
                                       {"memory_gib", memory_gib(ctx, all)}});
    ctx.mark("assemble", since(t0));
}

void write_results(RunContext& ctx, const quant::StorageBits& all, const nlohmann::json* study,
                   const nlohmann::json& linears) {
    if (!ctx.lead()) return;
    const io::Job& job    = ctx.job;
    auto           phases = ctx.seconds;  // measured now, else as recorded by the run that did them
    for (const auto& [k, v] : ctx.st.phase_s)
        if (!phases.count(k)) phases[k] = v;
    const double   memory = memory_gib(ctx, all);
    const double   other  = double(io::n_params(ctx.ckpt.config())) - all.weights;
    nlohmann::json r;
    r["version"]               = RQ_VERSION;
    r["model"]                 = job.model.path;
    r["ranks"]                 = ctx.P * ctx.R;
    r["replicas"]              = ctx.R;
    r["threads"]               = job.run.threads;
    r["microbatch"]            = job.run.microbatch;
    r["method"]                = io::name(job.quant.method);
    r["bits"]                  = job.quant.bits;
    r["group_size"]            = job.quant.group_size;
    r["sequential"]            = job.quant.sequential;
    r["calibration"]           = {{"file", job.data.calibration},
                                  {"seqs", ctx.calib.size(0)},
                                  {"available", ctx.st.calib_available},
                                  {"seq_len", ctx.calib.size(1)}};
    r["bits_per_weight"]       = all.bits_per_weight();
    r["bits_per_weight_paper"] = all.bits_per_weight_paper();  // sparse at 48 bits/nnz
    r["bits_per_weight_dense"] = all.dense / all.weights;
    nlohmann::json requant     = ctx.st.requant;
    requant.update({{"outlier_ratio", job.requant.outlier_ratio},
                    {"outlier_select", io::name(job.requant.outliers())},
                    {"significant_ratio", job.requant.significant_ratio},
                    {"significant_select", io::name(job.requant.significant())},
                    {"outliers", all.outliers},
                    {"significant", all.significant}});
    r["requant"]         = requant;
    r["linear_weights"]  = all.weights;
    r["memory_gib"]      = memory;
    r["memory_gib_fp16"] = 16 * (all.weights + other) / (8 * kGiB);
    r["perplexity"]      = *ctx.st.ppl_q;
    r["perplexity_fp"]   = *ctx.st.ppl_fp;
    r["phases"]          = phases;
    r["load"]            = loads_json(ctx);
    r["checkpoint"]      = store::final_checkpoint_path(ctx.out);
    if (study) r["sensitivity"] = *study;
    r["linears"] = linears;
    add_base_objectives(ctx.st.requant, r["linears"]);
    const std::string report_dir = ctx.out + "/report";
    try {
        r["report"] = {{"dir", report_dir}, {"plots", report::write_run_report(r, report_dir)}};
    } catch (const std::exception& e) {
        ctx.log->warn("report: not written ({}); results.json is", e.what());
    }
    const std::string path = ctx.out + "/results.json";
    io::write_file_atomic(path, r.dump(2) + "\n");
    io::write_file_atomic(ctx.out + "/job.toml", io::job_to_toml(job));
    std::printf("%s %d-bit g%lld: %.3f bits/weight, %.4f GiB;", io::name(job.quant.method),
                job.quant.bits, (long long)job.quant.group_size, all.bits_per_weight(), memory);
    for (const auto& [name, v] : *ctx.st.ppl_q)
        std::printf("  %s ppl %.4f (fp %.4f)", name.c_str(), v, ctx.st.ppl_fp->at(name));
    std::printf("\nresults: %s\ncheckpoint: %s\nreport: %s/summary.md\n", path.c_str(),
                store::final_checkpoint_path(ctx.out).c_str(), report_dir.c_str());
}

}  // namespace rq::phases
