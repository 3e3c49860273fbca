// The sensitivity phase: PQI, its HDF5 output, the Taylor study and the report
// (requant/phases/study.h). L n_layer, O out_features, I in_features.
#include "requant/phases/study.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>

#include "requant/error.h"
#include "requant/io/h5.h"
#include "requant/phases/progress.h"
#include "requant/report/study_report.h"
#include "requant/sensitivity/ranking.h"
#include "requant/sensitivity/taylor.h"
#include "requant/units.h"

namespace rq::phases {
namespace {

namespace fs = std::filesystem;

std::string layer_file(int64_t layer) {
    char b[32];
    std::snprintf(b, sizeof b, "layer-%03lld.h5", static_cast<long long>(layer));
    return b;
}

// The stage's weights in another dtype (the fp64 copy of the Taylor study).
model::StageWeights stage_weights_as(const model::StageWeights& w, at::ScalarType dtype) {
    auto cv = [&](const at::Tensor& x) { return x.defined() ? x.detach().to(dtype) : x; };
    model::StageWeights out = w;
    out.tok_embd            = cv(w.tok_embd);
    out.out_norm            = cv(w.out_norm);
    out.head                = cv(w.head);
    for (auto& lw : out.layers) {
        lw.attn_norm = cv(lw.attn_norm);
        lw.ffn_norm  = cv(lw.ffn_norm);
        for (model::Linear l : model::kLinears) lw.linear(l) = cv(lw.linear(l));
    }
    return out;
}

// Per-weight PQI of this rank's layers into OUT/pqi/layer-NNN.h5, then (rank 0) OUT/pqi.h5.
std::string write_pqi(parallel::Transport& t, const model::Stage& stage,
                      const sensitivity::PqiResult& r, const io::Job& job) {
    const fs::path dir = fs::path(job.run.out) / "pqi";
    if (t.rank() == 0) fs::create_directories(dir);
    t.barrier()->wait();
    const int64_t l0 = stage.range().layer_begin;
    for (std::size_t il = 0; il < r.pqi.size(); ++il) {
        const int64_t layer = l0 + int64_t(il);
        io::H5File    f((dir / layer_file(layer)).string(), io::H5File::Mode::Create);
        for (std::size_t i = 0; i < model::kLinears.size(); ++i)
            f.write(std::string("/") + model::linear_name(model::kLinears[i]), r.pqi[il][i]);
        f.set_attr("/", "layer", layer);
        f.set_attr("/", "dtype", std::string("float32"));
        f.commit();
    }
    t.barrier()->wait();
    const std::string index = (fs::path(job.run.out) / "pqi.h5").string();
    if (t.rank() != 0) return index;
    io::H5File f(index, io::H5File::Mode::Create);
    for (int64_t l = 0; l < stage.config().n_layer; ++l) {
        char name[32];
        std::snprintf(name, sizeof name, "/layers/%03lld", static_cast<long long>(l));
        f.link_external(name, "pqi/" + layer_file(l), "/");
    }
    f.write("/layer_pqi", r.layer_pqi);
    const std::string path = "/path";  // the sampled path: t, phi(t) = dF/dt, F(t)
    f.write(path + "/t", at::tensor(r.path.t, at::kDouble));
    f.write(path + "/phi", at::tensor(r.path.phi, at::kDouble));
    f.write(path + "/f", at::tensor(r.path.f, at::kDouble));
    f.set_attr("/", "model", job.model.path);
    f.set_attr("/", "method", std::string(io::name(job.quant.method)));
    f.set_attr("/", "bits", int64_t(job.quant.bits));
    f.set_attr("/", "group_size", int64_t(job.quant.group_size));
    f.set_attr("/", "rule", std::string(io::name(job.sensitivity.rule)));
    f.set_attr("/", "nodes", int64_t(job.sensitivity.nodes));
    f.set_attr("/", "delta_f", r.delta_f());
    f.set_attr("/", "pqi_sum", r.pqi_sum);
    f.set_attr("/", "f_orig", r.f_orig);
    f.set_attr("/", "f_quant", r.f_quant);
    f.set_attr("/", "first_order", r.first_order);
    f.set_attr("/", "linears",
               std::string("q_proj k_proj v_proj o_proj gate_proj up_proj down_proj"));
    f.commit();
    return index;
}

// Intervals of the convergence table: powers of two up to N, and N, where the grid j/(2N)
// holds the rule's nodes (n | N for midpoint, n | 2N otherwise).
std::vector<int> convergence_ns(io::PqiRule rule, int N) {
    std::vector<int> ns;
    for (int n = 1; n < N; n *= 2) ns.push_back(n);
    ns.push_back(N);
    std::vector<int> ok;
    for (int n : ns)
        if ((rule == io::PqiRule::Midpoint ? N % n : (2 * N) % n) == 0) ok.push_back(n);
    return ok;
}

}  // namespace

namespace {

// Section 2 of the study: the share of the total PQI held by the top weights (signed and |PQI|,
// found by distributed bisection), and the per-linear mean PQI and mean |PQI|. Releases the
// per-weight PQI (written to HDF5 before) to make room for the fp64 Taylor study.
void share_tables(parallel::Transport& t, sensitivity::PqiResult& pqi, int64_t l0, int64_t L,
                  report::StudyTables& tab) {
    using PerLinear = std::vector<std::array<double, model::kNumLinears>>;
    PerLinear abs_sum(pqi.pqi.size()), count(pqi.pqi.size());
    {  // sorted copies of every weight's PQI: released before the fp64 Taylor study
        std::vector<at::Tensor> per_layer;
        for (std::size_t il = 0; il < pqi.pqi.size(); ++il) {
            std::vector<at::Tensor> parts;
            for (std::size_t i = 0; i < model::kNumLinears; ++i) {
                parts.push_back(pqi.pqi[il][i].view(-1));
                abs_sum[il][i] = pqi.pqi[il][i].abs().to(at::kDouble).sum().item<double>();
                count[il][i]   = double(pqi.pqi[il][i].numel());
            }
            per_layer.push_back(at::cat(parts));
        }
        std::vector<at::Tensor> per_layer_abs;
        for (const auto& v : per_layer) per_layer_abs.push_back(v.abs());
        const sensitivity::LayerRanking by_signed(per_layer, l0, L), by_abs(per_layer_abs, l0, L);
        const int64_t                   n_weights = by_signed.size(t);
        const double                    total = by_signed.sum_all(t), total_abs = by_abs.sum_all(t);
        auto                            share = [&](double fraction) -> report::StudyTables::Share {
            const int64_t k = std::min(
                                           n_weights, std::max<int64_t>(1, std::llround(fraction * double(n_weights))));
            return {fraction, by_signed.sum_largest(t, k) / total,
                    by_abs.sum_largest(t, k) / total_abs};
        };
        for (double f : {0.0005, 0.001, 0.0015, 0.005, 0.0071, 0.01, 0.05, 0.0525, 0.1, 0.5})
            tab.share_table.push_back(share(f));
        for (int i = 0; i <= 50; ++i)  // 1e-5 .. 1, log-spaced
            tab.share_curve.push_back(share(std::pow(10.0, -5.0 + 5.0 * i / 50.0)));
    }
    pqi.pqi.clear();  // written to HDF5; only the per-linear sums are needed below
    const at::Tensor n_table = sensitivity::gather_layer_table(t, count, l0, L);
    tab.sublayer_mean        = pqi.layer_pqi / n_table;
    tab.sublayer_mean_abs    = sensitivity::gather_layer_table(t, abs_sum, l0, L) / n_table;
}

double rel_gap(double predicted, double delta_f) {  // |dF| floored: no inf/NaN in results.json
    return std::abs(predicted - delta_f) / std::max(std::abs(delta_f), 1e-300);
}

// Section 4: the per-layer, convergence and lambda tables into `tab` and results.json.
void study_tables(const io::Job& job, const sensitivity::PqiResult& pqi,
                  const sensitivity::TaylorResult& tay, int64_t L, report::StudyTables& tab,
                  nlohmann::json& out) {
    const auto&    js     = job.sensitivity;
    nlohmann::json layers = nlohmann::json::array();
    for (int64_t l = 0; l < L; ++l) {
        const double first = tay.first_order[l].sum().item<double>();
        const double p     = pqi.layer_pqi[l].sum().item<double>();
        tab.layer_first.push_back(first);
        tab.layer_second.push_back(tay.layer_second[std::size_t(l)]);
        tab.layer_actual.push_back(tay.layer_delta_f[std::size_t(l)]);
        tab.layer_pqi.push_back(p);
        layers.push_back({{"layer", l},
                          {"first_order", first},
                          {"second_order", tay.layer_second[std::size_t(l)]},
                          {"delta_f", tay.layer_delta_f[std::size_t(l)]},
                          {"pqi", p}});
    }
    tab.all_first       = tay.first_total();
    tab.all_second      = tay.second_total();
    tab.second_full     = tay.second_full;
    tab.all_actual      = tay.delta_f;
    tab.all_pqi         = pqi.pqi_sum;
    tab.lambdas         = js.lambdas;
    tab.lambda_actual   = tay.lambda_delta_f;
    tab.delta_f         = pqi.delta_f();
    nlohmann::json conv = nlohmann::json::array();
    for (io::PqiRule rule : io::kPqiRules)
        for (int n : convergence_ns(rule, js.nodes)) {
            const double pred = pqi.path.integral(rule, n);
            tab.convergence.push_back({io::name(rule), n, pred});
            conv.push_back({{"rule", io::name(rule)},
                            {"n", n},
                            {"predicted", pred},
                            {"rel_error", rel_gap(pred, pqi.delta_f())}});
        }
    nlohmann::json lambda = nlohmann::json::array();
    for (std::size_t i = 0; i < js.lambdas.size(); ++i) {
        const double l = js.lambdas[i];
        lambda.push_back({{"lambda", l},
                          {"delta_f", tay.lambda_delta_f[i]},
                          {"first_order", l * tab.all_first},
                          {"second_order", l * l * tab.all_second},
                          {"second_order_full", l * l * tay.second_full}});
    }
    nlohmann::json share_j = nlohmann::json::array();
    for (const auto& sh : tab.share_table)
        share_j.push_back(
            {{"fraction", sh.fraction}, {"share", sh.share}, {"abs_share", sh.abs_share}});
    out["second_order"] = tab.all_second;
    out["taylor"]       = {{"precision", "f64"},
                           {"f_orig", tay.f_orig},
                           {"delta_f", tay.delta_f},
                           {"first_order", tab.all_first},
                           {"second_order", tab.all_second},
                           {"second_order_full", tay.second_full},
                           {"hvp_eps", js.hvp_eps}};
    out["layers"]       = layers;
    out["lambda"]       = lambda;
    out["convergence"]  = conv;
    out["share"]        = share_j;
}

std::string study_title(const io::Job& job, const at::Tensor& calib) {
    return fs::path(job.model.path).filename().string() + ", " + io::name(job.quant.method) + " " +
           std::to_string(job.quant.bits) + "-bit g" + std::to_string(job.quant.group_size) + ", " +
           std::to_string(calib.size(0)) + " x " + std::to_string(calib.size(1)) +
           " calibration tokens";
}

}  // namespace

nlohmann::json sensitivity_study(model::Stage& stage, parallel::Transport& t,
                                 const model::StageTensors& w_quant, const at::Tensor& calib,
                                 const io::Job& job, const parallel::ScheduleOptions& schedule,
                                 std::map<std::string, double>& phases) {
    const auto&   js   = job.sensitivity;
    const int     rank = schedule.replica == 0 ? t.rank() : -1;  // replica 0 writes and prints
    const int64_t L = stage.config().n_layer, l0 = stage.range().layer_begin;

    // ---- 1. PQI on the path, and phi on the study grid ----------------------------------------
    auto                    t0 = Clock::now();
    sensitivity::PqiOptions po;
    po.quad = sensitivity::quadrature(js.rule, js.nodes);
    if (js.study)
        for (int j = 0; j <= 2 * js.nodes; ++j) po.study_t.push_back(double(j) / (2.0 * js.nodes));
    auto pqi         = sensitivity::compute_pqi(stage, t, w_quant, calib, schedule, po,
                                                step_progress(rank == 0, "pqi", "forward+backward passes"));
    phases["pqi"]    = since(t0);
    const double rel = rel_gap(pqi.pqi_sum, pqi.delta_f());
    if (rank == 0)
        spdlog::info("pqi: dF {:.6e}, sum PQI {:.6e}, relative gap {:.2e} ({} N={})", pqi.delta_f(),
                     pqi.pqi_sum, rel, io::name(js.rule), js.nodes);
    t0                     = Clock::now();
    const std::string file = schedule.replica == 0 ? write_pqi(t, stage, pqi, job)
                                                   : (fs::path(job.run.out) / "pqi.h5").string();
    phases["pqi_write"]    = since(t0);
    nlohmann::json out     = {{"delta_f", pqi.delta_f()}, {"pqi_sum", pqi.pqi_sum},
                              {"pqi_rel_error", rel},     {"first_order", pqi.first_order},
                              {"f_orig", pqi.f_orig},     {"f_quant", pqi.f_quant},
                              {"nodes", js.nodes},        {"rule", io::name(js.rule)},
                              {"pqi_file", file},         {"pqi_dtype", "float32"}};
    if (!js.study) return out;

    // ---- 2. ranking: share of the total PQI held by the top weights --------------------------
    t0 = Clock::now();
    report::StudyTables tab;
    share_tables(t, pqi, l0, L, tab);
    phases["ranking"] = since(t0);

    // ---- 3. Taylor terms and actual dF, on an fp64 copy of the stage ---------------------------
    t0 = Clock::now();
    model::Stage s64(stage.config(), stage_weights_as(stage.weights(), at::kDouble), calib.size(1));
    const auto   tay =
        sensitivity::taylor_study(s64, t, w_quant, calib, schedule, {js.lambdas, js.hvp_eps},
                                  step_progress(rank == 0, "taylor", "passes"));
    phases["taylor"] = since(t0);

    // ---- 4. tables, results and the report -----------------------------------------------------
    tab.title = study_title(job, calib);
    study_tables(job, pqi, tay, L, tab, out);
    if (rank == 0) {
        t0               = Clock::now();
        const auto dir   = (fs::path(job.run.out) / "report").string();
        out["plots"]     = report::write_study_report(tab, dir);
        out["report"]    = dir;
        phases["report"] = since(t0);
        spdlog::info(
            "sensitivity: dF {:.4e}; first-order {:.4e}, second-order {:.4e} "
            "(all blocks {:.4e}); PQI {:.4e}",
            tay.delta_f, tab.all_first, tab.all_second, tay.second_full, pqi.pqi_sum);
    }
    return out;
}

}  // namespace rq::phases
