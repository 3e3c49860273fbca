#!/usr/bin/env bash
# Sets up (packages + build) and runs the whole test suite under ctest.
# Tests need ../shared (the bundled models and data) beside the checkout; they fail, not skip,
# without it. Extra arguments go to ctest (e.g. -R test_io, -L mpi); without them the fuzz
# targets run too (RQ_FUZZ_SECONDS each, default 30).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$RQ_ROOT/launch/setup.sh"
rq_need_shared
cd "$RQ_BUILD"
ctest --output-on-failure --timeout 1500 "$@"
# Then every fuzz target for RQ_FUZZ_SECONDS (30; 0: none) on the committed corpus, so that a
# parser that starts crashing fails here (launch/fuzz.sh; the 10-minute runs are its default).
if [ "${RQ_FUZZ_SECONDS:-30}" != 0 ] && [ $# -eq 0 ]; then
  "$RQ_ROOT/launch/fuzz.sh" "${RQ_FUZZ_SECONDS:-30}"
fi
