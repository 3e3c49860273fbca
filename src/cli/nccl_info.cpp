// The NCCL version this binary links against. Built only when RQ_WITH_NCCL is on; this is the
// translation unit that proves nccl.h and libnccl are usable (the NCCL transport joins it with
// the distributed pipeline).
#include <nccl.h>

#include <string>

namespace rq::cli {

std::string nccl_version_string() {
    int v = 0;
    if (ncclGetVersion(&v) != ncclSuccess) return "unknown";
    // NCCL_VERSION_CODE since 2.9: major*10000 + minor*100 + patch
    return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
           std::to_string(v % 100);
}

}  // namespace rq::cli
