#!/usr/bin/env bash
# Checkpoints and resume on stories260k (SqueezeLLM + adaptive outliers + 2 PQI detach rounds):
# - the kill harness: kill -9 one rank or all ranks at RQ_KILLS (default 20) random moments,
#   resuming each time on a random rank count (1, 2 or 3); the final model.requant.h5 equals
#   the uninterrupted run's byte for byte, and the kills landed in several phases;
# - a truncated or bit-flipped layer file is redone; a second run on a folder in use, a
#   damaged run.h5, a folder made for another job and one written by an older version are
#   refused with a clear message;
#   --restart starts over;
# - h5dump and h5py read the checkpoint; inspect summarises it; export + eval gives the run's
#   perplexity, from one file or from shards with an index.
# Usage: test_resume.sh PATH/TO/requant-dist REPO_ROOT PATH/TO/mpiexec  (RQ_KILL_SEED, RQ_KILLS)
set -uo pipefail
bin=$1; root=$2; mpiexec=$3; job=$root/jobs/stories260k-gptq.toml
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source "$(dirname "$0")/check_lib.sh"
[ -d "$root/../shared/models" ] || { echo "FAIL: ../shared not found beside the checkout"; exit 1; }
command -v h5dump > /dev/null || { echo "FAIL: h5dump not found (apt-get install hdf5-tools)"; exit 1; }
seed=${RQ_KILL_SEED:-$(date +%s)}; kills=${RQ_KILLS:-20}; RANDOM=$seed
echo "kill seed $seed ($kills kills; RQ_KILL_SEED=$seed reproduces the moments)"

RQ=(--set data.calibration_seqs=8 --set sensitivity.nodes=4 --set quant.sequential=false
    --set quant.method=squeezellm --set requant.outlier_ratio=0.0045 --set requant.outlier_select=adaptive
    --set requant.significant_ratio=0.0005 --set requant.step_ratio=0.00025 --set requant.significant_select=pqi)
launch() {  # launch NP OUT [args]: one run in the background, its pid in $pid
  local np=$1 out=$2; shift 2
  if [ "$np" = 1 ]; then "$bin" run "$job" --out "$out" "${RQ[@]}" "$@" > "$tmp/log" 2>&1 &
  else "$mpiexec" -np "$np" --oversubscribe "$bin" run "$job" --out "$out" "${RQ[@]}" "$@" > "$tmp/log" 2>&1 &
  fi
  pid=$!
}
order=(prepare baseline quantize detach-1 detach-2 detach evaluate assemble)
idx() { local i; for i in "${!order[@]}"; do [ "${order[$i]}" = "$1" ] && { echo $i; return; }; done; echo -1; }
phase_of() {  # the last phase run.h5 records as done ('none' without a run.h5)
  local names last=none p
  names=$(h5dump -a /log "$1/run.h5" 2>/dev/null | tr -d '\\' | grep -o '"done":{[^}]*}' \
    | grep -o '"[a-z0-9-]*":' | tr -d '":')
  for p in "${order[@]}"; do echo "$names" | grep -qx -- "$p" && last=$p; done
  echo $last
}

# The uninterrupted reference, and how long it takes.
t0=$(date +%s.%N)
launch 2 "$tmp/ref"; wait $pid || fail "reference run: $(tail -3 "$tmp/log")"
dur=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}')
ref=$tmp/ref/model.requant.h5
[ -f "$ref" ] && ok "reference run: $dur s on 2 ranks" || { fail "no reference checkpoint"; exit 1; }

# Kills at random moments over the whole run, each resume on 1-3 ranks picking up where the
# last one died. A run that finishes before its kill ends a chain: its checkpoint must equal
# the reference, and a new chain starts from an empty folder.
declare -A seen=(); chains=0; k=0
while [ $k -lt $kills ]; do
  np=$((1 + RANDOM % 3)); what=$((RANDOM % 2))
  if [ $((k % 2)) = 0 ]; then  # a moment anywhere in the run
    at=$(awk -v r=$RANDOM -v d="$dur" 'BEGIN{printf "%.2f", 0.3 + (r / 32767) * d}')
    launch $np "$tmp/run"; sleep "$at"
  else  # a moment soon after a random phase ends (short phases get their share too)
    target=${order[$(( (k / 2) % ${#order[@]} ))]}  # each phase in turn, or the next one
    # A chain already past the target starts over, so that the early phases get their kills.
    [ "$(idx "$(phase_of "$tmp/run")")" -ge "$(idx $target)" ] && rm -rf "$tmp/run"
    # Within 50 ms of the phase's end: the phases after the detach rounds take tens of ms
    # on stories260k, and a later kill would land after all of them.
    at=$(awk -v r=$RANDOM 'BEGIN{printf "%.3f", (r / 32767) * 0.05}')
    launch $np "$tmp/run"
    while kill -0 $pid 2> /dev/null && [ "$(idx "$(phase_of "$tmp/run")")" -lt "$(idx $target)" ]; do
      sleep 0.05
    done
    sleep "$at"; at="end of $target + $at"
  fi
  if ! kill -0 $pid 2> /dev/null; then  # finished first
    wait $pid || fail "chain $chains: the run failed: $(tail -3 "$tmp/log")"
    chains=$((chains + 1))
    cmp -s "$ref" "$tmp/run/model.requant.h5" || fail "chain $chains: checkpoint differs from the reference"
    echo "chain $chains finished and equals the reference"
    rm -rf "$tmp/run"; continue
  fi
  k=$((k + 1))
  if [ "$what" = 0 ] || [ "$np" = 1 ]; then  # all ranks
    pkill -9 -P $pid 2> /dev/null; kill -9 $pid 2> /dev/null; how="all ranks"
  else                                        # one rank; mpirun ends the others
    victim=$(pgrep -P $pid -f requant-dist | head -$((1 + RANDOM % 2)) | tail -1); how="one rank"
    [ -n "$victim" ] && kill -9 "$victim" 2> /dev/null
  fi
  wait $pid 2> /dev/null; pkill -9 -f "$tmp/run" 2> /dev/null
  p=$(phase_of "$tmp/run"); seen[$p]=1
  echo "kill $k: $how of $np at ${at} s, after phase '$p'"
done
launch $((1 + RANDOM % 3)) "$tmp/run"; wait $pid || fail "final resume: $(tail -3 "$tmp/log")"
cmp -s "$ref" "$tmp/run/model.requant.h5" \
  && ok "$kills kills in $((chains + 1)) chains of resumes on 1-3 ranks: every checkpoint equals the uninterrupted run's byte for byte" \
  || fail "resumed checkpoint differs from the reference"
[ "${#seen[@]}" -ge 6 ] && ok "kills landed after ${#seen[@]} different phases: ${!seen[*]}" \
  || fail "kills landed after only ${#seen[@]} phases (${!seen[*]}): not spread over the run"
grep -q "resuming" "$tmp/log" && ok "the last run said it was resuming" || fail "no 'resuming' line"

# run.h5 lost, one layer file cut short and one with a flipped bit inside its codes: the run
# starts again, reuses the sound layer files, finds the two damaged ones and redoes them.
cp -r "$tmp/ref" "$tmp/dmg"; rm "$tmp/dmg/run.h5" "$tmp/dmg/model.requant.h5"
f=$tmp/dmg/layers/layer-002.h5; head -c $(( $(stat -c %s "$f") / 2 )) "$tmp/ref/layers/layer-002.h5" > "$f"
g=$tmp/dmg/layers/layer-003.h5
off=$(h5dump -p -H -d /linears/down_proj/codes "$g" | sed -n 's/ *OFFSET \([0-9]*\)/\1/p')
python3 -c "
import sys; p, o = sys.argv[1], int(sys.argv[2]) + 100
b = bytearray(open(p, 'rb').read()); b[o] ^= 0x04; open(p, 'wb').write(b)" "$g" "$off"
launch 1 "$tmp/dmg"; wait $pid || fail "run over damaged layer files: $(tail -3 "$tmp/log")"
grep -q "layer-002.h5: damaged" "$tmp/log" && grep -q "layer-003.h5: damaged.*checksum mismatch" "$tmp/log" \
  && ok "a truncated and a bit-flipped layer file were found and redone" \
  || fail "damaged layer files not reported: $(grep damaged "$tmp/log" | head -2)"
cmp -s "$ref" "$tmp/dmg/model.requant.h5" && ok "the checkpoint after redoing them equals the reference" \
  || fail "checkpoint after damaged layers differs"

# One run per folder: a second run on a folder in use is refused at once, naming the holder,
# and the first goes on to the reference's checkpoint.
launch 1 "$tmp/busy"; first=$pid
for i in $(seq 1 200); do [ -s "$tmp/busy/run.lock" ] && break; sleep 0.05; done
"$bin" run "$job" --out "$tmp/busy" "${RQ[@]}" > "$tmp/log2" 2>&1; rc=$?
kill -0 $first 2> /dev/null; alive=$?
[ $rc -ne 0 ] && [ $alive = 0 ] && grep -q "is in use by another requant-dist run (host .* pid $first since" "$tmp/log2" \
  && ok "a second run on a folder in use refused: $(grep -o 'is in use.*pid [0-9]*' "$tmp/log2" | head -1)" \
  || fail "second run on a busy folder: rc $rc, first alive $alive: $(tail -2 "$tmp/log2")"
wait $first && cmp -s "$ref" "$tmp/busy/model.requant.h5" && ok "the first run finished as the reference" \
  || fail "the first run after the refused second: $(tail -3 "$tmp/log")"

# A damaged run.h5 and another job's folder are refused; --restart starts over.
cp -r "$tmp/ref" "$tmp/bad"; head -c 2000 "$tmp/ref/run.h5" > "$tmp/bad/run.h5"
"$bin" run "$job" --out "$tmp/bad" "${RQ[@]}" > "$tmp/log" 2>&1; rc=$?
[ $rc -ne 0 ] && grep -q "is damaged; start over with --restart" "$tmp/log" \
  && ok "damaged run.h5 refused: $(grep -o 'the run state.*' "$tmp/log" | head -1)" || fail "damaged run.h5: rc $rc"
"$bin" run "$job" --out "$tmp/ref" "${RQ[@]}" --set quant.bits=3 > "$tmp/log" 2>&1; rc=$?
[ $rc -ne 0 ] && grep -q "holds a run of another job (the job differ)" "$tmp/log" \
  && ok "a folder made for another job refused" || fail "foreign folder: rc $rc $(tail -2 "$tmp/log")"
# A folder written by requant-dist before run state 2 (whose job fingerprint left out
# quant.awq_samples) is refused with a message that says so, never mixed.
cp -r "$tmp/ref" "$tmp/old"
/usr/bin/python3 -c "
import sys, h5py
with h5py.File(sys.argv[1], 'r+') as f: f.attrs['format'] = 'requant-dist run state 1'" "$tmp/old/run.h5"
"$bin" run "$job" --out "$tmp/old" "${RQ[@]}" > "$tmp/log" 2>&1; rc=$?
[ $rc -ne 0 ] && grep -q "holds a run made by an older requant-dist (requant-dist run state 1)" "$tmp/log" \
  && ok "a folder of an older version refused: $(grep -o 'made by an older.*' "$tmp/log" | head -1 | cut -c1-60)" \
  || fail "older folder: rc $rc $(tail -2 "$tmp/log")"
"$bin" run "$job" --out "$tmp/bad" "${RQ[@]}" --restart > "$tmp/log" 2>&1 && cmp -s "$ref" "$tmp/bad/model.requant.h5" \
  && ok "--restart starts over and gives the same checkpoint" || fail "--restart: $(tail -2 "$tmp/log")"

# The checkpoint: h5dump, inspect, export + eval.
h5dump -H "$ref" > "$tmp/h5" 2>&1 && grep -q 'GROUP "000"' "$tmp/h5" && grep -q 'DATASET "codes"' "$tmp/h5" \
  && grep -q 'GROUP "significant"' "$tmp/h5" && ok "h5dump reads model.requant.h5 (layers, codes, sparse parts)" \
  || fail "h5dump: $(head -3 "$tmp/h5")"
/usr/bin/python3 - "$ref" <<'PY' && ok "h5py reads it: fp16 LUTs and sparse values, packed codes, the other tensors" || fail "h5py cannot read model.requant.h5"
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
q = f["layers/000/q_proj"]
assert q["lut"].dtype == np.float16 and q["codes"].dtype == np.int32, (q["lut"].dtype, q["codes"].dtype)
assert q["codes"].shape == (q.attrs["rows"], (q.attrs["cols"] * q.attrs["bits"] + 31) // 32)
assert q["outliers/values"].dtype == np.float16 and len(q["outliers/indices"]) == len(q["outliers/values"])
assert "model.embed_tokens.weight" in f["tensors"] and f.attrs["n_layer"] == 5
PY
"$bin" inspect "$ref" > "$tmp/insp" && grep -q "^total: .* bits/weight" "$tmp/insp" \
  && ok "inspect: $(grep '^total' "$tmp/insp" | cut -c1-90)" || fail "inspect: $(cat "$tmp/insp")"
"$bin" inspect "$ref" --json > "$tmp/insp.json" && python3 -c "
import json, sys
s = json.load(open(sys.argv[1])); r = json.load(open(sys.argv[2]))
assert len(s['layers']) == 5, 'layers'
assert abs(s['bits_per_weight'] - r['bits_per_weight']) < 1e-9, (s['bits_per_weight'], r['bits_per_weight'])
assert s['outliers'] == r['requant']['outliers'] and s['significant'] == r['requant']['significant']
" "$tmp/insp.json" "$tmp/ref/results.json" && ok "inspect --json agrees with results.json (bits/weight, sparse counts)" \
  || fail "inspect --json disagrees with results.json"
"$bin" inspect "$tmp/ref/run.h5" > "$tmp/log" 2>&1; rc=$?
[ $rc -ne 0 ] && grep -q "not a requant-dist checkpoint" "$tmp/log" && ok "inspect refuses a file that is not a checkpoint" \
  || fail "inspect on run.h5: rc $rc"
# The same computation as the run's evaluation: the same weights (f32 export of W_hat) and the
# same batch shapes (--batch = run.microbatch) and threads, so the two agree bit for bit on any
# BLAS kernel (a GEMM's rounding may depend on the number of rows it is given).
mb=$(val "$tmp/ref/results.json" microbatch); th=$(val "$tmp/ref/results.json" threads)
"$bin" export "$tmp/ref" --out "$tmp/hf" > /dev/null 2>&1 \
  && "$bin" eval --model "$tmp/hf" --data "$root/../shared/models/stories260k/eval-tokens.safetensors" \
       --batch "$mb" --threads "$th" --json "$tmp/e.json" > /dev/null 2>&1
a=$(val "$tmp/e.json" perplexity); b=$(val "$tmp/ref/results.json" eval-tokens.safetensors)
[ -n "$a" ] && awk -v a="$a" -v b="$b" 'BEGIN{exit !(a == b)}' \
  && ok "export (f32) + eval: perplexity $a = the run's $b" || fail "export perplexity '$a' vs run '$b'"
"$bin" export "$tmp/ref" --out "$tmp/hf2" --max-shard-size 200KB > /dev/null 2>&1 \
  && "$bin" eval --model "$tmp/hf2" --data "$root/../shared/models/stories260k/eval-tokens.safetensors" \
       --batch "$mb" --threads "$th" --json "$tmp/e2.json" > /dev/null 2>&1
n=$(ls "$tmp/hf2" | grep -c -- '-of-'); c=$(val "$tmp/e2.json" perplexity)
[ -f "$tmp/hf2/model.safetensors.index.json" ] && [ "$n" -gt 1 ] && [ "$c" = "$a" ] \
  && ok "export --max-shard-size 200KB: $n shards with an index, eval gives the same $c" \
  || fail "sharded export: $n shards, perplexity '$c' vs '$a'"
[ $fails -eq 0 ] && echo "all resume checks passed" || echo "$fails resume checks failed"
exit $((fails > 0))
