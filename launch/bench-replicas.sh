#!/usr/bin/env bash
# Data-parallel replicas, measured (issue 14 §2): llama-7m-en, GPTQ 4-bit g128 (all layers at
# once) + PQI significant weights 0.05% in 2 rounds with N = 8 nodes, calibration 32 x 256
# tokens in microbatches of 4, one thread per rank, under mpirun with R = 1, 2 replicas and
# S = 1, 2 stages. Wall time on 2 cores cannot show the scaling (4 ranks share them), so the
# table gives each rank's compute in CPU seconds per phase (results.json "load": unaffected by
# ranks sharing cores), the busiest rank, the bytes each reduction over replicas moves, and
# checks that the four runs agree (R fixed: the same checkpoint for every S); across R, counts
# the weights quantized differently (ties may fall either way).
# Then, from those figures and the Llama-3.2-1B-shaped run of launch/bench-1b.sh (its OUT, if
# given), the projected time of the paper's Llama-3.2-1B recipe (n = 100 x 2048 tokens, N = 32,
# K = 2) on 16, 64 and 256 CPU ranks.
# Usage: launch/bench-replicas.sh [OUT] [BENCH_1B_OUT]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
rq_need_shared
rq_out_dir "${1:-}" bench-replicas
B1=${2:-}
JOB=$RQ_ROOT/jobs/llama-7m-en-gptq.toml
SET=(--set quant.sequential=false --set quant.group_size=128 --set run.threads=1
     --set data.calibration_seqs=32 --set data.seq_len=256 --set run.microbatch=4
     --set requant.significant_ratio=0.0005 --set requant.step_ratio=0.00025
     --set requant.significant_select=pqi --set sensitivity.nodes=8)
for rs in 1x1 1x2 2x1 2x2; do
  R=${rs%x*} S=${rs#*x}
  echo "== R = $R replicas x S = $S stages"
  mpirun -np $((R * S)) --oversubscribe "$RQ_BIN" run "$JOB" --out "$OUT/r${R}s${S}" --restart \
    "${SET[@]}" --set run.replicas=$R 2>&1 | tail -2
done
cmp "$OUT/r2s1/model.requant.h5" "$OUT/r2s2/model.requant.h5" && echo "R = 2: S = 1 and S = 2 give the same checkpoint"
cmp "$OUT/r1s1/model.requant.h5" "$OUT/r1s2/model.requant.h5" && echo "R = 1: S = 1 and S = 2 give the same checkpoint"

# Across R the discontinuous choices (GPTQ rounding at ties, top-k at ties) may differ: the
# dequantized weights of R = 1 and R = 2 (S = 1), exported in f32, compared element by element.
for R in 1 2; do "$RQ_BIN" export "$OUT/r${R}s1" --out "$OUT/export-r$R" --dtype f32 > /dev/null; done

/usr/bin/python3 - "$OUT" "$B1" <<'PY'
import array, glob, json, math, os, struct, sys
out, b1 = sys.argv[1], sys.argv[2]
runs = {rs: json.load(open(f"{out}/r{rs[0]}s{rs[1]}/results.json")) for rs in
        [(1, 1), (1, 2), (2, 1), (2, 2)]}
phases = ["baseline", "quantize", "detach", "evaluate"]
print("\ncompute per phase, CPU s (busiest rank / all ranks together):")
print(f"{'R x S':>6} " + " ".join(f"{p:>18}" for p in phases) + f" {'busiest total':>14}")
for (R, S), r in runs.items():
    cells, worst = [], {}
    for p in phases:  # detach: its rounds (detach-1, ...) and the end of the phase
        ranks = [x for k, v in r["load"].items() if k == p or k.startswith(p + "-") for x in v]
        busy = {}
        for x in ranks: busy[x["rank"]] = busy.get(x["rank"], 0) + x["cpu_s"]
        busy = list(busy.values())
        for x in ranks: worst[x["rank"]] = worst.get(x["rank"], 0) + x["cpu_s"]
        cells.append(f"{max(busy):8.1f} / {sum(busy):7.1f}" if busy else f"{'-':>18}")
    print(f"{R:>2} x {S:<2} " + " ".join(f"{c:>18}" for c in cells) + f" {max(worst.values()):14.1f}")
base = runs[(1, 1)]
for (R, S), r in runs.items():
    if R == 1: continue
    x = r["load"]["detach-1"][0]
    print(f"R = {R}, S = {S}: detach sums over replicas on rank 0: {x['reductions']} reductions, "
          f"{x['reduced_bytes'] / 2**20:.1f} MiB in {x['reduce_s']:.2f} s "
          f"({x['reduced_bytes'] / max(x['reduce_s'], 1e-9) / 2**30:.2f} GiB/s, waits for the "
          "slower replica included)")
for (R, S), r in runs.items():
    a, b = base["perplexity"], r["perplexity"]
    rel = max(abs(a[k] - b[k]) / a[k] for k in a)
    pq = max(abs(x["pqi_sum"] - y["pqi_sum"]) / abs(x["pqi_sum"]) for x, y in
             zip(base["requant"]["detach"]["pqi"], r["requant"]["detach"]["pqi"]))
    print(f"R = {R}, S = {S} against R = 1, S = 1: perplexity within {rel:.1e}, sum PQI within {pq:.1e}")
def tensors(d):
    """name -> array('f') of every tensor in a folder of f32 safetensors."""
    out = {}
    for f in sorted(glob.glob(f"{d}/*.safetensors")):
        raw = open(f, "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        for k, v in json.loads(raw[8:8 + n]).items():
            if k == "__metadata__": continue
            a, b = v["data_offsets"]
            out[k] = array.array("f", raw[8 + n + a:8 + n + b])
    return out
t1, t2 = tensors(f"{out}/export-r1"), tensors(f"{out}/export-r2")
diff = {k: sum(x != y for x, y in zip(t1[k], t2[k])) for k in t1}
total = sum(len(v) for v in t1.values())
print(f"R = 2 against R = 1 (S = 1), dequantized weights: {sum(diff.values())} of {total} differ, "
      f"in {sum(1 for v in diff.values() if v)} of {len(diff)} tensors")
for k, v in sorted(diff.items(), key=lambda kv: -kv[1])[:5]:
    if v: print(f"  {k}: {v} of {len(t1[k])}")
if not b1:
    sys.exit(0)

# The projection. From the 1B-shaped run (2 stages, 4 microbatches of one 512-token
# sequence, one thread per rank): the compute of one forward+backward per token per decoder
# layer (its detach round: N = 4 midpoint nodes and F(w) forward+backward, F(w~) forward only,
# counted as 1/3 of a pass; both ranks' CPU seconds over 16 layers, the head included), and
# GPTQ per layer (rank 0's quantize time over its 9 layers).
r1 = json.load(open(f"{b1}/run/results.json"))
L, seq, n1 = 16, 512, 4
passes1 = 4 + 1 + 1 / 3
if "load" in r1 and "detach-1" in r1["load"]:
    cpu = sum(x["cpu_s"] for x in r1["load"]["detach-1"])
    c_tok = cpu / passes1 / (n1 * seq * L)
    src = "CPU seconds of the detach round"
else:  # an older run: wall time, the pipeline's bubble (M + S - 1 steps for M = 4) taken out
    c_tok = r1["phases"]["detach"] / passes1 / (n1 + 1) / (L / 2) / seq
    src = "wall time of the detach phase"
g_layer = r1["phases"]["prequant"] / 9
lin = 2048 * (2048 + 2 * 512) + 2048 * 2048 + 3 * 2048 * 8192  # linear weights per layer
print(f"\nfrom {b1} ({src}): forward+backward {c_tok * 1e6:.1f} us per token per layer, "
      f"GPTQ {g_layer:.0f} s per layer")
bw = None
for (R, S), r in runs.items():
    if R > 1:
        x = r["load"]["detach-1"][0]
        bw = x["reduced_bytes"] / max(x["reduce_s"], 1e-9)
print(f"sums over replicas: {bw / 2**30:.2f} GiB/s here (shared memory, waits included); a cluster's "
      "network is taken at 10 GB/s, and the sum as implemented (gather to one rank, add in "
      "replica order, broadcast) moves 2 (R - 1) x the tensor through that rank")
n_seq, T, N, K = 100, 2048, 32, 2
print(f"\nLlama-3.2-1B recipe, n = {n_seq} x {T}, N = {N}, K = {K} ({K * (N + 2)} forward+backward passes;"
      " one thread per rank, the best R x S for each rank count, memory not checked):")
print(f"{'ranks':>6} {'R x S':>8} {'passes h':>9} {'sums h':>7} {'GPTQ h':>7} {'total h':>8}")
for P in (16, 64, 256):
    best = None
    for S in (1, 2, 4, 8, 16):
        if P % S: continue
        R = P // S
        if R > n_seq: continue
        m = math.ceil(n_seq / R)
        t_pass = (m + S - 1) * (L / S) * T * c_tok
        t_sum = 2 * (R - 1) * 4 * lin * (L / S) / 10e9 if R > 1 else 0
        t_passes = K * (N + 2) * (t_pass + t_sum)
        t_gptq = math.ceil((L / S) / R) * g_layer
        tot = t_passes + t_gptq
        row = (tot, R, S, K * (N + 2) * t_pass, K * (N + 2) * t_sum, t_gptq)
        if best is None or tot < best[0]: best = row
    tot, R, S, tp, ts, tg = best
    print(f"{P:>6} {R:>3} x {S:<3} {tp / 3600:9.2f} {ts / 3600:7.2f} {tg / 3600:7.2f} {tot / 3600:8.2f}")
PY
