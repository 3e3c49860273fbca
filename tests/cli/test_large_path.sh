#!/usr/bin/env bash
# The real-size path at a small size: launch/bench-1b.sh with a ~150 M-parameter model of the
# same kind (Llama 3 vocabulary, random BF16 weights in two shards, tied embeddings off) on 2
# ranks: GPTQ 4-bit g128 + PQI significant weights, export (f32), eval of the export, and one
# forward+backward of a 1024-token sequence. Checks that every step ran, that the export's
# perplexity is the run's bit for bit, that the PQI self-test holds, and that the script's
# summary has a plan-against-measured row per rank.
# Usage: test_large_path.sh PATH/TO/requant-dist REPO_ROOT PATH/TO/mpiexec
set -uo pipefail
bin=$1; root=$2
source "$(dirname "$0")/check_lib.sh"
RQ_BUILD=$(cd "$(dirname "$bin")/.." && pwd)
export RQ_BUILD
RQ_BENCH_SHAPE="--hidden 512 --ff 2048 --layers 4 --heads 8 --kv 2 --vocab 128256" \
  RQ_BENCH_LONG_SEQ=1024 "$root/launch/bench-1b.sh" "$tmp/b" > "$tmp/log" 2>&1
rc=$?
[ $rc -eq 0 ] && ok "launch/bench-1b.sh ran on the small shape" || { fail "bench-1b.sh: exit $rc"; tail -40 "$tmp/log"; }
run_ppl=$(/usr/bin/python3 -c "import json,sys; print(repr(json.load(open(sys.argv[1]))['perplexity']['sotu-1981-2021-512.safetensors']))" "$tmp/b/run/results.json" 2>/dev/null)
eval_ppl=$(/usr/bin/python3 -c "import json,sys; print(repr(json.load(open(sys.argv[1]))['perplexity']))" "$tmp/b/eval.json" 2>/dev/null)
[ -n "$run_ppl" ] && [ "$run_ppl" = "$eval_ppl" ] && ok "eval of the f32 export: perplexity $eval_ppl = the run's" \
  || fail "perplexity: run '$run_ppl', eval of the export '$eval_ppl'"
rel=$(sed -n 's/^self-test round 1: .*|sum PQI - dF|\/|dF| \([0-9.e+-]*\)$/\1/p' "$tmp/log")
[ -n "$rel" ] && awk -v r="$rel" 'BEGIN { exit !(r < 0.05) }' && ok "PQI self-test: |sum PQI - dF|/|dF| = $rel" \
  || fail "self-test error '$rel'"
rows=$(grep -cE '^ +[01] +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+$' "$tmp/log")
[ "$rows" = 2 ] && ok "plan against measured peak RSS, both ranks:" && sed -n '/^rank  start-up/,/^self-test/p' "$tmp/log" | head -3 \
  || fail "summary rows: $rows"
grep -q "pass P=2 1x1024 tokens" "$tmp/log" && ok "1024-token forward+backward: $(grep -o 'pass P=2.*' "$tmp/log")" \
  || fail "no long pass"
[ $fails -eq 0 ] && echo "all large-path checks passed" || echo "$fails large-path checks failed"
exit $((fails > 0))
