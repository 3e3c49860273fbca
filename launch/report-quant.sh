#!/usr/bin/env bash
# The base-quantizer table (issue 4): for llama-7m-en and stories260k, FP, RTN, GPTQ, AWQ,
# SqueezeLLM dense-only and SqueezeLLM Dense-and-Sparse at 3 and 4 bits (also 2 bits for RTN and
# GPTQ), QTIP (HYB, no fine-tuning) at 2, 3 and 4 bits and QTIP 2-bit + ReQuant (the paper's
# recipe: r_o = 0, 0.5% PQI-detached in 2 steps, N = 32): bits/weight, memory, perplexity on
# each held-out set, time per phase. Every cell is a
# real `requant-dist run` (results.json under $OUT/<model>-<method>-<bits>/); the Markdown table
# is written to $OUT/quant-table.md. Usage: launch/report-quant.sh [OUT] (default runs/report-quant)
# Environment: RQ_RANKS (1) runs each job under mpirun -np RQ_RANKS.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
rq_need_shared
rq_out_dir "${1:-}" report-quant

cells() {  # cells MODEL JOB GROUP
  local m=$1 job=$2 g=$3
  for spec in "rtn 2" "rtn 3" "rtn 4" "gptq 2" "gptq 3" "gptq 4" "awq 3" "awq 4" \
              "squeezellm 3" "squeezellm 4" "squeezellm-ds 3" "squeezellm-ds 4" \
              "qtip 2" "qtip 3" "qtip 4" "qtip-requant 2"; do
    set -- $spec; local method=$1 bits=$2 dir="$OUT/$m-$1-$2"
    local base=${method%-ds}; base=${base%-requant}; local gs=$g
    [ "$base" = qtip ] && gs=0  # one scale per matrix, no groups
    local extra=(--set quant.method=$base --set quant.bits=$bits --set quant.group_size=$gs)
    [ "$base" = qtip ] && extra+=(--set quant.sequential=false)  # its X^T X: the fp model's
    [ "$method" = squeezellm-ds ] && extra+=(--set requant.outlier_ratio=0.0045 --set requant.outlier_select=fixed
                                            --set requant.significant_ratio=0.0005 --set requant.significant_select=fisher)
    [ "$method" = qtip-requant ] && extra+=(--set requant.significant_ratio=0.005 --set requant.step_ratio=0.0025
                                           --set requant.significant_select=pqi --set sensitivity.nodes=32)
    [ -f "$dir/results.json" ] && continue
    echo "== $m $method $bits-bit"
    rq_launch run "$job" --out "$dir" "${extra[@]}" 2>&1 | grep -E "bits/weight|error" || true
  done
}
cells llama-7m-en "$RQ_ROOT/jobs/llama-7m-en-rtn.toml" 128
cells stories260k "$RQ_ROOT/jobs/stories260k-gptq.toml" 64

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = []
for d in sorted(os.listdir(out)):
    p = os.path.join(out, d, "results.json")
    if os.path.exists(p):
        rows.append((d, json.load(open(p))))
lines = ["# Base quantizers on the bundled models", "",
         "Each row is one `requant-dist run` (see launch/report-quant.sh). Bits/weight count every overhead "
         "(codes, fp16 scales/zeros or LUTs, AWQ input scales, CSR values+indices at 48 bits and row pointers); "
         "'paper' counts sparse parts at 48 bits/nnz only. Memory: linears as stored + all other parameters at 16 bits.", ""]
for model in ("llama-7m-en", "stories260k"):
    sel = [(d, r) for d, r in rows if d.startswith(model)]
    if not sel: continue
    evals = [k for k in sel[0][1]["perplexity_fp"] if k != "calibration"]
    lines += [f"## {model}", "",
              "| method | bits | bits/weight | (paper) | memory MiB | " + " | ".join(f"ppl {e}" for e in evals) +
              " | ppl calib | stats s | quant s |",
              "|---|---|---|---|---|" + "---|" * len(evals) + "---|---|---|"]
    r0 = sel[0][1]
    lines.append("| fp32 (16-bit storage) | 16 | 16 | 16 | %.2f | " % (r0["memory_gib_fp16"] * 1024) +
                 " | ".join("%.3f" % r0["perplexity_fp"][e] for e in evals) + " | %.3f | - | - |" % r0["perplexity_fp"]["calibration"])
    order = {"rtn": 0, "gptq": 1, "awq": 2, "squeezellm": 3, "squeezellm-ds": 4, "qtip": 5, "qtip-requant": 6}
    def key(x):
        name = x[0][len(model) + 1:]; m, b = name.rsplit("-", 1); return (order.get(m, 9), int(b))
    for d, r in sorted(sel, key=key):
        name = d[len(model) + 1:].rsplit("-", 1)[0]
        lines.append("| %s | %d | %.3f | %.3f | %.2f | " % (name, r["bits"], r["bits_per_weight"], r["bits_per_weight_paper"], r["memory_gib"] * 1024) +
                     " | ".join("%.3f" % r["perplexity"][e] for e in evals) +
                     " | %.3f | %.1f | %.1f |" % (r["perplexity"]["calibration"], r["phases"].get("statistics", 0), r["phases"].get("prequant", 0)))
    lines.append("")
open(os.path.join(out, "quant-table.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
