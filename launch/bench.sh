#!/usr/bin/env bash
# Benchmarks, one run, results as ratios: the fp32 GEMM roofline of this machine and the BLAS in
# use, then forward and forward+backward throughput of llama-7m-en at sequence length 256 and
# their fraction of the roofline. Needs a build (launch/setup.sh).
# Environment: RQ_BENCH_THREADS (default 2), RQ_BENCH_BATCH (8), RQ_BENCH_SECONDS (3).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
rq_need_shared
# OpenBLAS 0.3.21 may take an AVX-512 EPYC for Haswell; SkylakeX kernels are then ~2x faster.
# Only where the CPU has AVX-512 (else SIGILL), and only in launchers and benchmarks.
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -q avx512f /proc/cpuinfo; then
  if ! "$RQ_BUILD/bin/requant-dist" --version | grep -qiE "core=(SkylakeX|Cooperlake|SapphireRapids)"; then
    export OPENBLAS_CORETYPE=SkylakeX
  fi
fi
echo "# machine  : $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "# env      : OMP_WAIT_POLICY=$OMP_WAIT_POLICY OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(auto)}"
"$RQ_BUILD/bin/bench_model" --model "$RQ_SHARED/models/llama-7m-en" --seq-len 256 \
  --batch "${RQ_BENCH_BATCH:-8}" --threads "${RQ_BENCH_THREADS:-2}" --min-seconds "${RQ_BENCH_SECONDS:-3}"
