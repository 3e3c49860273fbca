#!/usr/bin/env bash
# requant-dist run end to end on stories260k: results.json written with the documented keys,
# the same numbers for 1 and 2 ranks (and 3 ranks, non-sequential), 8-bit RTN close to fp32,
# 4-bit GPTQ better than 4-bit RTN, and a bad job refused with one clear message.
# Usage: test_run.sh PATH/TO/requant-dist REPO_ROOT PATH/TO/mpiexec
set -uo pipefail
bin=$1; root=$2; mpiexec=$3; job=$root/jobs/stories260k-gptq.toml
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source "$(dirname "$0")/check_lib.sh"
[ -d "$root/../shared/models" ] || { echo "FAIL: ../shared not found beside the checkout"; exit 1; }

"$bin" run "$job" --out "$tmp/p1" > "$tmp/log" 2>&1 || fail "run np=1: $(tail -3 "$tmp/log")"
for k in bits_per_weight memory_gib perplexity perplexity_fp phases ranks method version; do
  grep -q "\"$k\"" "$tmp/p1/results.json" 2>/dev/null || fail "results.json lacks '$k'"
done
[ -f "$tmp/p1/job.toml" ] && ok "results.json and job.toml written" || fail "job.toml missing"
"$mpiexec" -np 2 "$bin" run "$job" --out "$tmp/p2" > "$tmp/log" 2>&1 || fail "run np=2: $(tail -3 "$tmp/log")"
a=$(val "$tmp/p1/results.json" "eval-tokens.safetensors"); b=$(val "$tmp/p2/results.json" "eval-tokens.safetensors")
[ -n "$a" ] && [ "$a" = "$b" ] && ok "gptq sequential: perplexity $a for 1 and 2 ranks" || fail "np=1 '$a' vs np=2 '$b'"

"$bin" run "$job" --out "$tmp/n1" --set quant.sequential=false > /dev/null 2>&1
"$mpiexec" -np 3 --oversubscribe "$bin" run "$job" --out "$tmp/n3" --set quant.sequential=false > /dev/null 2>&1
a=$(val "$tmp/n1/results.json" "eval-tokens.safetensors"); b=$(val "$tmp/n3/results.json" "eval-tokens.safetensors")
[ -n "$a" ] && [ "$a" = "$b" ] && ok "gptq one-pass: perplexity $a for 1 and 3 ranks" || fail "np=1 '$a' vs np=3 '$b'"

# A budget too small for any layer's X^T X at once: one calibration pass per layer, and the
# same checkpoint byte for byte.
"$mpiexec" -np 2 "$bin" run "$job" --out "$tmp/g2" --set quant.sequential=false --set run.mem_gib=0.001 --set run.mem_check=false > "$tmp/log" 2>&1 || fail "run in passes: $(tail -3 "$tmp/log")"
grep -q "X^T X in 3 calibration pass" "$tmp/log" && cmp -s "$tmp/n1/model.requant.h5" "$tmp/g2/model.requant.h5" \
  && ok "gptq one-pass statistics in 3 passes (run.mem_gib): the same checkpoint" || fail "passes: $(grep -c 'calibration pass' "$tmp/log") / checkpoints differ"

"$bin" run "$job" --out "$tmp/r8" --set quant.method=rtn --set quant.bits=8 > /dev/null 2>&1
"$bin" run "$job" --out "$tmp/r4" --set quant.method=rtn > /dev/null 2>&1
fp=$(sed -n '/perplexity_fp/,/}/p' "$tmp/r8/results.json" | sed -n 's/.*"eval-tokens.safetensors": *\([0-9.e+-]*\).*/\1/p')
r8=$(val "$tmp/r8/results.json" "eval-tokens.safetensors"); r4=$(val "$tmp/r4/results.json" "eval-tokens.safetensors")
g4=$(val "$tmp/p1/results.json" "eval-tokens.safetensors")
awk -v a="$r8" -v f="$fp" 'BEGIN{exit !(a > f && a < f * 1.05)}' && ok "8-bit RTN perplexity $r8 within 5% of fp32 $fp" || fail "8-bit RTN $r8 vs fp32 $fp"
awk -v g="$g4" -v r="$r4" 'BEGIN{exit !(g < r)}' && ok "4-bit GPTQ $g4 < 4-bit RTN $r4" || fail "4-bit GPTQ $g4 not below RTN $r4"
bpw=$(val "$tmp/r4/results.json" bits_per_weight)
awk -v b="$bpw" 'BEGIN{exit !(b > 4.5 && b < 4.6)}' && ok "4-bit g64 bits/weight $bpw (4 + 32/64 + partial groups and padding)" || fail "bits/weight $bpw"

# SqueezeLLM Dense-and-Sparse: 0.45% outliers (one global rho over all ranks) + 0.05% Fisher.
DS=(--set quant.method=squeezellm --set requant.outlier_ratio=0.0045 --set requant.outlier_select=fixed
    --set requant.significant_ratio=0.0005 --set requant.significant_select=fisher)
"$bin" run "$job" --out "$tmp/ds1" "${DS[@]}" > "$tmp/log" 2>&1 || fail "squeezellm D&S np=1: $(tail -3 "$tmp/log")"
"$mpiexec" -np 2 "$bin" run "$job" --out "$tmp/ds2" "${DS[@]}" > "$tmp/log" 2>&1 || fail "squeezellm D&S np=2: $(tail -3 "$tmp/log")"
a=$(val "$tmp/ds1/results.json" "eval-tokens.safetensors"); b=$(val "$tmp/ds2/results.json" "eval-tokens.safetensors")
[ -n "$a" ] && [ "$a" = "$b" ] && ok "squeezellm D&S: perplexity $a for 1 and 2 ranks" || fail "D&S np=1 '$a' vs np=2 '$b'"
n=$(val "$tmp/ds1/results.json" linear_weights); o=$(val "$tmp/ds1/results.json" outliers); sg=$(val "$tmp/ds1/results.json" significant)
o2=$(val "$tmp/ds2/results.json" outliers)
awk -v o="$o" -v n="$n" 'BEGIN{t=int(0.0045*n); exit !(o <= t && o >= 0.95*t)}' && [ "$o" = "$o2" ] \
  && ok "outliers $o of $n weights (budget 0.45%: $(awk -v n="$n" 'BEGIN{print int(0.0045*n)}')), same on 2 ranks" || fail "outliers $o / $o2 of $n"
awk -v s="$sg" -v n="$n" 'BEGIN{exit !(s > 0.0004*n && s < 0.0006*n)}' && ok "significant (Fisher) $sg of $n" || fail "significant $sg of $n"
dq=$(val "$tmp/ds1/results.json" "eval-tokens.safetensors"); sq=$("$bin" run "$job" --out "$tmp/sq" --set quant.method=squeezellm > /dev/null 2>&1; val "$tmp/sq/results.json" "eval-tokens.safetensors")
awk -v d="$dq" -v s="$sq" 'BEGIN{exit !(d < s)}' && ok "Dense-and-Sparse perplexity $dq < dense-only $sq" || fail "D&S $dq not below dense-only $sq"

"$bin" run "$job" --out "$tmp/bad" --set quant.bitz=3 > "$tmp/log" 2>&1; rc=$?
[ $rc -ne 0 ] && grep -q "unknown key 'quant.bitz'" "$tmp/log" && ok "unknown key refused: $(grep error "$tmp/log")" || fail "bad key: rc $rc $(cat "$tmp/log")"
[ $fails -eq 0 ] && echo "all run checks passed" || echo "$fails run checks failed"
exit $((fails > 0))
