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

// The OPENBLAS_CORETYPE to re-execute with, or "" to keep the running core (DESIGN.md §6).
// OpenBLAS 0.3.21 does not know every CPU these machines have: it runs an AVX-512 Intel of
// family 6 model 207 on its SSE3 `Prescott` kernels and may take an AVX-512 EPYC for Haswell
// or Zen. Where the CPU lists `avx512f` and `core` (openblas_get_corename()) is not an AVX-512
// core, the answer is "Cooperlake" if `avx512_bf16` is listed too, else "SkylakeX".
// `cpu_flags`: the flags line of /proc/cpuinfo (or just its value); `core`: "" when the BLAS is
// not OpenBLAS (then nothing is forced); `user_set`: OPENBLAS_CORETYPE was given, which wins.
std::string openblas_core_to_force(const std::string& cpu_flags, const std::string& core,
                                   bool user_set);

// The first "flags" line of /proc/cpuinfo ("" if unreadable).
std::string cpu_flags();

// glibc's malloc as the programs run it: huge pages; every block of 1 MiB or more its own
// mapping, returned on free (the tensor cache keeps those that repeat); and the heap of smaller
// blocks kept up to 128 MiB free instead of glibc's 128 KiB. With the default trim threshold,
// the heap gave its top back and faulted it in again as huge pages: of 5 bench_model runs
// (16 x 256), 3 took ~27 k huge-page faults and ran forward at ~6.2 k tokens/s; with a 128 MiB
// or 1 GiB threshold 8 of 8 runs took 325-352 and ran at 8.2-10.0 k.
inline constexpr const char* kMallocTunables =
    "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576:glibc.malloc.trim_threshold="
    "134217728";

// How long OpenBLAS's idle threads spin after a call before they sleep: 2^20 cycles (~0.3 ms)
// instead of its 2^28 (~0.1 s). A spinning BLAS thread takes a core from the OpenMP threads of
// the fused kernels that run between GEMMs: bench_kernels' attention forward took 9.5-9.9 ms
// beside it and 5.1 ms without it; bench_model 16 x 256 (3 interleaved rounds) forward
// 10.7-11.4 k -> 13.5-13.8 k tokens/s, forward+backward 3.9-4.3 k -> 4.3-4.5 k.
inline constexpr const char* kOpenblasThreadTimeout = "20";

// Re-executes the program once with OMP_WAIT_POLICY=PASSIVE, OPENBLAS_THREAD_TIMEOUT=20,
// GLIBC_TUNABLES=kMallocTunables and the OPENBLAS_CORETYPE of openblas_core_to_force where the user
// left them unset (RQ_FORCED_CORE then names the core forced, for the logs). Both are read only at
// process start; spinning OpenMP workers fight OpenBLAS's threads for the cores (3x slower
// forward+backward measured on 2 cores), and fresh memory without huge pages faults at ~0.2 GB/s on
// these VMs. Returns normally when nothing needs changing (or exec fails). Set RQ_KEEP_ENV=1 to opt
// out.
void reexec_with_runtime_env(char** argv);

// "" or "OPENBLAS_CORETYPE=Cooperlake forced (OpenBLAS chose Haswell)" after a re-execution
// that forced the core; the commands log it beside blas_info().
std::string forced_core_note();

std::string torch_version();  // "1.13.0"
std::string nccl_info();      // "NCCL 2.28.9 (compiled in)" or "NCCL: not compiled in"

}  // namespace rq::cli
