// bench_model: the fp32 GEMM roofline of this machine, and forward / forward+backward throughput
// of a Llama model at a given sequence length, with the achieved fraction of the roofline.
// FLOPs are counted analytically (formula printed). Run through launch/bench.sh.
// --profile PATH: also records two forward+backward steps with libtorch's profiler into a Chrome
// trace (launch/profile_summary.py says where the time goes; the model's parts are named by
// the rq:: scopes of model/llama.h).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include "requant/cli/sysinfo.h"
#include "requant/io/dataset.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/model/llama.h"
#include "requant/model/tensor_cache.h"

namespace {

using Clock = std::chrono::steady_clock;

// Runs fn after `warmup` calls until at least min_s seconds have passed; returns s per call.
double time_it(const std::function<void()>& fn, int warmup, double min_s) {
    for (int i = 0; i < warmup; ++i) fn();
    int        n  = 0;
    const auto t0 = Clock::now();
    double     dt = 0;
    do {
        fn();
        ++n;
        dt = std::chrono::duration<double>(Clock::now() - t0).count();
    } while (dt < min_s);
    return dt / n;
}

struct Args {
    std::string model;
    int64_t     seq_len = 256, batch = 8;
    int         threads = 2;
    double      min_s   = 3.0;
    std::string profile;  // Chrome trace of two forward+backward steps; empty = none
};

Args parse(int argc, char** argv) {
    Args a;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string k = argv[i], v = argv[i + 1];
        if (k == "--model")
            a.model = v;
        else if (k == "--seq-len")
            a.seq_len = std::stoll(v);
        else if (k == "--batch")
            a.batch = std::stoll(v);
        else if (k == "--threads")
            a.threads = std::stoi(v);
        else if (k == "--min-seconds")
            a.min_s = std::stod(v);
        else if (k == "--profile")
            a.profile = v;
        else
            throw std::runtime_error("unknown option " + k);
    }
    if (a.model.empty())
        throw std::runtime_error(
            "usage: bench_model --model DIR [--seq-len L] "
            "[--batch B] [--threads N] [--min-seconds S] [--profile TRACE.json]");
    return a;
}

}  // namespace

int main(int argc, char** argv) try {
    rq::cli::reexec_with_runtime_env(argv);  // the OpenBLAS core and environment of requant-dist
    rq::model::install_tensor_cache(rq::model::tensor_cache_cap_from_env());
    const Args a = parse(argc, argv);
    rq::cli::set_threads(a.threads);
    std::printf("# BLAS     : %s\n# threads  : %d (ATen intra-op and OpenBLAS)\n",
                rq::cli::blas_info().c_str(), a.threads);
    std::printf("# OPENBLAS_CORETYPE=%s  GLIBC_TUNABLES=%s\n",
                std::getenv("OPENBLAS_CORETYPE") ? std::getenv("OPENBLAS_CORETYPE") : "(unset)",
                std::getenv("GLIBC_TUNABLES") ? std::getenv("GLIBC_TUNABLES") : "(unset)");

    // --- roofline: square fp32 GEMM into a preallocated output ---
    const int64_t n = 2048;
    at::Tensor    A = at::randn({n, n}), B = at::randn({n, n}), C = at::empty({n, n});
    const double  t_mm   = time_it([&] { at::matmul_out(C, A, B); }, 2, a.min_s);
    const double  gemm_g = 2.0 * n * n * n / t_mm / 1e9;

    // --- model ---
    rq::io::HfCheckpoint ckpt(a.model);
    const auto&          c = ckpt.config();
    rq::model::Stage     stage(
            c, rq::model::load_stage_weights(ckpt, rq::model::whole_model(c), at::kFloat), a.seq_len);
    at::Generator gen  = at::detail::createCPUGenerator(1);
    at::Tensor    tok  = at::randint(0, c.n_vocab, {a.batch, a.seq_len}, gen, at::kLong);
    const double  ntok = double(a.batch * a.seq_len);
    double        loss = 0;  // the mean next-token loss: the eager comparison checks it
    {
        at::NoGradGuard g;
        loss = stage.forward(tok, tok).mean().item<double>();
    }

    const double t_fwd = time_it(
        [&] {
            at::NoGradGuard g;
            stage.forward(tok, tok);
        },
        1, a.min_s);
    rq::model::enable_linear_grads(stage.weights());
    const auto step = [&] {
        at::Tensor out = stage.forward(tok, tok);
        rq::model::stage_backward(tok, out, at::scalar_tensor(1.0 / out.numel()));
    };
    const double t_fb = time_it(step, 1, a.min_s);
    if (!a.profile.empty()) {
        {
            torch::autograd::profiler::RecordProfile trace(a.profile);
            for (int i = 0; i < 2; ++i) step();
        }
        // The forward alone (no graph), beside it: TRACE.forward.json.
        const std::string fwd = a.profile.substr(0, a.profile.rfind(".json")) + ".forward.json";
        torch::autograd::profiler::RecordProfile trace(fwd);
        at::NoGradGuard                          g;
        for (int i = 0; i < 2; ++i) stage.forward(tok, tok);
    }

    // Analytic FLOPs per token. N_lin = linear weights in decoder layers; attention computes the
    // full T x T score matrix (QK^T and PV: 4*T*H*D per layer per token); the head uses T-1 of T
    // positions. Backward: 2x forward for layers (input and weight grads), 1x for the head (the
    // tied embedding gets no gradient).
    const double L = double(c.n_layer), T = double(a.seq_len), H = double(c.n_head),
                 D = double(c.head_dim);
    const double n_lin =
        L * double(c.n_embd) * D * (2 * H + 2 * c.n_head_kv) + L * 3.0 * c.n_embd * c.n_ff;
    const double f_layers = 2 * n_lin + 4 * L * T * H * D;
    const double f_head   = 2.0 * c.n_embd * c.n_vocab * (T - 1) / T;
    const double f_fwd = f_layers + f_head, f_fb = 3 * f_layers + 2 * f_head;

    const double fwd_tps = ntok / t_fwd, fb_tps = ntok / t_fb;
    const double fwd_g = fwd_tps * f_fwd / 1e9, fb_g = fb_tps * f_fb / 1e9;
    std::printf(
        "# FLOPs/token: forward = 2*N_lin + 4*L*T*H*D + 2*C*V*(T-1)/T = %.3g,  "
        "fwd+bwd = 3*(2*N_lin + 4*L*T*H*D) + 2*(2*C*V*(T-1)/T) = %.3g   (N_lin = %.0f)\n",
        f_fwd, f_fb, n_lin);
    std::printf("  loss %.6f\n", loss);
    std::printf("# %-22s %10s %12s %10s %10s\n", "what", "shape", "tokens/s", "GFLOP/s",
                "roofline");
    std::printf("  %-22s %10s %12s %10.1f %9.0f%%\n", "gemm fp32 (roofline)", "2048^3", "-", gemm_g,
                100.0);
    std::printf("  %-22s %4lldx%-5lld %12.0f %10.1f %9.1f%%\n", "forward", (long long)a.batch,
                (long long)a.seq_len, fwd_tps, fwd_g, 100 * fwd_g / gemm_g);
    std::printf("  %-22s %4lldx%-5lld %12.0f %10.1f %9.1f%%\n", "forward+backward",
                (long long)a.batch, (long long)a.seq_len, fb_tps, fb_g, 100 * fb_g / gemm_g);
    std::printf("# forward+backward at %.1f%% of the GEMM roofline (target >= 40%%): %s\n",
                100 * fb_g / gemm_g, fb_g / gemm_g >= 0.4 ? "OK" : "BELOW TARGET");
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "bench_model: %s\n", e.what());
    return 1;
}
