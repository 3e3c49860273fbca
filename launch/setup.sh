#!/usr/bin/env bash
# Installs every Debian package the build, tests and benchmarks need, then configures and builds.
# Idempotent: re-running only rebuilds what changed. Usage: launch/setup.sh [extra cmake args]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PKGS=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev libopenblas0-pthread            # libtorch; without OpenBLAS its GEMM runs ~24x slower
  libopenmpi-dev openmpi-bin                   # MPI (pipeline stages, control plane)
  libhdf5-dev libhdf5-openmpi-dev hdf5-tools   # state and checkpoints; h5dump in tests
  python3-h5py                                 # tests read model.requant.h5 with h5py too
  python3-torch python3-sklearn                # tests/reference/: independent implementations
  libssl-dev                                   # SHA-256 of state files and run fingerprints
  libboost-serialization-dev libboost-mpi-dev  # control-plane messages
  nlohmann-json3-dev libtomlplusplus-dev libcli11-dev libspdlog-dev
  libsentencepiece-dev libgtest-dev
  libpcre2-dev                                 # tokenizer.json pre-tokenizer regex (Unicode classes)
  gnuplot-nox                                  # the sensitivity report's PNG plots
  slurmctld slurmd slurm-client munge          # a real single-node Slurm for the sbatch test
  clang-14 libclang-rt-14-dev                  # libFuzzer + ASan/UBSan for launch/fuzz.sh
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${#missing[@]} packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#PKGS[@]} packages present"
fi

if [ ! -f "$RQ_BUILD/build.ninja" ]; then
  cmake -S "$RQ_ROOT" -B "$RQ_BUILD" -G Ninja -Wno-dev -DCMAKE_BUILD_TYPE=Release "$@"
fi
cmake --build "$RQ_BUILD" -j "${RQ_JOBS:-2}"
echo "setup: built $RQ_BIN"
