// Process memory from /proc (requant/units.h).
#include "requant/units.h"

#include <fstream>
#include <string>

namespace rq {

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
