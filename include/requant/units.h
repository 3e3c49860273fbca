#pragma once
#include <chrono>

// Units every module shares: bytes per GiB, and seconds since a point of the steady clock.

namespace rq {

constexpr double kGiB = 1024.0 * 1024 * 1024;  // bytes

using Clock = std::chrono::steady_clock;
inline double since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace rq
