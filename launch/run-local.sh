#!/usr/bin/env bash
# One requant-dist run on this machine under mpirun, resumable: run it again after a crash or a
# kill and it picks up where it stopped (the run directory's state). SIGTERM or SIGINT here asks
# the ranks to stop at the next phase boundary (exit 3) instead of killing them.
#   launch/run-local.sh [-np P] JOB.toml [requant-dist run options]
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
np=1
[ "${1:-}" = -np ] && { np=$2; shift 2; }
[ $# -ge 1 ] || { echo "usage: launch/run-local.sh [-np P] JOB.toml [requant-dist run options]" >&2; exit 2; }
[ -x "$RQ_BIN" ] || { echo "run-local: $RQ_BIN not built (launch/setup.sh)" >&2; exit 1; }
mpirun -np "$np" --oversubscribe "$RQ_BIN" run "$@" &
pid=$!
trap 'echo "run-local: stopping at the next phase boundary"; kill -USR1 $pid' INT TERM
while :; do wait $pid; rc=$?; kill -0 $pid 2> /dev/null || break; done
[ $rc -eq 3 ] && echo "run-local: stopped with the state saved; the same command resumes"
exit $rc
