// bench_pqi: one PQI pass (N quadrature nodes, each a 1F1B forward+backward over the whole
// calibration batch, plus the endpoint passes the rule does not visit) under mpirun: its time,
// achieved GFLOP/s against the fp32 GEMM roofline of the ranks, and per-rank memory: the
// gradient accumulators a rank holds (its own layers' linears only) and its peak RSS.
// FLOPs are counted analytically (bench_model's formula; printed). On one rank it also times,
// in the same run, a plain forward+backward of the same microbatches (autograd over the whole
// model, no pipeline, no PQI accumulation) and a plain forward, and prints the median time of
// one PQI node (its forward+backward with the path's weights and its accumulation; the first
// node, cold, left out) against the plain one.
// --graph keep (the run's choice when memory allows) or recompute (each layer's forward again in
// backward): parallel::ScheduleOptions::keep_graph. Run through launch/bench.sh.
// --dump-wq FILE (one rank) writes w~ (RTN 4-bit g128, dequantized) in HF tensor names as
// safetensors, for tests/reference/pqi_eager.py to integrate the same path.
// Usage: mpirun -np P bench_pqi --model DIR [--seqs N] [--seq-len T] [--microbatch B]
//        [--nodes K] [--rule R] [--threads n] [--graph keep|recompute] [--dump-wq FILE]
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "bench_args.h"
#include "requant/cli/sysinfo.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/io/safetensors.h"
#include "requant/model/tensor_cache.h"
#include "requant/model/weights.h"
#include "requant/parallel/control.h"
#include "requant/parallel/mpi_env.h"
#include "requant/parallel/partition.h"
#include "requant/quant/rtn.h"
#include "requant/sensitivity/pqi.h"
#include "requant/units.h"

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}
double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

struct PlainTimes {
    double forward = 0, forward_backward = 0;  // seconds, the median of three runs each
};

// The same microbatches through the whole model as plain autograd would run them: forward()
// with its graph, backward into the linears' gradients (cleared after), and forward alone.
PlainTimes plain_passes(rq::model::Stage& stage, const at::Tensor& tok, int64_t mb) {
    const int64_t       N = tok.size(0), T = tok.size(1);
    const at::Tensor    dloss = at::scalar_tensor(1.0 / double(N * (T - 1)));
    std::vector<double> fb, fwd;
    rq::model::enable_linear_grads(stage.weights());  // every linear, as at a PQI node
    for (int rep = 0; rep < 3; ++rep) {
        auto t0 = Clock::now();
        for (int64_t b = 0; b < N; b += mb) {
            const at::Tensor x = tok.narrow(0, b, std::min(mb, N - b));
            rq::model::stage_backward(x, stage.forward(x, x), dloss);
        }
        fb.push_back(since(t0));
        for (auto& lw : stage.weights().layers)
            for (rq::model::Linear l : rq::model::kLinears)
                lw.linear(l).mutable_grad() = at::Tensor();
        at::NoGradGuard no_grad;
        t0 = Clock::now();
        for (int64_t b = 0; b < N; b += mb) {
            const at::Tensor x = tok.narrow(0, b, std::min(mb, N - b));
            stage.forward(x, x);
        }
        fwd.push_back(since(t0));
    }
    return {median(fwd), median(fb)};
}

}  // namespace

int main(int argc, char** argv) {
    rq::cli::reexec_with_runtime_env(argv);  // the OpenBLAS core and environment of requant-dist
    rq::parallel::MpiEnv env(&argc, &argv);
    try {
        const rq::bench::Args a(
            argc, argv,
            {"model", "seqs", "seq-len", "microbatch", "nodes", "rule", "threads", "graph",
             "dump-wq"},
            "usage: bench_pqi --model DIR [--seqs N] [--seq-len T] [--microbatch B] [--nodes K] "
            "[--rule R] [--threads n] [--graph keep|recompute] [--dump-wq FILE]");
        const std::string graph = a.str("graph", "keep");
        if (graph != "keep" && graph != "recompute")
            throw std::runtime_error("--graph: keep or recompute");
        const std::string model = a.str("model"), rule = a.str("rule", "midpoint");
        const int64_t     N = a.integer("seqs", 32), T = a.integer("seq-len", 256),
                      mb = a.integer("microbatch", 4);
        const int nodes = int(a.integer("nodes", 8)), threads = int(a.integer("threads", 2));
        rq::model::install_tensor_cache(rq::model::tensor_cache_cap_from_env());  // as a run
        rq::cli::set_threads(threads);
        auto                    t = rq::parallel::make_mpi_transport();
        const int               P = t->size();
        rq::io::HfCheckpoint    ckpt(model);
        const auto&             c     = ckpt.config();
        const auto              plan  = rq::parallel::plan_pipeline(c, P, T);
        const auto&             range = plan.stages[std::size_t(t->rank())].range;
        rq::model::Stage        stage(c, rq::model::load_stage_weights(ckpt, range, at::kFloat), T);
        rq::model::StageTensors wq(stage.weights().layers.size());
        double                  own = 0;  // linear weights of this rank
        for (std::size_t il = 0; il < wq.size(); ++il)
            for (std::size_t i = 0; i < rq::model::kLinears.size(); ++i) {
                const at::Tensor& w = stage.weights().layers[il].linear(rq::model::kLinears[i]);
                wq[il][i]           = rq::quant::dequantize(rq::quant::rtn_quantize(w, {4, 128}));
                own += double(w.numel());
            }
        if (const std::string dump = a.str("dump-wq"); !dump.empty()) {
            if (P != 1) throw std::runtime_error("--dump-wq needs one rank");
            std::map<std::string, at::Tensor> named;
            for (std::size_t il = 0; il < wq.size(); ++il)
                for (std::size_t i = 0; i < rq::model::kLinears.size(); ++i)
                    named[rq::model::linear_tensor_name(int64_t(il), rq::model::kLinears[i])] =
                        wq[il][i].contiguous();
            rq::io::write_safetensors(dump, named);
        }
        at::Generator g   = at::detail::createCPUGenerator(1);
        at::Tensor    tok = at::randint(0, c.n_vocab, {N, T}, g, at::kLong);

        // The roofline of this rank's cores: a 2048^3 fp32 GEMM with the same thread count.
        const int64_t n = 2048;
        at::Tensor    A = at::randn({n, n}), B = at::randn({n, n}), C = at::empty({n, n});
        at::matmul_out(C, A, B);
        auto t0   = Clock::now();
        int  reps = 0;
        do at::matmul_out(C, A, B), ++reps;
        while (since(t0) < 2.0);
        const double gemm = 2.0 * n * n * n * reps / since(t0) / 1e9;
        t->barrier()->wait();

        rq::io::PqiRule pqi_rule = rq::io::PqiRule::Midpoint;
        bool            known    = false;
        for (rq::io::PqiRule r : rq::io::kPqiRules)
            if (rule == rq::io::name(r)) pqi_rule = r, known = true;
        if (!known) throw std::runtime_error("--rule: left, right, midpoint or trapezoid");
        const rq::sensitivity::PqiOptions opt{rq::sensitivity::quadrature(pqi_rule, nodes), {}};
        rq::parallel::ScheduleOptions     sched(mb);
        sched.keep_graph = graph == "keep";
        t0               = Clock::now();
        std::vector<Clock::time_point> marks;  // before the first node and after each
        const auto                     r = rq::sensitivity::compute_pqi(
                                stage, *t, wq, tok, sched, opt, [&](int, int) { marks.push_back(Clock::now()); });
        const double wall = since(t0);
        // Passes: the rule's nodes with backward, plus t = 0 (F(w), first order) when the rule
        // does not visit it (forward+backward) and t = 1 when it does not (forward only).
        const bool   has0 = opt.quad.t.front() == 0.0, has1 = opt.quad.t.back() == 1.0;
        const double fb = double(opt.quad.t.size()) + (has0 ? 0 : 1), fw = has1 ? 0 : 1;
        const double L = double(c.n_layer), H = double(c.n_head), D = double(c.head_dim);
        const double n_lin =
            L * double(c.n_embd) * D * (2 * H + 2 * c.n_head_kv) + L * 3.0 * c.n_embd * c.n_ff;
        const double f_layers = 2 * n_lin + 4 * L * double(T) * H * D;
        const double f_head   = 2.0 * c.n_embd * c.n_vocab * double(T - 1) / double(T);
        const double flops =
            double(N * T) * (fb * (3 * f_layers + 2 * f_head) + fw * (f_layers + f_head));

        rq::parallel::RankStatus me{
            t->rank(),       rq::parallel::host_name(),          range.layer_begin,
            range.layer_end, int64_t(rq::process_memory().peak), wall};
        at::Tensor gemms = at::zeros({P}, at::kDouble), owns = at::zeros({P}, at::kDouble);
        gemms[t->rank()] = gemm;
        owns[t->rank()]  = own;
        t->allreduce_sum(gemms)->wait();
        t->allreduce_sum(owns)->wait();
        const auto all = rq::parallel::gather_objects(me, 0);
        if (t->rank() == 0) {
            const double roof = gemms.sum().item<double>(), achieved = flops / wall / 1e9;
            const double total_lin = owns.sum().item<double>();
            std::printf(
                "  pqi P=%d threads=%d %s N=%d graph %s  %lldx%lld tokens  %5.0f+%.0f passes  "
                "%7.1f s  %7.1f GFLOP/s  roofline %6.1f  %5.1f%%  %s\n",
                P, threads, rule.c_str(), nodes, graph.c_str(), (long long)N, (long long)T, fb, fw,
                wall, achieved, roof, 100 * achieved / roof,
                achieved >= 0.5 * roof ? "OK" : "BELOW 50%");
            std::printf(
                "    per rank: layers, accumulators (fp32, own linears) MiB, share of the "
                "model's linears, peak RSS MiB:");
            for (const auto& s : all) {
                const double o = owns[s.rank].item<double>();
                std::printf("  [%lld,%lld) %.1f %.0f%% %.0f", (long long)s.layer_begin,
                            (long long)s.layer_end, 4 * o / 1048576.0, 100 * o / total_lin,
                            s.peak_rss / 1048576.0);
            }
            std::printf("\n    self-test: dF %.6e  sum PQI %.6e  rel %.2e\n", r.delta_f(),
                        r.pqi_sum, std::abs(r.pqi_sum - r.delta_f()) / std::abs(r.delta_f()));
        }
        if (P == 1) {
            // One node: its forward+backward with the path's weights set before and the
            // directional derivative and the accumulation after; the first (cold) left out.
            std::vector<double> node;
            for (std::size_t k = 2; k < marks.size(); ++k)
                node.push_back(std::chrono::duration<double>(marks[k] - marks[k - 1]).count());
            const PlainTimes p = plain_passes(stage, tok, mb);
            std::printf(
                "    a PQI node %.3f s (median of %zu), a plain forward+backward %.3f s (median of "
                "3; forward %.3f s): ratio %.3f (target <= 1.10)\n",
                median(node), node.size(), p.forward_backward, p.forward,
                median(node) / p.forward_backward);
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "[rank %d] bench_pqi: %s\n", env.rank(), e.what());
        rq::parallel::abort_job(1);
    }
}
