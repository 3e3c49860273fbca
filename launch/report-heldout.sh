#!/usr/bin/env bash
# Where does ReQuant help on held-out data? (issue 17) llama-7m-en at 3 bits, calibrated on 16,
# 64 and 256 windows of 256 tokens of sotu-1790-1980.txt (the largest 64 k tokens), evaluated
# on the first 64 windows of sotu-1981-2021.txt and mobydick.txt. Per calibration size and base
# method (SqueezeLLM, GPTQ):
#   base         SqueezeLLM's Dense-and-Sparse (0.45% fixed-rule outliers + 0.05% Fisher);
#                GPTQ g128 (sequential, true_sequential)
#   signed       base + ReQuant: 0.45% (GPTQ: 0.25%, g256) adaptive outliers + 0.05% PQI
#                significant weights in 2 steps, ranked by signed PQI
#   abs          the same ranked by |PQI|
#   signed-ho    signed with the held-out stop (requant.holdout = 0.25: a quarter of the
#                calibration windows left out of every fit; a detach round is kept only if it
#                lowers their loss)
#   abs-ho       abs with the held-out stop
# PQI on sensitivity.nodes = 8 midpoint nodes for every cell (the job files use 32 for
# SqueezeLLM; 8 keeps the 256-window cells near 15 min each on 2 cores).
# Every cell is a real `requant-dist run` ($OUT/cal<S>-<method>-<cell>/results.json); cells
# already there are reused, so the study can be stopped and resumed. The table is
# $OUT/heldout-table.md, each cell's wall time in $OUT/times.tsv.
# Usage: launch/report-heldout.sh [OUT] (default runs/report-heldout)
# Environment: RQ_RANKS (1); RQ_SIZES ("16 64 256") to run a subset; RQ_CELLS (a regex: run
# only the cells whose name matches, e.g. 'base|abs$'). Per size the cells without the held-out
# stop run first.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
rq_need_shared
rq_out_dir "${1:-}" report-heldout

J=$RQ_ROOT/jobs
COMMON=(--set quant.bits=3 --set sensitivity.nodes=8 --set sensitivity.rule=midpoint)
cell() {  # cell NAME JOB ARGS...
  local name=$1 job=$2; shift 2
  local dir="$OUT/$name"
  [ -f "$dir/results.json" ] && return 0
  [[ $name =~ ${RQ_CELLS:-.} ]] || return 0
  echo "== $name"
  local t0=$SECONDS
  rq_launch run "$job" --out "$dir" "${COMMON[@]}" "$@" > "$OUT/$name.log" 2>&1 \
    || { echo "error: $name failed, see $OUT/$name.log" >&2; tail -3 "$OUT/$name.log" >&2; return 1; }
  printf '%s\t%d\n' "$name" $((SECONDS - t0)) >> "$OUT/times.tsv"
  grep -E "bits/weight" "$OUT/$name.log" || true
}
SIGNED=(--set requant.signed_ranking=true)  # explicit: the job files rank by |PQI|
ABS=(--set requant.signed_ranking=false)
HO=(--set requant.holdout=0.25)
for S in ${RQ_SIZES:-16 64 256}; do
  C=(--set data.calibration_seqs=$S)
  for m in squeezellm gptq; do
    base=$J/llama-7m-en-$m.toml; [ $m = squeezellm ] && base=$J/llama-7m-en-squeezellm-ds.toml
    rq=$J/llama-7m-en-$m-requant.toml
    cell "cal$S-$m-base" "$base" "${C[@]}"
    cell "cal$S-$m-signed" "$rq" "${C[@]}" "${SIGNED[@]}"
    cell "cal$S-$m-abs" "$rq" "${C[@]}" "${ABS[@]}"
  done
  for m in squeezellm gptq; do
    rq=$J/llama-7m-en-$m-requant.toml
    cell "cal$S-$m-signed-ho" "$rq" "${C[@]}" "${SIGNED[@]}" "${HO[@]}"
    cell "cal$S-$m-abs-ho" "$rq" "${C[@]}" "${ABS[@]}" "${HO[@]}"
  done
done

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(c):
    p = os.path.join(out, c, "results.json")
    return json.load(open(p)) if os.path.exists(p) else None
times = {}
if os.path.exists(os.path.join(out, "times.tsv")):
    for line in open(os.path.join(out, "times.tsv")):
        n, s = line.split("\t")
        times[n] = int(s)
ev = ["sotu-1981-2021.txt", "mobydick.txt"]
L = ["# ReQuant on held-out data: calibration size, ranking and the held-out stop", "",
     "llama-7m-en, 3 bits; launch/report-heldout.sh. Perplexity on the held-out texts (64 windows",
     "each) and on the windows fitted on. Rounds: Alg. 2's detach rounds kept / run (held-out stop:",
     "a round is kept only if it lowers the loss on the held-out quarter of the calibration windows;",
     "those cells fit on, and report the calibration perplexity of, the other three quarters).",
     "", "| calibration | method | cell | bits/w | " + " | ".join("ppl " + e for e in ev) +
     " | ppl calibration | rounds | ΔF per round | s |", "|---|---|---|---|---|---|---|---|---|---|"]
names = {"base": "base", "signed": "+ ReQuant, signed PQI", "abs": "+ ReQuant, |PQI|",
         "signed-ho": "+ ReQuant, signed, held-out stop", "abs-ho": "+ ReQuant, |PQI|, held-out stop"}
for S in (16, 64, 256):
    for m in ("squeezellm", "gptq"):
        for c in ("base", "signed", "abs", "signed-ho", "abs-ho"):
            name = f"cal{S}-{m}-{c}"
            r = load(name)
            if not r: continue
            d = r.get("requant", {}).get("detach", {})
            rounds = d.get("pqi", [])
            kept = sum(1 for x in rounds if x.get("kept", True))
            rs = f"{kept}/{len(rounds)}" if rounds else "–"
            df = ", ".join("%.4f" % x["delta_f"] for x in rounds) if rounds else "–"
            L.append(f"| {S} × 256 | {m} | {names[c]} | %.3f | " % r["bits_per_weight"] +
                     " | ".join("%.3f" % r["perplexity"][e] for e in ev) +
                     " | %.3f | %s | %s | %s |" % (r["perplexity"]["calibration"], rs, df, times.get(name, "")))
fp = next((load(n) for n in sorted(os.listdir(out)) if load(n)), None)
if fp:
    L += ["", "fp32: " + ", ".join("%s %.3f" % (e, fp["perplexity_fp"][e]) for e in ev)]
open(os.path.join(out, "heldout-table.md"), "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
