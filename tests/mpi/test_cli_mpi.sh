#!/usr/bin/env bash
# requant-dist under real mpirun: eval gives the single-process numbers for P = 2, 3, 4, and a
# failure injected on one rank (rank 1 of 3, and the last rank) ends every rank quickly with
# that rank's message and a non-zero exit: never a hang.
# Usage: test_cli_mpi.sh PATH/TO/requant-dist PATH/TO/shared PATH/TO/mpiexec
set -uo pipefail
bin=$1; shared=$2; mpiexec=$3; M=$shared/models
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source "$(dirname "$0")/../cli/check_lib.sh"
[ -d "$M" ] || { echo "FAIL: $M not found (tests need ../shared)"; exit 1; }
command -v "$mpiexec" > /dev/null || { echo "FAIL: $mpiexec not found (tests need Open MPI)"; exit 1; }

"$bin" eval --model "$M/stories260k" --data "$M/stories260k/eval-tokens.safetensors" --json "$tmp/p1.json" > /dev/null 2>&1
want=$(sed -n 's/.*"loss": *\([0-9.e+-]*\).*/\1/p' "$tmp/p1.json")
for np in 2 3 4; do
  "$mpiexec" -np $np --oversubscribe "$bin" eval --model "$M/stories260k" \
    --data "$M/stories260k/eval-tokens.safetensors" --json "$tmp/p$np.json" > "$tmp/out" 2>&1 \
    || { fail "np=$np eval exited non-zero: $(tail -3 "$tmp/out")"; continue; }
  got=$(sed -n 's/.*"loss": *\([0-9.e+-]*\).*/\1/p' "$tmp/p$np.json")
  [ "$got" = "$want" ] && ok "stories260k np=$np loss $got == single process (bitwise)" \
    || fail "stories260k np=$np loss $got != single process $want"
  grep -q '"ranks": '$np "$tmp/p$np.json" || fail "np=$np: results do not say ranks $np"
done
"$mpiexec" -np 2 "$bin" eval --model "$M/llama-7m-en" --data "$shared/data/sotu-1981-2021.txt" \
  --max-seqs 16 --json "$tmp/l2.json" > /dev/null 2>&1
"$bin" eval --model "$M/llama-7m-en" --data "$shared/data/sotu-1981-2021.txt" --max-seqs 16 \
  --json "$tmp/l1.json" > /dev/null 2>&1
a=$(sed -n 's/.*"perplexity": *\([0-9.e+-]*\).*/\1/p' "$tmp/l1.json"); b=$(sed -n 's/.*"perplexity": *\([0-9.e+-]*\).*/\1/p' "$tmp/l2.json")
[ -n "$a" ] && [ "$a" = "$b" ] && ok "llama-7m-en text eval np=2 perplexity $b == single process" \
  || fail "llama-7m-en np=2 perplexity '$b' != single process '$a'"

# inject RANK MICRO NP: the job must end non-zero, within 10 s, with that rank's message
inject() {
  local r=$1 m=$2 np=$3 t0=$SECONDS
  RQ_FAIL_RANK=$r RQ_FAIL_MICRO=$m timeout 120 "$mpiexec" -np $np --oversubscribe -x RQ_FAIL_RANK -x RQ_FAIL_MICRO \
    "$bin" eval --model "$M/stories260k" --data "$M/stories260k/eval-tokens.safetensors" --batch 2 \
    > "$tmp/out" 2>&1
  local rc=$? dt=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then fail "failure on rank $r of $np: exit 0"; return; fi
  if [ $rc -eq 124 ]; then fail "failure on rank $r of $np: HANG (killed by timeout)"; return; fi
  grep -q "\[rank $r\] requant-dist: error: injected failure" "$tmp/out" \
    || { fail "failure on rank $r of $np: message missing: $(tail -5 "$tmp/out")"; return; }
  [ $dt -le 10 ] && ok "failure on rank $r of $np (microbatch $m): exit $rc after ${dt}s with rank $r's message" \
    || fail "failure on rank $r of $np took ${dt}s (> 10 s)"
}
inject 1 1 3
inject 2 3 3
inject 0 2 3
inject 3 0 4
[ $fails -eq 0 ] && echo "all MPI CLI checks passed" || echo "$fails MPI CLI checks failed"
exit $((fails > 0))
