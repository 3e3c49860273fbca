#!/usr/bin/env bash
# Refuse early, never hang (issue 19 §4, §5), on stories260k and llama-7m-en:
# - memory: a job whose planned peak exceeds what a rank may use (run.mem_gib, Slurm's --mem
#   per node divided by the ranks on it, --mem-per-cpu, a real memory cgroup where one can be
#   made) is refused within seconds, naming the numbers and the limit, every rank ends, and the
#   run folder gets nothing; run.mem_check = false starts anyway with a warning;
# - a rank stopped with SIGSTOP (a worker mid-detach, or the coordinator) ends the job within
#   run.rank_timeout plus a few seconds, with a message naming the silent rank and its pid; the
#   same command then resumes, and its checkpoint equals an uninterrupted run's byte for byte.
# Usage: test_limits.sh PATH/TO/requant-dist REPO_ROOT PATH/TO/mpiexec
set -uo pipefail
bin=$1; root=$2; mpiexec=$3; job=$root/jobs/stories260k-gptq.toml; job7=$root/jobs/llama-7m-en-rtn.toml
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source "$(dirname "$0")/check_lib.sh"
[ -d "$root/../shared/models" ] || { echo "FAIL: ../shared not found beside the checkout"; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b - a}'; }

# refused NAME PATTERN CMD...: the command fails within 20 s, its output matches PATTERN, and
# its run folder ($tmp/NAME) holds nothing.
refused() {
  local name=$1 pat=$2; shift 2
  local t0; t0=$(now)
  "$@" --out "$tmp/$name" > "$tmp/$name.log" 2>&1; local rc=$? s; s=$(secs "$t0")
  if [ $rc -ne 0 ] && grep -q "$pat" "$tmp/$name.log" && [ -z "$(ls -A "$tmp/$name" 2>/dev/null)" ] \
     && awk -v s="$s" 'BEGIN{exit !(s < 20)}'; then
    ok "$name refused in $s s: $(grep -m1 -o 'error: .*' "$tmp/$name.log" | cut -c1-220)"
  else
    fail "$name: rc $rc after $s s, folder: $(ls -A "$tmp/$name" 2>/dev/null | tr '\n' ' ') $(tail -3 "$tmp/$name.log")"
  fi
}

# --- memory ---------------------------------------------------------------------------------
refused mem-gib "more than the 0.02 GiB it may use (run.mem_gib" "$bin" run "$job" --set run.mem_gib=0.02
# llama-7m-en's plan is ~0.13 GiB per rank; 520 MiB per node for 2 ranks leaves ~0.09 after
# start-up. The message names the per-node figure and the rank count on the node.
refused slurm-mem "Slurm --mem 0.51 GiB per node / 2 ranks on it" \
  env SLURM_MEM_PER_NODE=520 "$mpiexec" -np 2 -x SLURM_MEM_PER_NODE "$bin" run "$job7"
refused slurm-mem-per-cpu "Slurm --mem-per-cpu 0.10 GiB x 2 CPU(s) per rank" \
  env SLURM_MEM_PER_CPU=100 SLURM_CPUS_PER_TASK=2 "$bin" run "$job7"
# Enough per node for one rank, not for two: one rank runs.
SLURM_MEM_PER_NODE=520 "$bin" run "$job7" --out "$tmp/slurm-one" > "$tmp/log" 2>&1 \
  && grep -q "room 0.3[0-9] GiB (Slurm --mem 0.51 GiB per node / 1 rank on it" "$tmp/log" \
  && ok "the same --mem fits one rank: $(grep -o 'memory: .*' "$tmp/log")" || fail "one rank: $(tail -3 "$tmp/log")"
"$bin" run "$job" --out "$tmp/nocheck" --set run.mem_gib=0.02 --set run.mem_check=false > "$tmp/log" 2>&1 \
  && grep -q "starting anyway (run.mem_check = false)" "$tmp/log" && ok "run.mem_check = false: warned and ran" \
  || fail "mem_check = false: $(tail -3 "$tmp/log")"

# A real memory cgroup (v1 here; needs root and a writable hierarchy): 300 MiB for the process.
cg=""
for base in /sys/fs/cgroup/memory$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup 2>/dev/null); do
  d="$base/rq-test-$$"
  mkdir "$d" 2>/dev/null && echo $((300 << 20)) > "$d/memory.limit_in_bytes" 2>/dev/null && cg=$d
done
if [ -n "$cg" ]; then
  refused cgroup "cgroup limit 0.29 GiB per node / 1 rank on it" \
    sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" "$bin" run "$job7" --set run.microbatch=16
  rmdir "$cg" 2>/dev/null
else
  echo "note: no writable memory cgroup here (not root, or cgroup v2 without delegation): the cgroup case did not run"
fi

# --- a silent rank ---------------------------------------------------------------------------
RQ=(--set data.calibration_seqs=8 --set sensitivity.nodes=16 --set quant.sequential=false
    --set quant.method=squeezellm --set requant.outlier_ratio=0.0045 --set requant.outlier_select=adaptive
    --set requant.significant_ratio=0.0005 --set requant.step_ratio=0.00025 --set requant.significant_select=pqi)
"$mpiexec" -np 3 --oversubscribe "$bin" run "$job" --out "$tmp/ref" "${RQ[@]}" > "$tmp/log" 2>&1 \
  || fail "reference run: $(tail -3 "$tmp/log")"

# silent NAME RANK AFTER: runs on 3 ranks with run.rank_timeout = 5, sends SIGSTOP to RANK once
# its log shows AFTER, and expects the job to end naming it; then resumes.
silent() {
  local name=$1 r=$2 after=$3 out=$tmp/$1
  "$mpiexec" -np 3 --oversubscribe "$bin" run "$job" --out "$out" "${RQ[@]}" --set run.rank_timeout=5 \
    > "$tmp/$name.log" 2>&1 &
  local mp=$! log; log=$out/logs/rank-00$r.log
  while kill -0 $mp 2>/dev/null && ! grep -q "$after" "$log" 2>/dev/null; do sleep 0.02; done
  local pid; pid=$(awk '{print $2}' "$out/logs/rank-00$r.alive" 2>/dev/null)
  if ! kill -0 $mp 2>/dev/null || [ -z "$pid" ]; then fail "$name: the run ended before the stop"; return; fi
  kill -STOP "$pid"; local t0; t0=$(now)
  wait $mp; local rc=$? s; s=$(secs "$t0")
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done  # reaped by now
  kill -0 "$pid" 2>/dev/null && { fail "$name: the stopped rank $pid outlived the job by 10 s"; kill -9 "$pid"; }
  if [ $rc -ne 0 ] && grep -q "rank $r (pid $pid on .*) has not answered for [0-9]* s (run.rank_timeout = 5 s)" "$tmp/$name.log" \
     && awk -v s="$s" 'BEGIN{exit !(s < 20)}'; then
    ok "$name: SIGSTOP after '$after', the job ended $s s later: $(grep -o 'rank [0-9] (pid.*answered for [0-9]* s' "$tmp/$name.log")"
  else
    fail "$name: rc $rc after $s s: $(grep -v '^\s*$' "$tmp/$name.log" | tail -4)"
  fi
  "$mpiexec" -np 3 --oversubscribe "$bin" run "$job" --out "$out" "${RQ[@]}" > "$tmp/log" 2>&1 \
    && grep -q "resuming" "$tmp/log" && cmp -s "$out/model.requant.h5" "$tmp/ref/model.requant.h5" \
    && ok "$name: resumed ($(grep -o 'done:.*' "$tmp/log")), checkpoint equals the uninterrupted run's" \
    || fail "$name: resume: $(tail -3 "$tmp/log")"
}
silent worker 1 "phase detach-1 done"
silent coordinator 0 "phase quantize done"

[ $fails -eq 0 ] && echo "all limit checks passed" || echo "$fails limit checks failed"
exit $((fails > 0))
