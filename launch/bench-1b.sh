#!/usr/bin/env bash
# The real-size proof (issue 14 §4): a model with exactly Llama-3.2-1B's configuration
# (jobs/configs/llama-3.2-1b.json), random BF16 weights in two safetensors shards, quantized on
# 2 ranks with GPTQ 4-bit g128 (all layers at once) + 0.05% PQI significant weights in one round
# (N = 4 midpoint nodes), microbatch 1, one thread per rank; calibration: the first 4 windows of
# data/llama3-tokens/mobydick-512, evaluation: the first 4 of sotu-1981-2021-512. Then export
# (f32) and eval of the export, and one forward+backward of a single 4096-token sequence.
# Prints the phase times, each rank's peak RSS (/usr/bin/time -v, file pages included) above its
# RSS at start-up against what `plan` predicts, and the PQI self-test error.
# Usage: launch/bench-1b.sh [OUT]          (default runs/bench-1b; the model is made once in OUT)
# Environment: RQ_BENCH_SHAPE="--hidden 512 --ff 2048 --layers 4 --heads 8 --kv 2 --vocab 128256"
#   makes a smaller model of the same kind instead (the ctest entry cli_large_path does);
#   RQ_BENCH_LONG_SEQ (default 4096; 0 skips the long pass); RQ_BENCH_MEM_GIB (run.mem_gib,
#   default 9: GPTQ's X^T X in as many calibration passes as that budget needs);
#   RQ_BENCH_MODEL=DIR runs the same job on an existing model instead (the plan check on other
#   sizes), with RQ_BENCH_CALIB and RQ_BENCH_EVAL as its data (default: the Llama 3 token files
#   above; text files need the model's tokenizer).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
rq_need_shared
rq_out_dir "${1:-}" bench-1b
MODEL=${RQ_BENCH_MODEL:-$OUT/model} JOB=$OUT/job.toml RUN=$OUT/run
TOK=$RQ_SHARED/data/llama3-tokens
CALIB=${RQ_BENCH_CALIB:-$TOK/mobydick-512.safetensors}
EVAL=${RQ_BENCH_EVAL:-$TOK/sotu-1981-2021-512.safetensors}
LONG=${RQ_BENCH_LONG_SEQ:-4096}
launch=(mpirun -np 2 --oversubscribe)

if [ ! -f "$MODEL/config.json" ]; then
  if [ -n "${RQ_BENCH_SHAPE:-}" ]; then
    # shellcheck disable=SC2086
    "$RQ_BUILD/bin/make_synthetic_model" "$MODEL" $RQ_BENCH_SHAPE
  else
    "$RQ_BUILD/bin/make_synthetic_model" "$MODEL" --config "$RQ_ROOT/jobs/configs/llama-3.2-1b.json"
  fi
fi
cat > "$JOB" <<TOML
# launch/bench-1b.sh: GPTQ 4-bit g128 + 0.05% PQI significant weights, one round, N = 4.
[model]
path = "$MODEL"
[data]
calibration      = "$CALIB"
calibration_seqs = 4
seq_len          = 512
eval             = ["$EVAL"]
eval_max_seqs    = 4
[quant]
method     = "gptq"
bits       = 4
group_size = 128
sequential = false
[requant]
outlier_ratio      = 0.0
significant_ratio  = 0.0005
step_ratio         = 0.0005
significant_select = "pqi"
[sensitivity]
nodes = 4
rule  = "midpoint"
[run]
out        = "$RUN"
microbatch = 1
threads    = 1
mem_gib    = ${RQ_BENCH_MEM_GIB:-9}
TOML

"$RQ_BIN" plan "$JOB" --ranks 2 | tee "$OUT/plan.txt"
rm -rf "$RUN"
t0=$SECONDS
# Each rank under its own /usr/bin/time: its peak RSS, file-backed pages included.
"${launch[@]}" sh -c 'exec /usr/bin/time -v -o "$0/time.$OMPI_COMM_WORLD_RANK" "$1" run "$2" --restart' \
  "$OUT" "$RQ_BIN" "$JOB" 2>&1 | tee "$OUT/run.log"
run_s=$((SECONDS - t0))
"$RQ_BIN" export "$RUN" --out "$OUT/export" --dtype f32
"${launch[@]}" "$RQ_BIN" eval --model "$OUT/export" --data "$EVAL" --seq-len 512 \
  --max-seqs 4 --batch 1 --threads 1 --json "$OUT/eval.json" | tee "$OUT/eval.log"
if [ "$LONG" != 0 ]; then
  "${launch[@]}" "$RQ_BUILD/bin/bench_pass" --model "$MODEL" --seqs 1 --seq-len "$LONG" \
    --threads 1 | tee "$OUT/long.log"
fi

/usr/bin/python3 - "$OUT" "$run_s" <<'PY'
import json, re, sys
out, run_s = sys.argv[1], int(sys.argv[2])
r = json.load(open(f"{out}/run/results.json"))
print(f"\n== {out}: run {run_s} s wall (2 ranks, 1 thread each)")
print("phases (s):", ", ".join(f"{k} {v:.0f}" for k, v in r["phases"].items()))
plan = {}
for line in open(f"{out}/plan.txt"):
    m = re.match(r"\s+(\d+)\s+([0-9.]+\s+){6}([0-9.]+)\s+\d+$", line)
    if m: plan[int(m.group(1))] = float(m.group(3))
print("rank  start-up GiB  peak GiB  above start-up  plan GiB  measured/plan")
for rank in sorted(plan):
    start = float(re.search(r"RSS at start-up ([0-9.]+) GiB",
                            open(f"{out}/run/logs/rank-{rank:03d}.log").read()).group(1))
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)",
                         open(f"{out}/time.{rank}").read()).group(1)) / 2**20
    print(f"{rank:4d}  {start:12.2f}  {peak:8.2f}  {peak - start:14.2f}  {plan[rank]:8.2f}  "
          f"{(peak - start) / plan[rank]:13.3f}")
for d in r["requant"]["detach"]["pqi"]:
    rel = abs(d["pqi_sum"] - d["delta_f"]) / abs(d["delta_f"])
    print(f"self-test round {d['round']}: dF {d['delta_f']:.6e}, sum PQI {d['pqi_sum']:.6e}, "
          f"|sum PQI - dF|/|dF| {rel:.3e}")
ev = json.load(open(f"{out}/eval.json"))
print("perplexity: run", r["perplexity"], " eval of the f32 export", ev.get("perplexity"))
PY
