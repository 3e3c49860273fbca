// Process memory from /proc (requant/units.h).
#include "requant/units.h"

#include <cstdio>
#include <ctime>
#include <fstream>
#include <string>

namespace rq {

std::string gib_number(double bytes) {
    char b[32];
    std::snprintf(b, sizeof b, "%.2f", bytes / kGiB);
    return b;
}
std::string gib_text(double bytes) {
    return gib_number(bytes) + " GiB";
}

double process_cpu_s() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

ProcessMemory process_memory() {
    ProcessMemory m;
    std::ifstream in("/proc/self/status");
    std::string   key;
    double        kib = 0;
    while (in >> key) {
        if (key == "VmRSS:" && in >> kib) m.rss = kib * 1024;
        if (key == "VmHWM:" && in >> kib) m.peak = kib * 1024;
    }
    return m;
}

}  // namespace rq
