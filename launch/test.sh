#!/usr/bin/env bash
# Sets up (packages + build) and runs the whole test suite under ctest.
# Tests need ../shared (the bundled models and data) beside the checkout; they fail, not skip,
# without it. Extra arguments go to ctest (e.g. -R test_io, -L mpi); without them the fuzz
# targets run too (RQ_FUZZ_SECONDS each, default 30).
# launch/test.sh --sanitize [ctest args]: the unit and MPI test binaries built with ASan + UBSan
# (CMake preset `sanitize`, build-sanitize/) and run clean: any report fails the test. Left
# out, by name: what loads the sentencepiece shim, whose RTLD_DEEPBIND cannot run under ASan
# (BUILD-NOTES §11): the gtest cases in SANITIZE_GTEST_EXCLUDE below (they tokenize
# llama-7m-en's text), test_nccl (no GPU build here), and the shell tests (they run the whole
# command on llama-7m-en text or for minutes; the release run covers them).
# Open MPI's own leaks are suppressed in tests/sanitize/lsan.supp, each entry explained.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [ "${1:-}" = --sanitize ]; then
  shift
  "$RQ_ROOT/launch/setup.sh" > /dev/null  # the packages (and the release build)
  (cd "$RQ_ROOT" && cmake --preset sanitize -Wno-dev > /dev/null)
  SAN_TESTS=(test_io test_model test_quant test_decompose test_sensitivity test_store test_cli
             test_parallel test_pipeline_mpi)
  cmake --build "$RQ_ROOT/build-sanitize" -j "${RQ_JOBS:-2}" --target requant-dist "${SAN_TESTS[@]}"
  SANITIZE_GTEST_EXCLUDE="Tokenizer.*:TokenizerErrors.NotASentencepieceModel:TokenizerErrors.EmptyFile"
  SANITIZE_GTEST_EXCLUDE+=":TextWindows.*:TextWindowsErrors.*:EvalData.DispatchesOnExtension"
  SANITIZE_GTEST_EXCLUDE+=":Bpe.LocatePrefersByteLevelJsonThenSentencepiece"
  SANITIZE_GTEST_EXCLUDE+=":*Llama7m*"  # fixtures and cases that calibrate on llama-7m-en's text
  export GTEST_FILTER="-$SANITIZE_GTEST_EXCLUDE"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  export LSAN_OPTIONS=suppressions=$RQ_ROOT/tests/sanitize/lsan.supp:print_suppressions=0
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  export OMPI_MCA_mca_base_component_disable_dlclose=1  # named frames for lsan.supp
  rq_need_shared
  cd "$RQ_ROOT/build-sanitize"
  rc=0
  ctest --output-on-failure -R '^test_' -E '^test_nccl$|_mpi_np' "$@" || rc=$?
  # Under mpirun, Open MPI's leaks are matched by the frames of its libraries, which have no
  # frame pointers: the MPI tests unwind malloc stacks the slow way (too slow for the rest).
  ASAN_OPTIONS=$ASAN_OPTIONS:fast_unwind_on_malloc=0 \
    ctest --output-on-failure -R '_mpi_np' "$@" || rc=$?
  exit $rc
fi
"$RQ_ROOT/launch/setup.sh"
rq_need_shared
cd "$RQ_BUILD"
ctest --output-on-failure --timeout 1500 "$@"
# Then every fuzz target for RQ_FUZZ_SECONDS (30; 0: none) on the committed corpus, so that a
# parser that starts crashing fails here (launch/fuzz.sh; the 10-minute runs are its default).
# The seed is fixed (RQ_FUZZ_SEED, 1): a CI failure is a regression that reruns, not a new
# random find; the long random-seed runs of launch/fuzz.sh are where new finds come from.
if [ "${RQ_FUZZ_SECONDS:-30}" != 0 ] && [ $# -eq 0 ]; then
  RQ_FUZZ_SEED=${RQ_FUZZ_SEED:-1} "$RQ_ROOT/launch/fuzz.sh" "${RQ_FUZZ_SECONDS:-30}"
fi
