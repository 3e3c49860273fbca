// Runtime facts: BLAS, threads, versions (requant/cli/sysinfo.h).
#include "requant/cli/sysinfo.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <unistd.h>

#include <torch/csrc/api/include/torch/version.h>
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

namespace rq::cli {

#ifdef RQ_HAVE_NCCL
std::string nccl_version_string();  // nccl_info.cpp, the only TU that includes nccl.h
#endif

namespace {
template <typename F>
F lookup(const char* name) {
    return reinterpret_cast<F>(::dlsym(RTLD_DEFAULT, name));
}
}  // namespace

bool blas_is_openblas() {
    return lookup<char* (*)()>("openblas_get_config") != nullptr;
}

std::string blas_info() {
    auto config = lookup<char* (*)()>("openblas_get_config");
    if (config == nullptr)
        return "reference BLAS (not OpenBLAS: expect ~6 GFLOP/s; install libopenblas0-pthread)";
    std::string s = config();  // "OpenBLAS 0.3.21 DYNAMIC_ARCH ..."
    if (auto core = lookup<char* (*)()>("openblas_get_corename"))
        s += std::string(" core=") + core();
    if (auto nt = lookup<int (*)()>("openblas_get_num_threads"))
        s += " threads=" + std::to_string(nt());
    if (!forced_core_note().empty()) s += " (" + forced_core_note() + ")";
    return s;
}

void set_threads(int n) {
    at::set_num_threads(n);
    if (auto set = lookup<void (*)(int)>("openblas_set_num_threads")) set(n);
}

namespace {
bool has_token(const std::string& text, const std::string& token) {
    std::istringstream in(text);
    for (std::string w; in >> w;)
        if (w == token) return true;
    return false;
}
std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s;
}
std::string openblas_corename() {
    auto core = lookup<char* (*)()>("openblas_get_corename");
    return core != nullptr ? std::string(core()) : std::string();
}
}  // namespace

std::string openblas_core_to_force(const std::string& cpu_flags, const std::string& core,
                                   bool user_set) {
    if (user_set || core.empty() || !has_token(cpu_flags, "avx512f")) return "";
    // The OpenBLAS 0.3.21 cores with AVX-512 kernels.
    static const std::vector<std::string> avx512_cores = {"skylakex", "cooperlake",
                                                          "sapphirerapids"};
    const std::string                     c            = lower(core);
    if (std::find(avx512_cores.begin(), avx512_cores.end(), c) != avx512_cores.end()) return "";
    return has_token(cpu_flags, "avx512_bf16") ? "Cooperlake" : "SkylakeX";
}

std::string cpu_flags() {
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);)
        if (line.rfind("flags", 0) == 0) return line.substr(line.find(':') + 1);
    return "";
}

std::string forced_core_note() {
    const char* forced = std::getenv("RQ_FORCED_CORE");
    return forced != nullptr ? std::string(forced) : std::string();
}

void reexec_with_runtime_env(char** argv) {
    if (std::getenv("RQ_KEEP_ENV") != nullptr) return;
    bool              changed = false;
    const std::string chosen  = openblas_corename();
    const std::string force =
        openblas_core_to_force(cpu_flags(), chosen, std::getenv("OPENBLAS_CORETYPE") != nullptr);
    if (!force.empty()) {
        ::setenv("OPENBLAS_CORETYPE", force.c_str(), 1);
        const std::string note =
            "OPENBLAS_CORETYPE=" + force + " forced (OpenBLAS chose " + chosen + ")";
        ::setenv("RQ_FORCED_CORE", note.c_str(), 1);
        changed = true;
    }
    if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
        ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
        changed = true;
    }
    if (std::getenv("OPENBLAS_THREAD_TIMEOUT") == nullptr) {
        ::setenv("OPENBLAS_THREAD_TIMEOUT", kOpenblasThreadTimeout, 1);
        changed = true;
    }
    if (std::getenv("GLIBC_TUNABLES") == nullptr) {
        ::setenv("GLIBC_TUNABLES", kMallocTunables, 1);
        changed = true;
    }
    ::setenv("RQ_KEEP_ENV", "1", 1);  // never loop
    if (changed) ::execv("/proc/self/exe", argv);
}

std::string torch_version() {
    return TORCH_VERSION;
}

std::string nccl_info() {
#ifdef RQ_HAVE_NCCL
    return "NCCL " + nccl_version_string() + " (compiled in)";
#else
    return "NCCL: not compiled in";
#endif
}

}  // namespace rq::cli
