#!/usr/bin/env bash
# The sbatch scripts under a real single-node Slurm (slurmctld + slurmd on localhost,
# launch/slurm-local.sh): a 2-rank srun job with a one-minute limit gets Slurm's warning signal,
# saves, requeues itself, resumes and finishes with the checkpoint of an uninterrupted run; the
# mpirun launcher works inside a batch job; a job array runs a two-point sweep.
# Usage: test_slurm.sh PATH/TO/requant-dist REPO_ROOT PATH/TO/mpiexec
set -uo pipefail
bin=$(realpath "$1"); root=$(realpath "$2"); mpiexec=$3; job=$root/jobs/stories260k-gptq.toml
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source "$root/tests/cli/check_lib.sh"
[ -d "$root/../shared/models" ] || { echo "FAIL: ../shared not found beside the checkout"; exit 1; }
"$root/launch/slurm-local.sh" start "$tmp/slurm" || { echo "FAIL: Slurm did not start"; exit 1; }
trap '"$root/launch/slurm-local.sh" stop "$tmp/slurm" > /dev/null; rm -rf "$tmp"' EXIT
export SLURM_CONF=$tmp/slurm/slurm.conf RQ_BIN=$bin RQ_ROOT=$root RQ_STOP_GRACE=25
cd "$tmp"

# Half a minute of work or more in short steps (16 detach rounds of a few seconds; 8 nodes each:
# with kept graphs 4 made the run 18 s on CI), so that
# every time slice between Slurm's warnings gets past at least one phase boundary.
RQ=(--set data.calibration_seqs=24 --set sensitivity.nodes=8 --set quant.sequential=false
    --set quant.method=squeezellm --set requant.outlier_ratio=0.0045 --set requant.outlier_select=adaptive
    --set requant.significant_ratio=0.0005 --set requant.step_ratio=0.00003125 --set requant.significant_select=pqi)
t0=$(date +%s)
"$mpiexec" -np 2 "$bin" run "$job" --out "$tmp/ref" "${RQ[@]}" > "$tmp/ref.log" 2>&1 || fail "reference run: $(tail -3 "$tmp/ref.log")"
echo "reference run: $(( $(date +%s) - t0 )) s on 2 ranks"

# --time=1 (a minute) and the warning 45 s before it: slurmctld looks every 30 s, so the warning
# comes in the first 15 s of each time slice; the ranks stop at the next boundary (at most
# RQ_STOP_GRACE = 25 s later), well before the limit.
[ "$(( $(date +%s) - t0 ))" -ge 20 ] || fail "the reference run took under 20 s: too short to be warned for sure"
id=$(sbatch --parsable --wait --time=1 --signal=B:USR1@45 --ntasks=2 --cpus-per-task=1 -o "$tmp/job.out" \
     "$root/slurm/run.sbatch" "$job" --out "$tmp/s" "${RQ[@]}")
rc=$?
info=$(scontrol show job "$id" 2> /dev/null)
restarts=$(echo "$info" | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p')
state=$(echo "$info" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
echo "job $id: sbatch rc $rc, JobState $state, Restarts $restarts"
grep -q "requeueing job $id" "$tmp/job.out" && grep -q "resuming" "$tmp/job.out" \
  && ok "the time-limit warning saved the state and requeued the job ($restarts restarts), which resumed" \
  || fail "no requeue and resume in the job log: $(grep requant: "$tmp/job.out" | tail -5)"
[ "$state" = COMPLETED ] && [ "${restarts:-0}" -ge 1 ] && ok "job $id COMPLETED after $restarts requeues" \
  || fail "job $id: state '$state', restarts '$restarts'"
cmp -s "$tmp/ref/model.requant.h5" "$tmp/s/model.requant.h5" \
  && ok "the requeued job's checkpoint equals the uninterrupted run's byte for byte" \
  || fail "the requeued job's checkpoint differs (or is missing)"

# mpirun inside the batch script.
RQ_LAUNCHER=mpirun sbatch --wait --ntasks=2 --cpus-per-task=1 -o "$tmp/mpirun.out" "$root/slurm/run.sbatch" \
  "$job" --out "$tmp/m" --set quant.method=rtn > /dev/null
grep -q '"ranks": 2' "$tmp/m/results.json" 2> /dev/null && ok "RQ_LAUNCHER=mpirun: a 2-rank run inside sbatch" \
  || fail "mpirun in sbatch: $(tail -3 "$tmp/mpirun.out")"

# A job array over a sweep file.
printf '%s\n' "--set quant.method=rtn --set quant.bits=3" "--set quant.method=rtn --set quant.bits=4" > "$tmp/sweep.txt"
sbatch --wait --array=0-1 -o "$tmp/sweep-%a.out" "$root/slurm/sweep.sbatch" "$job" "$tmp/sweep.txt" "$tmp/sw" > /dev/null
b0=$(val "$tmp/sw/0/results.json" bits); b1=$(val "$tmp/sw/1/results.json" bits)
[ "$b0" = 3 ] && [ "$b1" = 4 ] && ok "job array: task 0 ran 3-bit, task 1 ran 4-bit" \
  || fail "job array: bits '$b0' '$b1' $(tail -2 "$tmp/sweep-0.out")"
[ $fails -eq 0 ] && echo "all slurm checks passed" || echo "$fails slurm checks failed"
exit $((fails > 0))
