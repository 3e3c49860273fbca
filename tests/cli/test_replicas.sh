#!/usr/bin/env bash
# Data-parallel replicas (run.replicas) on stories260k, GPTQ 4-bit (all layers at once) + two
# PQI detach rounds:
# - with R = 2 replicas, 1 and 2 stages (2 and 4 ranks) write the same checkpoint byte for byte,
#   for one-pass GPTQ + PQI, sequential GPTQ, AWQ (sampled inputs) and SqueezeLLM with Fisher
#   significant weights and fixed outliers;
# - a run stopped after quantize on 2 ranks resumes on 4 ranks to the same checkpoint;
# - R = 1 against R = 2: perplexities, F(w), F(w~) and sum PQI within 1e-6 relative; the
#   checkpoint datasets that differ (GPTQ rounding or top-k at ties) are counted and printed;
# - a rank count that R does not divide, and fewer calibration microbatches than replicas, are
#   refused with one clear message;
# - results.json "load" has every rank's compute, sums over replicas and bytes sent;
# - the sensitivity study gives the same numbers and PQI files for 1 and 2 stages at R = 2;
#   plan reads --ranks as replicas x stages.
# Usage: test_replicas.sh PATH/TO/requant-dist REPO_ROOT PATH/TO/mpiexec
set -uo pipefail
bin=$1; root=$2; mpiexec=$3; job=$root/jobs/stories260k-gptq.toml
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source "$(dirname "$0")/check_lib.sh"
[ -d "$root/../shared/models" ] || { echo "FAIL: ../shared not found beside the checkout"; exit 1; }
command -v h5diff > /dev/null || { echo "FAIL: h5diff not found (apt-get install hdf5-tools)"; exit 1; }

PQI=(--set quant.sequential=false --set run.threads=1 --set requant.significant_ratio=0.0005
     --set requant.step_ratio=0.00025 --set requant.significant_select=pqi --set sensitivity.nodes=2)
run() {  # run NP OUT ARGS...: one run, its log in OUT.log
  local np=$1 out=$2; shift 2
  if [ "$np" = 1 ]; then "$bin" run "$job" --out "$out" "$@" > "$out.log" 2>&1
  else "$mpiexec" -np "$np" --oversubscribe "$bin" run "$job" --out "$out" "$@" > "$out.log" 2>&1
  fi || fail "run -np $np $*: $(tail -3 "$out.log")"
}
same_for_stages() {  # same_for_stages NAME ARGS...: R = 2 on 2 and 4 ranks, the same bytes
  local name=$1; shift
  run 2 "$tmp/$name-s1" --set run.replicas=2 "$@"
  run 4 "$tmp/$name-s2" --set run.replicas=2 "$@"
  cmp -s "$tmp/$name-s1/model.requant.h5" "$tmp/$name-s2/model.requant.h5" \
    && ok "$name: 2 replicas x 1 and x 2 stages, the same checkpoint" \
    || fail "$name: 2 replicas x 1 and x 2 stages differ"
}

same_for_stages gptq-pqi "${PQI[@]}"
grep -q "2 replica(s) x 2 stage(s)" "$tmp/gptq-pqi-s2.log" && ok "the layout is printed" \
  || fail "no layout line in the log"
/usr/bin/python3 - "$tmp/gptq-pqi-s2/results.json" <<'PY' && ok "results.json load: 4 ranks per phase, compute and sums over replicas counted" || fail "results.json load"
import json, sys
load = json.load(open(sys.argv[1]))["load"]
d = load["detach-1"]  # the first round; "detach" marks only the end of the phase
assert sorted(x["rank"] for x in d) == [0, 1, 2, 3], d
assert sorted((x["replica"], x["stage"]) for x in d) == [(0, 0), (0, 1), (1, 0), (1, 1)], d
assert all(x["cpu_s"] > 0 and x["reductions"] > 0 and x["reduced_bytes"] > 0 for x in d), d
assert all(x["sent_bytes"] > 0 for x in d), d  # activations or gradients to the other stage
print("   detach round 1, rank 0:", d[0])
PY
same_for_stages gptq-sequential --set quant.sequential=true --set run.threads=1
same_for_stages awq --set quant.method=awq --set quant.group_size=32 --set run.threads=1
same_for_stages squeezellm-ds --set quant.method=squeezellm --set run.threads=1 \
  --set requant.outlier_ratio=0.0045 --set requant.outlier_select=fixed \
  --set requant.significant_ratio=0.0005 --set requant.significant_select=fisher

# The sensitivity study (PQI, Taylor terms) with 2 replicas: the same numbers for 1 and 2
# stages, and the per-weight PQI files written once.
SE=(--set quant.method=rtn --set data.calibration_seqs=4 --set run.microbatch=1 --set sensitivity.nodes=4
    --set run.replicas=2 --set run.threads=1)
study() { awk '/^  "sensitivity": \{/,/^  \},?$/' "$1" | grep -v -e "$tmp" -e '"plots"' -e '\.png"' -e '^ *\],\?$' ; }
"$mpiexec" -np 2 --oversubscribe "$bin" sensitivity "$job" --out "$tmp/st1" "${SE[@]}" > "$tmp/st1.log" 2>&1 || fail "study R=2 S=1: $(tail -3 "$tmp/st1.log")"
"$mpiexec" -np 4 --oversubscribe "$bin" sensitivity "$job" --out "$tmp/st2" "${SE[@]}" > "$tmp/st2.log" 2>&1 || fail "study R=2 S=2: $(tail -3 "$tmp/st2.log")"
if [ -n "$(study "$tmp/st1/results.json")" ] && diff <(study "$tmp/st1/results.json") <(study "$tmp/st2/results.json") > /dev/null \
   && cmp -s "$tmp/st1/pqi/layer-000.h5" "$tmp/st2/pqi/layer-000.h5"; then
  ok "sensitivity study, 2 replicas: the same results and PQI files for 1 and 2 stages"
else
  fail "sensitivity study with replicas differs between 1 and 2 stages"
fi

# plan: --ranks counts every replica's ranks.
"$bin" plan "$job" --ranks 4 --set run.replicas=2 > "$tmp/plan.log" 2>&1 && grep -q "2 replicas x 2 stages" "$tmp/plan.log" \
  && grep -q "on 2 ranks" "$tmp/plan.log" && ok "plan --ranks 4 with 2 replicas: 2 stages per replica" || fail "plan with replicas: $(tail -2 "$tmp/plan.log")"

# Stopped once quantize is recorded (RQ_STOP_FILE: the stop lands at the next phase boundary),
# resumed on another stage count.
stop=$tmp/stop; rm -f "$stop"
RQ_STOP_FILE=$stop "$mpiexec" -np 2 --oversubscribe -x RQ_STOP_FILE "$bin" run "$job" \
  --out "$tmp/stopped" --set run.replicas=2 "${PQI[@]}" > "$tmp/stopped.log" 2>&1 &
pid=$!
for _ in $(seq 600); do
  h5dump -a /log "$tmp/stopped/run.h5" 2>/dev/null | grep -q 'quantize' && break
  kill -0 $pid 2> /dev/null || break; sleep 0.1
done
touch "$stop"; wait $pid
if [ -f "$tmp/stopped/model.requant.h5" ]; then
  fail "the run finished before the stop (nothing to resume)"
else
  run 4 "$tmp/stopped" --set run.replicas=2 "${PQI[@]}"
  grep -q "resuming" "$tmp/stopped.log" && cmp -s "$tmp/gptq-pqi-s1/model.requant.h5" "$tmp/stopped/model.requant.h5" \
    && ok "stopped on 2 ranks after quantize, resumed on 4: the same checkpoint" \
    || fail "resume across stage counts: $(grep -c resuming "$tmp/stopped.log") resumes, checkpoints differ"
fi

# One replica against two: losses at fixed weights and sum PQI within 1e-6 relative.
run 1 "$tmp/r1" "${PQI[@]}"
/usr/bin/python3 - "$tmp/r1/results.json" "$tmp/gptq-pqi-s1/results.json" <<'PY' && ok "R = 1 and R = 2: losses and sum PQI within 1e-6 relative" || fail "R = 1 and R = 2 differ by more than 1e-6"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
pairs = [(f"perplexity_fp {k}", a["perplexity_fp"][k], b["perplexity_fp"][k]) for k in a["perplexity_fp"]]
for da, db in zip(a["requant"]["detach"]["pqi"], b["requant"]["detach"]["pqi"]):
    for k in ("f_orig", "f_quant", "pqi_sum", "delta_f"):
        if k in da: pairs.append((f"round {da['round']} {k}", da[k], db[k]))
worst = 0
for name, x, y in pairs:
    rel = abs(x - y) / max(abs(x), 1e-300)
    worst = max(worst, rel)
    print(f"   {name}: {x!r} vs {y!r} (relative {rel:.1e})")
sys.exit(0 if worst <= 1e-6 and len(pairs) > 2 else 1)
PY
n=$(h5diff -c "$tmp/r1/model.requant.h5" "$tmp/gptq-pqi-s1/model.requant.h5" | grep -c "^dataset:")
ok "R = 1 and R = 2: $n checkpoint datasets differ (GPTQ rounding or top-k at ties; perplexity R=1 $(val "$tmp/r1/results.json" "eval-tokens.safetensors"), R=2 $(val "$tmp/gptq-pqi-s1/results.json" "eval-tokens.safetensors"))"

"$mpiexec" -np 3 --oversubscribe "$bin" run "$job" --out "$tmp/bad" --set run.replicas=2 > "$tmp/bad.log" 2>&1 \
  && fail "3 ranks with 2 replicas ran" || { grep -q "does not divide the 3 ranks" "$tmp/bad.log" \
  && ok "3 ranks, 2 replicas refused: $(grep -m1 error "$tmp/bad.log")" || fail "3 ranks: $(tail -2 "$tmp/bad.log")"; }
"$mpiexec" -np 2 --oversubscribe "$bin" run "$job" --out "$tmp/bad2" --set run.replicas=2 \
  --set data.calibration_seqs=1 > "$tmp/bad2.log" 2>&1 && fail "1 microbatch on 2 replicas ran" \
  || { grep -q "needs at least as many calibration microbatches" "$tmp/bad2.log" \
  && ok "1 microbatch, 2 replicas refused" || fail "1 microbatch: $(tail -2 "$tmp/bad2.log")"; }
[ $fails -eq 0 ] && echo "all replica checks passed" || echo "$fails replica checks failed"
exit $((fails > 0))
