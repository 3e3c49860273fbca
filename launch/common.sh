# Sourced by the launch/ scripts: the repository root, the build folder, and the runtime
# environment every launcher sets (BUILD-NOTES §8). Prints what it sets.
RQ_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RQ_BUILD=${RQ_BUILD:-$RQ_ROOT/build}
RQ_SHARED=${RQ_SHARED:-$(cd "$RQ_ROOT/.." && pwd)/shared}
RQ_BIN=$RQ_BUILD/bin/requant-dist

# First touch of fresh memory is ~100x slower without transparent huge pages on these VMs.
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576:glibc.malloc.trim_threshold=134217728}
# OpenBLAS and ATen's OpenMP threads share the cores: idle threads must not spin.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} OPENBLAS_THREAD_TIMEOUT=${OPENBLAS_THREAD_TIMEOUT:-20}
# mpirun as root (containers, CI)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

rq_need_shared() {
  if [ ! -d "$RQ_SHARED/models" ]; then
    echo "error: bundled models not found at $RQ_SHARED/models (set RQ_SHARED)" >&2
    exit 1
  fi
}

# requant-dist on one rank, or under mpirun -np $RQ_RANKS (report scripts).
rq_launch() {
  if [ "${RQ_RANKS:-1}" = 1 ]; then "$RQ_BIN" "$@"; else mpirun -np "$RQ_RANKS" --oversubscribe "$RQ_BIN" "$@"; fi
}

# The output folder of a report script: $1 if given, else runs/<name> in the checkout; created.
rq_out_dir() {
  OUT=$(realpath -m "${1:-$RQ_ROOT/runs/$2}")
  mkdir -p "$OUT"
}
