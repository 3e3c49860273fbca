// Which build of the hot fp32 loops runs (requant/model/vec_math.h).
#include "requant/model/vec_math.h"

#include <atomic>

namespace rq::model {
namespace {

std::atomic<bool> g_force_baseline{false};

}  // namespace

bool use_avx2() {
    static const bool has = __builtin_cpu_supports("avx2");
    return has && !g_force_baseline.load(std::memory_order_relaxed);
}

void force_baseline(bool on) {
    g_force_baseline.store(on, std::memory_order_relaxed);
}

}  // namespace rq::model
