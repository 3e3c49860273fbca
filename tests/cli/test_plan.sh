#!/usr/bin/env bash
# `requant-dist plan`: every Llama 3.x job's header states the plan that the command prints
# (rank count and GiB per rank), --mem-gib picks the fewest ranks that fit (one fewer does not),
# and a config that cannot fit is refused with a clear message.
# Usage: test_plan.sh PATH/TO/requant-dist REPO_ROOT PATH/TO/mpiexec
set -uo pipefail
bin=$1; root=$2
source "$(dirname "$0")/check_lib.sh"
jobs=$root/jobs
for j in $jobs/llama-3.*.toml; do
  cmd=$(sed -n 's/^# Ranks and memory (requant-dist \(plan .*\)):$/\1/p' "$j")
  want=$(sed -n 's/^# \([0-9]*\) ranks, at most \([0-9.]*\) GiB per rank.*/\1 \2/p' "$j")
  [ -n "$cmd" ] && [ -n "$want" ] || { fail "$(basename "$j"): no plan line in the header"; continue; }
  got=$(cd "$root" && $bin $cmd | sed -n 's/.* layers on \([0-9]*\) ranks: at most \([0-9.]*\) GiB.*/\1 \2/p')
  [ "$got" = "$want" ] && ok "$(basename "$j"): $want GiB as its header says" || fail "$(basename "$j"): header '$want', plan '$got'"
done
j=$root/jobs/llama-3.1-8b-squeezellm-requant.toml; c=$root/jobs/configs/llama-3.1-8b.json
P=$($bin plan "$j" --config "$c" --mem-gib 64 | sed -n 's/^\([0-9]*\) ranks: the fewest.*/\1/p')
fits() { $bin plan "$j" --config "$c" --ranks $1 | sed -n 's/.*at most \([0-9.]*\) GiB.*/\1/p' | awk '{exit !($1 <= 64)}'; }
[ -n "$P" ] && fits "$P" && ! fits $((P - 1)) && ok "--mem-gib 64 picks $P ranks for Llama 3.1 8B; $((P - 1)) would not fit" \
  || fail "--mem-gib 64 chose '$P'"
$bin plan "$root/jobs/llama-3.1-405b-gptq-requant.toml" --config "$root/jobs/configs/llama-3.1-405b.json" --mem-gib 16 > "$tmp/log" 2>&1; rc=$?
[ $rc -ne 0 ] && grep -q "even one rank per layer needs more than" "$tmp/log" && ok "an impossible memory budget is refused" \
  || fail "impossible budget: rc $rc"
[ $fails -eq 0 ] && echo "all plan checks passed" || echo "$fails plan checks failed"
exit $((fails > 0))
