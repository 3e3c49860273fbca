// bench_kernels: each fused kernel of the decoder block against its plain twin (ATen ops,
// autograd backward) at one model's shapes, forward and forward+backward, in one run: the
// median of interleaved repeats and the ratio twin / fused. Run through launch/bench.sh.
// Shapes default to llama-7m-en at 16 x 256 tokens (C 256, F 688, 8/4 heads of 32).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "requant/cli/sysinfo.h"
#include "requant/model/attention.h"
#include "requant/model/block_ops.h"
#include "requant/model/rope.h"
#include "requant/model/tensor_cache.h"

namespace {

using Clock = std::chrono::steady_clock;
using Fn    = std::function<at::Tensor(const std::vector<at::Tensor>&)>;

double seconds(const std::function<void()>& f) {
    const auto t0 = Clock::now();
    f();
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// One forward (no graph) or forward+backward of sum(f(xs) * w).
std::function<void()> pass(const Fn& f, const std::vector<at::Tensor>& xs, const at::Tensor& w,
                           bool backward) {
    return [=] {
        if (!backward) {
            at::NoGradGuard g;
            f(xs);
            return;
        }
        (f(xs) * w).sum().backward();
    };
}

void compare(const char* name, const Fn& fused, const Fn& twin, std::vector<at::Tensor> xs,
             int reps) {
    for (auto& x : xs) x.requires_grad_(true);
    at::Tensor w;
    {
        at::NoGradGuard g;
        w = at::randn(fused(xs).sizes());
    }
    for (bool bwd : {false, true}) {
        std::vector<double> a, b;
        const auto          fa = pass(fused, xs, w, bwd), fb = pass(twin, xs, w, bwd);
        fa(), fb();  // warm-up
        for (int i = 0; i < reps; ++i) a.push_back(seconds(fa)), b.push_back(seconds(fb));
        std::printf("  %-34s %-17s %9.2f %9.2f %8.2fx\n", name,
                    bwd ? "forward+backward" : "forward", 1e3 * median(a), 1e3 * median(b),
                    median(b) / median(a));
    }
}

}  // namespace

int main(int argc, char** argv) {
    int64_t  B = 16, T = 256, C = 256, F = 688, H = 8, Hkv = 4, D = 32;
    int      threads = 2, reps = 9;
    CLI::App app{"fused kernels of the decoder block against their plain twins"};
    app.add_option("--batch", B);
    app.add_option("--seq-len", T);
    app.add_option("--embd", C);
    app.add_option("--ff", F);
    app.add_option("--heads", H);
    app.add_option("--kv-heads", Hkv);
    app.add_option("--head-dim", D);
    app.add_option("--threads", threads);
    app.add_option("--reps", reps, "interleaved repeats; the median is reported");
    CLI11_PARSE(app, argc, argv);
    rq::cli::reexec_with_runtime_env(argv);  // the OpenBLAS core and environment of requant-dist
    rq::cli::set_threads(threads);
    at::manual_seed(1);
    rq::model::install_tensor_cache(rq::model::tensor_cache_cap_from_env());  // as requant-dist

    std::printf("# BLAS: %s\n", rq::cli::blas_info().c_str());
    std::printf(
        "# %lld x %lld tokens, C %lld, F %lld, heads %lld/%lld of %lld, %d threads, "
        "median of %d\n",
        (long long)B, (long long)T, (long long)C, (long long)F, (long long)H, (long long)Hkv,
        (long long)D, threads, reps);
    std::printf("# %-34s %-17s %9s %9s %9s\n", "kernel", "pass", "fused ms", "twin ms",
                "twin/fused");
    rq::io::LlamaConfig c;
    c.head_dim                     = D;
    const rq::model::RopeTables rt = rq::model::rope_tables(c, T, at::kFloat);
    compare(
        "rms_norm [B, T, C]", [](auto& x) { return rq::model::rms_norm(x[0], x[1], 1e-5); },
        [](auto& x) { return rq::model::rms_norm_ref(x[0], x[1], 1e-5); },
        {at::randn({B, T, C}), at::randn({C})}, reps);
    compare(
        "swiglu [B, T, F]", [](auto& x) { return rq::model::swiglu(x[0], x[1]); },
        [](auto& x) { return rq::model::swiglu_ref(x[0], x[1]); },
        {at::randn({B, T, F}), at::randn({B, T, F})}, reps);
    compare(
        "rope [B, T, H, D] as [B, H, T, D]",
        [&](auto& x) { return rq::model::apply_rope(x[0].transpose(1, 2), rt); },
        [&](auto& x) { return rq::model::apply_rope_ref(x[0].transpose(1, 2), rt); },
        {at::randn({B, T, H, D})}, reps);
    compare(
        "causal attention (default blocks)",
        [](auto& x) { return rq::model::causal_attention(x[0], x[1], x[2]); },
        [](auto& x) { return rq::model::causal_attention_ref(x[0], x[1], x[2]); },
        {at::randn({B, H, T, D}), at::randn({B, Hkv, T, D}), at::randn({B, Hkv, T, D})}, reps);
    compare(
        "causal attention (one block)",
        [T](auto& x) { return rq::model::causal_attention(x[0], x[1], x[2], T); },
        [](auto& x) { return rq::model::causal_attention_ref(x[0], x[1], x[2]); },
        {at::randn({B, H, T, D}), at::randn({B, Hkv, T, D}), at::randn({B, Hkv, T, D})}, reps);
    return 0;
}
