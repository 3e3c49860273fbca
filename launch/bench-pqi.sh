#!/usr/bin/env bash
# The PQI pass's cost and the time to the paper's accuracy (issue 18), each in one run, on
# llama-7m-en with RQ_BENCH_PQI_SEQS (16) random sequences of 256 tokens in microbatches of 4,
# w~ = RTN 4-bit g128, RQ_BENCH_THREADS (2) threads:
#  a. one PQI node (a forward+backward with the path's weights and its accumulation; the median
#     of a run's nodes) against a plain forward+backward of the same microbatches (autograd, no
#     pipeline), with each layer's graph recomputed in backward and kept (the run's choice
#     where memory allows);
#  b. the paper's recipe (right rule, N = 32) in plain PyTorch eager
#     (tests/reference/pqi_eager.py, the same w~, tokens, threads and OpenBLAS core) and in
#     requant-dist, then requant-dist's smallest N per rule (midpoint, trapezoid) whose self-test
#     error |sum PQI - dF| / |dF| is at most the eager recipe's, and the eager recipe's wall time
#     over the fastest of those: the time-to-accuracy ratio (target >= 8).
# Usage: launch/bench-pqi.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
rq_need_shared
M7=$RQ_SHARED/models/llama-7m-en
S=${RQ_BENCH_PQI_SEQS:-16}; TH=${RQ_BENCH_THREADS:-2}
BQ=("$RQ_BUILD/bin/bench_pqi" --model "$M7" --seqs "$S" --seq-len 256 --microbatch 4 --threads "$TH")
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "# machine  : $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"

echo "## a. one PQI node against a plain forward+backward ($S x 256, trapezoid rule, 8 intervals)"
# bench_pqi times every node of one run and a plain forward+backward three times after it:
# the node's median (the first, cold, left out) against the plain median.
for g in recompute keep; do
  "${BQ[@]}" --rule trapezoid --nodes 8 --graph "$g" | grep -E "pqi P|self-test|PQI node"
done

echo "## b. time to the paper's accuracy ($S x 256; the paper's recipe: right rule, N = 32)"
"${BQ[@]}" --rule right --nodes 32 --dump-wq "$tmp/wq.safetensors" > "$tmp/cpp"
core=$("$RQ_BUILD/bin/bench_model" --model "$M7" --seq-len 16 --batch 1 --threads 1 \
  --min-seconds 0 | grep -o 'core=[A-Za-z0-9]*' | head -1 | cut -d= -f2)
OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-$core} /usr/bin/python3 "$RQ_ROOT/tests/reference/pqi_eager.py" \
  --model "$M7" --wq "$tmp/wq.safetensors" --seqs "$S" --seq-len 256 --microbatch 4 --nodes 32 \
  --threads "$TH" > "$tmp/eager"
sed 's/^/  /' "$tmp/eager"
grep -E "pqi P|self-test" "$tmp/cpp" | sed 's/^/  requant-dist: /'
E=$(grep -o 'rel [0-9.e+-]*' "$tmp/eager" | awk '{print $2}')
Te=$(awk '/eager right/ {print $(NF-1)}' "$tmp/eager")
best=""; best_t=""
for rule in midpoint trapezoid; do
  for N in 1 2 3 4 6 8 12 16 24 32; do
    "${BQ[@]}" --rule "$rule" --nodes "$N" > "$tmp/run"
    rel=$(awk '/self-test/ {print $NF}' "$tmp/run")
    wall=$(awk '/pqi P/ {for (i = 1; i < NF; i++) if ($(i + 1) == "s") {print $i; exit}}' "$tmp/run")
    echo "  requant-dist $rule N=$N: rel $rel, $wall s"
    if awk -v r="$rel" -v e="$E" 'BEGIN {exit !(r <= e)}'; then
      if [ -z "$best_t" ] || awk -v a="$wall" -v b="$best_t" 'BEGIN {exit !(a < b)}'; then
        best="$rule N=$N"; best_t=$wall
      fi
      break
    fi
  done
done
if [ -n "$best" ]; then
  awk -v te="$Te" -v t="$best_t" -v b="$best" -v e="$E" 'BEGIN {
    printf "# time to the eager recipe'"'"'s error %s: requant-dist %s %.1f s, eager right N=32 %.1f s: %.2fx (target >= 8x)\n", e, b, t, te, te / t }'
else
  echo "# no requant-dist rule reached the eager recipe's error $E within N = 32"
fi
