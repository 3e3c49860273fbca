#!/usr/bin/env bash
# Sets up (packages + build) and runs the whole test suite under ctest.
# Tests need ../shared (the bundled models and data) beside the checkout; they fail, not skip,
# without it. Extra arguments go to ctest (e.g. -R test_io, -L mpi).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$RQ_ROOT/launch/setup.sh"
rq_need_shared
cd "$RQ_BUILD"
ctest --output-on-failure --timeout 1500 "$@"
