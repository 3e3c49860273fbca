// Runtime facts: BLAS, threads, versions (requant/cli/sysinfo.h).
#include "requant/cli/sysinfo.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <unistd.h>

#include <torch/csrc/api/include/torch/version.h>
#include <cstdlib>

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
    return s;
}

void set_threads(int n) {
    at::set_num_threads(n);
    if (auto set = lookup<void (*)(int)>("openblas_set_num_threads")) set(n);
}

void reexec_with_runtime_env(char** argv) {
    if (std::getenv("RQ_KEEP_ENV") != nullptr) return;
    bool changed = false;
    if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
        ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
        changed = true;
    }
    if (std::getenv("GLIBC_TUNABLES") == nullptr) {
        ::setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1", 1);
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
