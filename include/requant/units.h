#pragma once
#include <chrono>
#include <string>

// Units every module shares: bytes per GiB, and seconds since a point of the steady clock.

namespace rq {

constexpr double kGiB = 1024.0 * 1024 * 1024;  // bytes
constexpr double kMiB = 1024.0 * 1024;         // bytes

using Clock = std::chrono::steady_clock;
inline double since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace rq

namespace rq {

// This process's resident set (VmRSS) and its peak so far (VmHWM) in bytes, file-backed pages
// included, as /proc/self/status reports them (0 where it cannot be read).
struct ProcessMemory {
    double rss = 0, peak = 0;
};
ProcessMemory process_memory();
// CPU seconds this process has used (all its threads): compute that other processes sharing
// the cores do not inflate, unlike wall time.
double process_cpu_s();
// Bytes as GiB with two decimals: "1.25" (gib_number) and "1.25 GiB" (gib_text).
std::string gib_number(double bytes);
std::string gib_text(double bytes);

}  // namespace rq
