#pragma once
#include <string>

// What this process runs on: the BLAS behind libtorch, thread counts, NCCL. Printed by
// --version, the benchmarks and the run logs, because results and speed depend on them.

namespace rq::cli {

// "OpenBLAS 0.3.21 ... SkylakeX" (from openblas_get_config/openblas_get_corename looked up at
// run time) or "reference BLAS (not OpenBLAS: expect ~6 GFLOP/s; install libopenblas0-pthread)".
std::string blas_info();
bool        blas_is_openblas();

// Sets ATen's intra-op threads and OpenBLAS's pool to n, the same on every rank. Never derive
// n from the machine or the rank count: ATen's reductions depend on it.
void set_threads(int n);

// Re-executes the program once with OMP_WAIT_POLICY=PASSIVE and
// GLIBC_TUNABLES=glibc.malloc.hugetlb=1 where the user left them unset. Both are read only at
// process start; spinning OpenMP workers fight OpenBLAS's threads for the cores (3x slower
// forward+backward measured on 2 cores), and fresh memory without huge pages faults at
// ~0.2 GB/s on these VMs. Returns normally when nothing needs changing (or exec fails).
// Set RQ_KEEP_ENV=1 to opt out.
void reexec_with_runtime_env(char** argv);

std::string torch_version();  // "1.13.0"
std::string nccl_info();      // "NCCL 2.28.9 (compiled in)" or "NCCL: not compiled in"

}  // namespace rq::cli
