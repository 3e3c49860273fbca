// bench_trellis: QTIP's tail-biting Viterbi (requant/quant/trellis.h) on one core: tiles per
// second of the fast Viterbi and of the plain viterbi_ref at K bits (HYB unless --code), the
// speed-up (target >= 10x), and tiles per second against the target of 200 (K = 2, HYB).
// Each tail-biting tile is two Viterbi passes over T = 256 weights.
//   bench_trellis [--K 2] [--code hyb|1mad|3inst] [--tiles 40] [--ref-tiles 2]
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include "bench_args.h"
#include "requant/quant/trellis.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) try {
    using namespace rq::quant;
    const rq::bench::Args a(argc, argv, {"K", "code", "tiles", "ref-tiles"},
                            "bench_trellis [--K 2] [--code hyb|1mad|3inst] [--tiles 40] "
                            "[--ref-tiles 2]");
    const int             K = int(a.integer("K", 2)), tiles = int(a.integer("tiles", 40));
    const int             ref_tiles = int(a.integer("ref-tiles", 2));
    const std::string     name      = a.str("code", "hyb");
    const TrellisCode     code      = name == "1mad"    ? TrellisCode::OneMad
                                      : name == "3inst" ? TrellisCode::ThreeInst
                                                        : TrellisCode::Hyb;
    at::set_num_threads(1);
    auto       t0  = Clock::now();
    const auto tab = code == TrellisCode::Hyb ? hyb_table(1) : at::Tensor();
    std::printf("HYB table (k-means, 2^20 points): %.2f s\n", seconds_since(t0));
    const BitshiftTrellis tr(K, code, tab);
    constexpr int         T   = 256;
    auto                  gen = at::detail::createCPUGenerator(7);
    const at::Tensor      x   = at::randn({tiles, T}, gen, at::kFloat).contiguous();
    const float*          xp  = x.data_ptr<float>();

    std::vector<uint16_t> st(T);
    t0 = Clock::now();
    for (int i = 0; i < tiles; ++i) st = tr.quantize_tile(xp + i * T, T);
    const double fast = seconds_since(t0) / tiles;
    // The plain Viterbi, two passes per tile as quantize_tile does (free, then constrained).
    std::vector<uint16_t> a1(T / tr.V()), a2(T / tr.V()), b1(T / tr.V());
    t0        = Clock::now();
    bool same = true;
    for (int i = 0; i < ref_tiles; ++i) {
        tr.viterbi_ref(xp + i * T, T, -1, a1.data());
        tr.viterbi_ref(xp + i * T, T, a1[0] >> tr.KV(), a2.data());
    }
    const double ref = seconds_since(t0) / ref_tiles;
    for (int i = 0; i < ref_tiles; ++i) {
        tr.viterbi_ref(xp + i * T, T, -1, a1.data());
        tr.viterbi(xp + i * T, T, -1, b1.data());
        same = same && a1 == b1;
    }
    std::printf("code %s, K %d, V %d, T %d, one core:\n", name.c_str(), K, tr.V(), T);
    std::printf("  viterbi_ref  %8.2f ms per tail-biting tile  %8.1f tiles/s\n", 1e3 * ref,
                1 / ref);
    std::printf("  viterbi      %8.2f ms per tail-biting tile  %8.1f tiles/s  (target >= 200)\n",
                1e3 * fast, 1 / fast);
    std::printf("  speed-up %.1fx (target >= 10x); fast states == ref states: %s\n", ref / fast,
                same ? "yes" : "NO");
    return same ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "bench_trellis: %s\n", e.what());
    return 2;
}
