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

std::string torch_version();  // "1.13.0"
std::string nccl_info();      // "NCCL 2.28.9 (compiled in)" or "NCCL: not compiled in"

}  // namespace rq::cli
