#!/usr/bin/env bash
# Benchmarks, one run, results as ratios. Needs a build (launch/setup.sh).
#  1. the fp32 GEMM roofline and the BLAS in use; llama-7m-en forward and forward+backward at
#     sequence length 256 and their fraction of the roofline (FLOPs counted analytically);
#  1b. the same model in plain PyTorch eager (tests/reference/llama_eager.py, Debian python3-torch)
#     at 16 x 256 with the same tokens, threads and OpenBLAS core: both rates and their ratio;
#  1d. the same comparison on one decoder layer of the Llama-3.2-1B shape at 512 tokens;
#  1c. each fused kernel of the decoder block (RMSNorm, SwiGLU, RoPE, attention) against its
#     plain twin of ATen ops, forward and forward+backward, at llama-7m-en's shapes (bench_kernels);
#  2. the 1F1B pipeline: forward+backward tokens/s for P = 1 and P = 2 on llama-7m-en, the
#     measured bubble against the ideal (P-1)/(M+P-1), peak RSS per rank for P = 1, 2, 4;
#  3. peak RSS per rank for P = 1, 2, 4 on a synthetic 1.3 GB (BF16) model in HF layout, written
#     once to $RQ_BENCH_TMP (default /tmp/requant-synth-1b3);
#  4b. launch/bench-pqi.sh: a PQI node against a plain forward+backward (graphs kept and
#     recomputed), and the time to the paper's PQI accuracy against its eager recipe;
#  4. one PQI pass on llama-7m-en (32 x 256 calibration tokens, midpoint rule, RQ_BENCH_NODES
#     nodes, default 8) for P = 1 and 2: time, GFLOP/s against the GEMM roofline of the ranks
#     (target >= 50%), and each rank's gradient accumulators (its own layers' linears only);
#  5. tokenizers: MB/s encoding sotu-1790-1980.txt (9 MB) with the Llama 3 tokenizer.json and
#     llama-7m-en's tokenizer.model, one thread and all cores (ids checked equal to one pass).
#  6. where one forward+backward step's time goes, on 1 and 2 threads (bench_model --profile,
#     launch/profile_summary.py): GEMMs by where they run, norms, RoPE, softmax, SwiGLU, loss,
#     copies, allocation.
# Environment: RQ_BENCH_THREADS (2), RQ_BENCH_BATCH (8), RQ_BENCH_SECONDS (3), RQ_BENCH_SYNTH (1),
# RQ_BENCH_NODES (8).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
rq_need_shared
# The OpenBLAS core: requant-dist and the benchmarks re-execute themselves with an AVX-512 core
# where OpenBLAS 0.3.21 falls back to a lesser one (cli/sysinfo.h); a user's OPENBLAS_CORETYPE
# wins. Section 0 measures what the fallback would cost.
M7=$RQ_SHARED/models/llama-7m-en
echo "# machine  : $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "# env      : OMP_WAIT_POLICY=$OMP_WAIT_POLICY OPENBLAS_THREAD_TIMEOUT=$OPENBLAS_THREAD_TIMEOUT OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(chosen by the binary)}"
echo "## 0. the OpenBLAS core: forward+backward of llama-7m-en on the fallback (Prescott) vs the core in use"
core_fb() {  # tokens/s of forward+backward, and the core line
  "$RQ_BUILD/bin/bench_model" --model "$M7" --seq-len 256 --batch "${RQ_BENCH_BATCH:-8}" \
    --threads "${RQ_BENCH_THREADS:-2}" --min-seconds "${RQ_BENCH_SECONDS:-3}" > "$1"
  grep "^# BLAS" "$1"; awk '/^  forward\+backward/ {print "  forward+backward tokens/s:", $3}' "$1"
}
c0=$(mktemp); c1=$(mktemp)
OPENBLAS_CORETYPE=Prescott core_fb "$c0"
core_fb "$c1"
awk '/^  forward\+backward/ {v[FILENAME]=$3} END {for (f in v) n++; if (n == 2)
  printf "# forward+backward: chosen core / Prescott = %.2fx\n", v[ARGV[2]] / v[ARGV[1]] }' "$c0" "$c1"
rm -f "$c0" "$c1"

echo "## 1. single process vs the GEMM roofline"
"$RQ_BUILD/bin/bench_model" --model "$M7" --seq-len 256 --batch "${RQ_BENCH_BATCH:-8}" \
  --threads "${RQ_BENCH_THREADS:-2}" --min-seconds "${RQ_BENCH_SECONDS:-3}"

echo "## 1b. against PyTorch eager (tests/reference/llama_eager.py): llama-7m-en, 16 x 256, same tokens, threads and OpenBLAS core"
eager_cmp() {  # MODEL SEQ_LEN BATCH: RQ_BENCH_ROUNDS (3) rounds, each both engines in turn
  local d core r
  d=$(mktemp -d)
  for r in $(seq "${RQ_BENCH_ROUNDS:-3}"); do
    "$RQ_BUILD/bin/bench_model" --model "$1" --seq-len "$2" --batch "$3" \
      --threads "${RQ_BENCH_THREADS:-2}" --min-seconds "${RQ_BENCH_SECONDS:-3}" > "$d/cpp.$r"
    core=$(grep -o 'core=[A-Za-z0-9]*' "$d/cpp.$r" | head -1 | cut -d= -f2)
    OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-$core} /usr/bin/python3 "$RQ_ROOT/tests/reference/llama_eager.py" \
      --model "$1" --seq-len "$2" --batch "$3" --threads "${RQ_BENCH_THREADS:-2}" \
      --min-seconds "${RQ_BENCH_SECONDS:-3}" > "$d/py.$r"
  done
  grep -E "^# BLAS" "$d/cpp.1" | sed 's/^/  requant-dist: /'
  grep -E "^# eager" "$d/py.1" | sed 's/^/  /'
  /usr/bin/python3 - "$d" "${RQ_BENCH_ROUNDS:-3}" "$core" <<'PY'
import re, statistics, sys
d, rounds, core = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def rates(path, pat):
    txt = open(path).read()
    loss = float(re.search(r"^  loss\s+(\S+)", txt, re.M).group(1))
    f = float(re.search(r"^  %sforward\s+\S+\s+(\S+)" % pat, txt, re.M).group(1))
    b = float(re.search(r"^  %sforward\+backward\s+\S+\s+(\S+)" % pat, txt, re.M).group(1))
    return loss, f, b
rows = []
for r in range(1, rounds + 1):
    lc, fc, bc = rates("%s/cpp.%d" % (d, r), "")
    le, fe, be = rates("%s/py.%d" % (d, r), "eager ")
    rows.append((fc, bc, fe, be, fc / fe, bc / be))
    print("  round %d: requant-dist %6.0f / %6.0f tokens/s, eager %6.0f / %6.0f (forward / "
          "forward+backward): %.2fx / %.2fx" % (r, fc, bc, fe, be, fc / fe, bc / be))
diff = abs(lc - le)
print("# losses %.6f vs %.6f (|diff| %.1e: %s)" % (lc, le, diff,
      "the same computation" if diff < 1e-4 else "DIFFERENT MODELS"))
med = [statistics.median(c) for c in zip(*rows)]
print("# medians of %d rounds: requant-dist %.0f / %.0f tokens/s, eager %.0f / %.0f; per-round "
      "ratio, OpenBLAS core %s: forward %.2fx, forward+backward %.2fx (target >= 2x)"
      % (rounds, med[0], med[1], med[2], med[3], core, med[4], med[5]))
PY
  rm -rf "$d"
}
eager_cmp "$M7" 256 16

echo "## 1d. one decoder layer of the Llama-3.2-1B shape (hidden 2048, ff 8192, 32/8 heads; random BF16 weights, vocabulary 1024 so that the head is negligible), 1 x 512 tokens, against eager"
L1B=${RQ_BENCH_TMP:-/tmp}/requant-layer-1b
[ -f "$L1B/config.json" ] || "$RQ_BUILD/bin/make_synthetic_model" "$L1B" --hidden 2048 --ff 8192 \
  --layers 1 --heads 32 --kv 8 --vocab 1024 > /dev/null
eager_cmp "$L1B" 512 1

echo "## 1c. fused kernels against their plain twins (bench_kernels, llama-7m-en shapes, 16 x 256)"
"$RQ_BUILD/bin/bench_kernels" --threads "${RQ_BENCH_THREADS:-2}"

echo "## 2. 1F1B pipeline, llama-7m-en, 32 sequences x 256, microbatch 2 (M = 16)"
BP="$RQ_BUILD/bin/bench_pipeline --model $M7 --seqs 32 --seq-len 256 --microbatch 2 --reps 2"
out=$(mktemp); trap 'rm -f "$out"' EXIT
$BP --threads 2 | tee -a "$out"
mpirun -np 2 $BP --threads 1 | tee -a "$out"
mpirun -np 2 $BP --threads 2 | tee -a "$out"
mpirun -np 4 --oversubscribe $BP --threads 1 | tee -a "$out"
awk '/P=1 threads=2/ {p1=$4} /P=2 threads=1/ {p2=$4} END {
  printf "# P=2 (1 thread/rank) / P=1 (2 threads) forward+backward throughput: %.2fx\n", p2/p1 }' "$out"

if [ "${RQ_BENCH_SYNTH:-1}" = 1 ]; then
  SYN=${RQ_BENCH_TMP:-/tmp/requant-synth-1b3}
  [ -f "$SYN/model.safetensors.index.json" ] || "$RQ_BUILD/bin/make_synthetic_model" "$SYN"
  echo "## 3. synthetic model $(du -sh "$SYN" | cut -f1) (BF16 on disk, fp32 in memory), forward, peak RSS per rank"
  for np in 1 2 4; do
    mpirun -np $np --oversubscribe "$RQ_BUILD/bin/bench_pipeline" --model "$SYN" --seqs 2 \
      --seq-len 32 --microbatch 1 --reps 1 --forward-only 1 --threads 1
  done
fi

echo "## 4. PQI pass, llama-7m-en, 32 sequences x 256, microbatch 4"
BQ="$RQ_BUILD/bin/bench_pqi --model $M7 --seqs 32 --seq-len 256 --microbatch 4 --nodes ${RQ_BENCH_NODES:-8}"
$BQ --threads 2
mpirun -np 2 $BQ --threads 1

echo "## 4b. launch/bench-pqi.sh"
"$RQ_ROOT/launch/bench-pqi.sh" | grep -v '^# machine'

echo "## 5. tokenizers on sotu-1790-1980.txt (target >= 5 MB/s per core)"
for t in "$RQ_SHARED/tokenizers/llama3/tokenizer.json" "$M7/tokenizer.model"; do
  "$RQ_BUILD/bin/bench_tokenizer" --tokenizer "$t" --text "$RQ_SHARED/data/sotu-1790-1980.txt" \
    --threads "$(nproc)"
done

echo "## 6. where a forward+backward step goes (llama-7m-en, 16 x 256; libtorch's profiler, launch/profile_summary.py)"
for th in 1 2; do
  tr=$(mktemp --suffix=.json)
  "$RQ_BUILD/bin/bench_model" --model "$M7" --seq-len 256 --batch 16 --threads $th \
    --min-seconds 1 --profile "$tr" > /dev/null
  echo "# $th thread(s)"
  /usr/bin/python3 "$RQ_ROOT/launch/profile_summary.py" "$tr"
  rm -f "$tr"
done
