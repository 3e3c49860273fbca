#!/usr/bin/env bash
# ReQuant end to end on stories260k: SqueezeLLM + self-adaptive outliers (Alg. 1) + step-wise
# PQI detach (Alg. 2) gives the same numbers on 1, 2 and 3 ranks, meets its budgets exactly,
# beats dense-only SqueezeLLM; AWQ, GPTQ (sequential) and RTN take adaptive outliers; random
# selection and one-step detach run; the held-out stop; bad ReQuant keys are refused; the run
# report and the per-linear errors in results.json and inspect.
# Usage: test_requant.sh PATH/TO/requant-dist REPO_ROOT PATH/TO/mpiexec
set -uo pipefail
bin=$1; root=$2; mpiexec=$3; job=$root/jobs/stories260k-gptq.toml
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source "$(dirname "$0")/check_lib.sh"
[ -d "$root/../shared/models" ] || { echo "FAIL: ../shared not found beside the checkout"; exit 1; }

base=(--set data.calibration_seqs=8 --set sensitivity.nodes=4 --set quant.sequential=false)
RQ=("${base[@]}" --set quant.method=squeezellm --set requant.outlier_ratio=0.0045
    --set requant.outlier_select=adaptive --set requant.significant_ratio=0.0005
    --set requant.step_ratio=0.00025 --set requant.significant_select=pqi)
"$bin" run "$job" --out "$tmp/r1" "${RQ[@]}" > "$tmp/log" 2>&1 || fail "np=1: $(tail -3 "$tmp/log")"
"$mpiexec" -np 2 "$bin" run "$job" --out "$tmp/r2" "${RQ[@]}" > "$tmp/log" 2>&1 || fail "np=2: $(tail -3 "$tmp/log")"
"$mpiexec" -np 3 --oversubscribe "$bin" run "$job" --out "$tmp/r3" "${RQ[@]}" > "$tmp/log" 2>&1 || fail "np=3: $(tail -3 "$tmp/log")"
key=eval-tokens.safetensors
p1=$(val "$tmp/r1/results.json" $key); p2=$(val "$tmp/r2/results.json" $key); p3=$(val "$tmp/r3/results.json" $key)
[ -n "$p1" ] && [ "$p1" = "$p2" ] && [ "$p1" = "$p3" ] && ok "squeezellm+ReQuant: perplexity $p1 on 1, 2 and 3 ranks" || fail "np 1/2/3: '$p1' '$p2' '$p3'"
for f in outliers significant; do
  a=$(val "$tmp/r1/results.json" "$f"); b=$(val "$tmp/r3/results.json" "$f")
  [ "$a" = "$b" ] || fail "$f count differs: $a vs $b"
done
n=$(val "$tmp/r1/results.json" linear_weights); o=$(val "$tmp/r1/results.json" outliers)
s=$(val "$tmp/r1/results.json" significant); bud=$(val "$tmp/r1/results.json" budget)
awk -v o="$o" -v b="$bud" -v n="$n" 'BEGIN{exit !(b == int(0.0045*n) && o <= b && o >= 0.95*b)}' \
  && ok "adaptive outliers $o within the budget $bud (0.45% of $n)" || fail "outliers $o, budget $bud, n $n"
awk -v s="$s" -v n="$n" 'BEGIN{w=2*int(0.00025*n+0.5); exit !(s == w)}' \
  && ok "significant weights $s = 2 rounds of 0.025% of $n" || fail "significant $s of $n"
grep -q '"rounds": 2' "$tmp/r1/results.json" && grep -q '"per_linear"' "$tmp/r1/results.json" \
  && ok "results.json: detach rounds and per-linear outlier ratios" || fail "results.json lacks the ReQuant report"
# The run report: summary.md and the plots; per linear in results.json the errors before and
# after the sparse parts (Alg. 1's base-alone objective among them), bits and counts; inspect
# shows them from the checkpoint alone.
for f in summary.md errors.png sparse.png detach.png perplexity.png linears.csv; do
  [ -s "$tmp/r2/report/$f" ] || fail "report: $f missing"
done
/usr/bin/python3 - "$tmp/r2/results.json" <<'PY' && ok "results.json linears: 35 records, errors drop with the sparse parts" || fail "results.json linears"
import json, sys
r = json.load(open(sys.argv[1])); lin = r["linears"]
assert len(lin) == 35, len(lin)  # 5 layers x 7 linears
for l in lin:
    e = l["errors"]
    assert e["objective"] <= e["objective_dense"] and e["objective_base"] > 0, l
    assert l["dense_bits"] > 0 and l["outliers"] >= 0 and l["significant"] >= 0, l
    assert l["sparse_bits"] == l["outlier_bits"] + l["significant_bits"], l
assert sum(l["outliers"] for l in lin) == r["requant"]["outliers"]
assert sum(l["significant"] for l in lin) == r["requant"]["significant"]
PY
"$bin" inspect "$tmp/r2/model.requant.h5" > "$tmp/insp" 2>&1 && grep -qE "^ +0 .* weight [0-9.e+-]+ -> [0-9.e+-]+$" "$tmp/insp" \
  && ok "inspect: per-layer errors from the checkpoint ($(grep -oE 'weight [0-9.e+-]+ -> [0-9.e+-]+$' "$tmp/insp" | head -1))" \
  || fail "inspect errors: $(head -4 "$tmp/insp")"

"$bin" run "$job" --out "$tmp/dense" "${base[@]}" --set quant.method=squeezellm > /dev/null 2>&1
d=$(val "$tmp/dense/results.json" $key)
awk -v a="$p1" -v d="$d" 'BEGIN{exit !(a < d)}' && ok "ReQuant perplexity $p1 < dense-only $d" || fail "ReQuant $p1 not below dense-only $d"

# Other base methods, random selection, one step.
for spec in "awq --set quant.group_size=128" "gptq --set quant.sequential=true" "rtn"; do
  set -- $spec; m=$1; shift
  "$bin" run "$job" --out "$tmp/$m" "${base[@]}" --set quant.method=$m "$@" --set requant.outlier_ratio=0.0025 \
    --set requant.outlier_select=adaptive > "$tmp/log" 2>&1 && grep -q '"select": "adaptive"' "$tmp/$m/results.json" \
    && ok "$m + adaptive outliers: ppl $(val "$tmp/$m/results.json" $key), outliers $(val "$tmp/$m/results.json" outliers)" \
    || fail "$m + adaptive: $(tail -3 "$tmp/log")"
done
# AWQ's folded form in the checkpoint: the norms divided by the input scales they feed, and
# down's input scale carried by up's rows (stories260k is GQA: o_proj has none).
/usr/bin/python3 - "$tmp/awq/model.requant.h5" > "$tmp/fold.out" 2>&1 <<'PY' && ok "awq: $(cat "$tmp/fold.out")" || fail "awq folded norms: $(cat "$tmp/fold.out")"
import h5py, numpy as np, sys
f = h5py.File(sys.argv[1], "r")
n = int(f.attrs["n_layer"])
for l in range(n):
    g = f["layers/%03d" % l]
    for lin, norm in (("q_proj", "input_layernorm"), ("gate_proj", "post_attention_layernorm")):
        name = "model.layers.%d.%s.weight" % (l, norm)
        want = f["tensors/" + name][()].astype(np.float32) / g[lin + "/in_scale"][()].astype(np.float32)
        assert np.array_equal(f["folded/" + name][()], want), name
    assert np.array_equal(g["up_proj/out_scale"][()], g["down_proj/in_scale"][()]), l
    assert "o_proj/in_scale" not in g and "v_proj/out_scale" not in g, l
print("folded norms of %d layers, up_proj rows carry down_proj's scale" % n)
PY
"$bin" run "$job" --out "$tmp/rand" "${base[@]}" --set quant.method=squeezellm --set requant.outlier_ratio=0.0045 \
  --set requant.outlier_select=random --set requant.significant_ratio=0.0005 --set requant.significant_select=random \
  > "$tmp/log" 2>&1 && awk -v s="$(val "$tmp/rand/results.json" significant)" 'BEGIN{exit !(s > 0)}' \
  && ok "random selection: ppl $(val "$tmp/rand/results.json" $key)" || fail "random: $(tail -3 "$tmp/log")"

# The held-out stop: 2 of the 8 calibration sequences held out; the same on 1 and 2 ranks; every
# round's held-out loss recorded, and a kept round lowers it.
HO=("${RQ[@]}" --set requant.holdout=0.25)
"$bin" run "$job" --out "$tmp/ho1" "${HO[@]}" > "$tmp/log" 2>&1 || fail "holdout np=1: $(tail -3 "$tmp/log")"
grep -q "calibration 6 x" "$tmp/log" && ok "holdout: 6 of 8 calibration sequences fitted on" || fail "holdout: no 6-sequence calibration"
"$mpiexec" -np 2 "$bin" run "$job" --out "$tmp/ho2" "${HO[@]}" > "$tmp/log" 2>&1 || fail "holdout np=2: $(tail -3 "$tmp/log")"
/usr/bin/python3 - "$tmp/ho1/results.json" "$tmp/ho2/results.json" > "$tmp/ho.out" 2>&1 <<'PY'   && ok "holdout: $(cat "$tmp/ho.out")" || fail "holdout report: $(cat "$tmp/ho.out")"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
ra, rb = a["requant"], b["requant"]
assert ra["detach"]["pqi"] == rb["detach"]["pqi"] and ra["significant"] == rb["significant"], "1 vs 2 ranks"
f = ra["holdout_start"]
rounds = ra["detach"]["pqi"]
assert rounds and all("f_holdout" in r and "kept" in r for r in rounds), rounds
for r in rounds:
    assert r["kept"] == (r["f_holdout"] < f), r
    if not r["kept"]:
        assert r is rounds[-1], "a round after an undone one"
        break
    f = r["f_holdout"]
print("held-out loss %.5f -> %s, the same on 1 and 2 ranks" % (ra["holdout_start"],
      ", ".join("%.5f (%s)" % (r["f_holdout"], "kept" if r["kept"] else "undone") for r in rounds)))
PY

"$bin" run "$job" --out "$tmp/bad" --set requant.significant_ratio=0.0001 --set requant.step_ratio=0.001 > "$tmp/log" 2>&1; rc=$?
[ $rc -ne 0 ] && grep -q "step_ratio' must not exceed" "$tmp/log" && ok "step_ratio > significant_ratio refused" || fail "bad step_ratio: rc $rc"
"$bin" run "$job" --out "$tmp/bad" --set "requant.outlier_candidates=[1, 2]" > "$tmp/log" 2>&1; rc=$?
[ $rc -ne 0 ] && grep -q "must start with 0" "$tmp/log" && ok "outlier_candidates without 0 refused" || fail "bad candidates: rc $rc"
[ $fails -eq 0 ] && echo "all requant checks passed" || echo "$fails requant checks failed"
exit $((fails > 0))
