#!/usr/bin/env bash
# The body of every sbatch script here: runs `requant-dist run` over the job's tasks, and on
# Slurm's warning signal before the time limit (--signal=B:USR1@T) asks the ranks to save and
# stop (through RQ_STOP_FILE), waits for them (exit code 3), and requeues the job, which then resumes from
# the run directory. A job that needs several time slices goes through as many requeues.
#   requant-run.sh JOB.toml [requant-dist run options]
# Environment: RQ_BIN (default $RQ_ROOT/build/bin/requant-dist), RQ_ROOT (the checkout;
# default the submit directory), RQ_LAUNCHER = srun (default; srun --mpi=pmix) | mpirun,
# RQ_STOP_GRACE (seconds the ranks get to reach a phase boundary after the signal; default 60,
# keep it below the --signal lead time).
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: sbatch slurm/<script>.sbatch JOB.toml [requant-dist run options]" >&2; exit 2; }
ROOT=${RQ_ROOT:-$(cd "${SLURM_SUBMIT_DIR:-.}" && pwd)}
BIN=${RQ_BIN:-$ROOT/build/bin/requant-dist}
[ -x "$BIN" ] || { echo "requant: $BIN not found (build first: launch/setup.sh, or set RQ_BIN)" >&2; exit 2; }
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} OPENBLAS_THREAD_TIMEOUT=${OPENBLAS_THREAD_TIMEOUT:-20} GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576:glibc.malloc.trim_threshold=134217728}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ntasks=${SLURM_NTASKS:-1}
echo "requant: job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): $ntasks ranks on ${SLURM_JOB_NODELIST:-localhost}: run $*"

case ${RQ_LAUNCHER:-srun} in
  srun)   launch=(srun --mpi=pmix --kill-on-bad-exit=1 "$BIN" run "$@") ;;
  mpirun) launch=(mpirun -np "$ntasks" --oversubscribe "$BIN" run "$@") ;;
  *) echo "requant: RQ_LAUNCHER must be srun or mpirun" >&2; exit 2 ;;
esac
# The ranks are asked to stop through a file they poll (RQ_STOP_FILE), not a signal: a signal
# that reached a rank still loading its libraries would kill it.
# It lives in the submit directory, which every node sees.
export RQ_STOP_FILE=${RQ_STOP_FILE:-${SLURM_SUBMIT_DIR:-${TMPDIR:-/tmp}}/.requant-stop-${SLURM_JOB_ID:-$$}}
rm -f "$RQ_STOP_FILE"
signalled=0; pid=""
forward() {
  signalled=1; echo "requant: $1 from Slurm: asking the ranks to save and stop"
  touch "$RQ_STOP_FILE"
}
trap 'forward USR1' USR1  # before the launch: the warning may come in the job's first second
trap 'forward TERM' TERM
"${launch[@]}" &
pid=$!
rc=0
while :; do  # a trapped signal interrupts wait: wait again until the launcher is gone
  wait $pid; rc=$?
  kill -0 $pid 2> /dev/null || break
done
rm -f "$RQ_STOP_FILE"
if [ $signalled = 1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  if [ $rc -eq 3 ] || [ $rc -eq 0 ]; then
    [ $rc -eq 0 ] && { echo "requant: finished before stopping"; exit 0; }
    echo "requant: state saved; requeueing job $SLURM_JOB_ID to resume"
    scontrol requeue "$SLURM_JOB_ID" && exit 0
    echo "requant: scontrol requeue failed; resubmit the same command to resume" >&2
  fi
fi
exit $rc
