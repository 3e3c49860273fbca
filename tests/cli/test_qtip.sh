#!/usr/bin/env bash
# QTIP end to end on stories260k (its 172 is padded to 176 = 11 x 16: the Kronecker transform):
# - 2-bit HYB on 1 and 2 ranks gives byte-identical checkpoints, at fewer bits per weight and a
#   lower perplexity than GPTQ 2-bit g64 on the same data;
# - kill -9 in the middle of the quantize phase, resumed on 2 ranks: byte-identical checkpoint;
# - the bits: results.json's bits/weight is what the file holds, counted independently here
#   (K per padded weight, a sign bit per padded row and column, fp32 Wscale, and once per model
#   HYB's fp16 table and the fp64 Kronecker factor);
# - inspect reads it; export + eval gives the run's perplexity; launch/qtip_decode.py rebuilds
#   the weights from the file alone with h5py (HYB, 1MAD and 3INST) and matches the export;
# - ReQuant on QTIP (r_o = 0, 0.5% in 2 PQI steps): the trellis parts are the plain run's, bit
#   for bit, the sparse residual is added in the original basis, calibration perplexity drops;
# - bad QTIP keys are refused.
# Usage: test_qtip.sh PATH/TO/requant-dist REPO_ROOT PATH/TO/mpiexec
set -uo pipefail
bin=$1; root=$2; mpiexec=$3; job=$root/jobs/stories260k-gptq.toml
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source "$(dirname "$0")/check_lib.sh"
[ -d "$root/../shared/models" ] || { echo "FAIL: ../shared not found beside the checkout"; exit 1; }
data=$root/../shared/models/stories260k/eval-tokens.safetensors; key=eval-tokens.safetensors

Q=(--set data.calibration_seqs=8 --set quant.method=qtip --set quant.bits=2 --set quant.group_size=0
   --set quant.sequential=false)
run() {  # run NP OUT [args]
  local np=$1 out=$2; shift 2
  if [ "$np" = 1 ]; then "$bin" run "$job" --out "$out" "${Q[@]}" "$@" > "$tmp/log" 2>&1
  else "$mpiexec" -np "$np" --oversubscribe "$bin" run "$job" --out "$out" "${Q[@]}" "$@" > "$tmp/log" 2>&1
  fi || fail "run $np $out: $(tail -3 "$tmp/log")"
}
run 1 "$tmp/q1"; run 2 "$tmp/q2"
cmp -s "$tmp/q1/model.requant.h5" "$tmp/q2/model.requant.h5" \
  && ok "2-bit QTIP: the same checkpoint bytes on 1 and 2 ranks" || fail "1 and 2 ranks differ"
"$bin" run "$job" --out "$tmp/g" --set data.calibration_seqs=8 --set quant.bits=2 \
  --set quant.sequential=false > "$tmp/log" 2>&1 || fail "gptq: $(tail -3 "$tmp/log")"
pq=$(val "$tmp/q1/results.json" $key); pg=$(val "$tmp/g/results.json" $key)
bq=$(val "$tmp/q1/results.json" bits_per_weight); bg=$(val "$tmp/g/results.json" bits_per_weight)
awk -v a="$pq" -v b="$pg" -v x="$bq" -v y="$bg" 'BEGIN{exit !(a < b && x < y)}' \
  && ok "QTIP 2-bit: perplexity $pq at $bq bits/weight; GPTQ 2-bit g64: $pg at $bg" \
  || fail "QTIP $pq at $bq is not below GPTQ $pg at $bg"

# Killed while quantizing (some layer files written, not all), resumed on 2 ranks.
"$bin" run "$job" --out "$tmp/k" "${Q[@]}" > "$tmp/log" 2>&1 & pid=$!
for _ in $(seq 600); do [ -f "$tmp/k/layers/layer-001.h5" ] && break; sleep 0.1; done
kill -9 $pid 2> /dev/null; wait $pid 2> /dev/null
n=$(ls "$tmp/k/layers" 2> /dev/null | grep -c '^layer-...\.h5$')
[ "$n" -ge 1 ] && [ "$n" -lt 5 ] && ok "killed in quantize with $n of 5 layer files" \
  || fail "the kill did not land in quantize ($n layer files)"
run 2 "$tmp/k"
cmp -s "$tmp/q1/model.requant.h5" "$tmp/k/model.requant.h5" \
  && ok "resumed after the kill: the uninterrupted run's checkpoint, byte for byte" || fail "resumed checkpoint differs"

# The bits, counted from the file's shapes here, against results.json.
/usr/bin/python3 - "$tmp/q1/model.requant.h5" "$tmp/q1/results.json" <<'PY' \
  && ok "bits/weight = file contents: K per padded weight + signs + Wscale, table and factor once" \
  || fail "bits/weight does not match the file"
import h5py, json, sys
f = h5py.File(sys.argv[1], "r"); r = json.load(open(sys.argv[2]))
bits = weights = 0
for l in f["layers"]:
    for name, g in f["layers"][l].items():
        if name == "errors": continue
        nr, nc, w = g["trellis"].shape
        assert w == 32 * 2 and g["signs_rows"].shape[0] == (nr * 16 + 7) // 8
        bits += (nr * 16) * (nc * 16) * 2 + nr * 16 + nc * 16 + 32
        weights += int(g.attrs["rows"]) * int(g.attrs["cols"])
assert f.attrs["qtip_code"] in ("hyb", b"hyb") and list(f["qtip/factors"]) == ["11"]
bits += f["qtip/lut"].size * 16 + f["qtip/factors/11"].size * 64
print("counted %.6f, results %.6f" % (bits / weights, r["bits_per_weight"]))
sys.exit(0 if abs(bits / weights - r["bits_per_weight"]) < 1e-9 and weights == r["linear_weights"] else 1)
PY

"$bin" inspect "$tmp/q1/model.requant.h5" > "$tmp/inspect" 2>&1 && grep -q "qtip 2-bit" "$tmp/inspect" \
  && ok "inspect: $(tail -1 "$tmp/inspect" | cut -c1-80)" || fail "inspect: $(tail -3 "$tmp/inspect")"
"$bin" export "$tmp/q1" --out "$tmp/hf" > "$tmp/log" 2>&1 || fail "export: $(tail -3 "$tmp/log")"
e=$("$bin" eval --model "$tmp/hf" --data "$data" --batch 4 2>&1 | grep -o 'perplexity [0-9.]*' | cut -d' ' -f2)
[ "$e" = "$(printf '%.4f' "$pq")" ] && ok "export + eval: perplexity $e, the run's" || fail "export eval $e, run $pq"
for lin in q_proj down_proj gate_proj; do
  "$root/launch/qtip_decode.py" "$tmp/q1/model.requant.h5" 3 $lin --compare "$tmp/hf" > "$tmp/log" 2>&1 \
    || fail "qtip_decode.py hyb $lin: $(tail -2 "$tmp/log")"
done
for code in 1mad 3inst; do
  run 1 "$tmp/$code" --set quant.bits=3 --set quant.qtip_code=$code --set data.eval_max_seqs=4
  "$bin" export "$tmp/$code" --out "$tmp/hf-$code" > "$tmp/log" 2>&1 || fail "export $code"
  "$root/launch/qtip_decode.py" "$tmp/$code/model.requant.h5" 0 up_proj --compare "$tmp/hf-$code" > "$tmp/log" 2>&1 \
    || fail "qtip_decode.py $code: $(tail -2 "$tmp/log")"
done
[ $fails = 0 ] && ok "h5py alone rebuilds QTIP weights equal to the export (hyb, 1mad, 3inst)"

# ReQuant on QTIP, the paper's recipe (N = 4 here for time).
run 2 "$tmp/rq" --set requant.significant_ratio=0.005 --set requant.step_ratio=0.0025 \
  --set requant.significant_select=pqi --set sensitivity.nodes=4
n=$(val "$tmp/rq/results.json" linear_weights); s=$(val "$tmp/rq/results.json" significant)
awk -v s="$s" -v n="$n" 'BEGIN{exit !(s == 2*int(0.0025*n+0.5))}' \
  && ok "QTIP+ReQuant: $s significant weights = 2 steps of 0.25% of $n" || fail "significant $s of $n"
/usr/bin/python3 - "$tmp/q1/model.requant.h5" "$tmp/rq/model.requant.h5" <<'PY' \
  && ok "QTIP+ReQuant: the trellis parts are the plain run's, bit for bit; the residual is sparse" \
  || fail "the dense parts moved under ReQuant"
import h5py, numpy as np, sys
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r"); nnz = 0
for l in a["layers"]:
    for name in a["layers"][l]:
        if name == "errors": continue
        ga, gb = a["layers"][l][name], b["layers"][l][name]
        for d in ("trellis", "signs_rows", "signs_cols"):
            assert np.array_equal(ga[d][...], gb[d][...]), (l, name, d)
        assert ga.attrs["wscale"] == gb.attrs["wscale"]
        nnz += gb["significant/indices"].shape[0] if "significant" in gb else 0
assert nnz > 0
PY
c0=$(val "$tmp/q1/results.json" calibration); c1=$(val "$tmp/rq/results.json" calibration)
awk -v a="$c1" -v b="$c0" 'BEGIN{exit !(a < b)}' \
  && ok "QTIP+ReQuant: calibration perplexity $c0 -> $c1 (held-out $pq -> $(val "$tmp/rq/results.json" $key))" \
  || fail "calibration perplexity $c0 -> $c1"

for bad in "quant.bits=5" "quant.group_size=128" "quant.sequential=true" "quant.qtip_code=hyc" "quant.qtip_seed=-1"; do
  "$bin" run "$job" --out "$tmp/bad" "${Q[@]}" --set "$bad" > "$tmp/log" 2>&1 \
    && fail "$bad was accepted" || grep -q "quant\.[a-z_]*'" "$tmp/log" || fail "$bad: $(tail -1 "$tmp/log")"
done
[ ! -e "$tmp/bad" ] && ok "bad QTIP keys refused before any work" || fail "a refused job left $tmp/bad"
echo "$fails failure(s)"; [ $fails = 0 ]
