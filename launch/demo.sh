#!/usr/bin/env bash
# Sets up (packages + build) and runs the main job on the bundled default model: evaluates
# llama-7m-en on the first 64 windows of 256 tokens of the held-out sotu-1981-2021.txt, and
# checks the perplexity against REFERENCE.md (89.3739).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$RQ_ROOT/launch/setup.sh"
rq_need_shared
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$RQ_BIN" eval --model "$RQ_SHARED/models/llama-7m-en" --data "$RQ_SHARED/data/sotu-1981-2021.txt" \
  --seq-len 256 --max-seqs 64 --json "$out/eval.json"
ppl=$(sed -n 's/.*"perplexity": *\([0-9.]*\).*/\1/p' "$out/eval.json")
if awk -v p="$ppl" 'BEGIN { d = p - 89.3739; if (d < 0) d = -d; exit !(d <= 89.3739e-4) }'; then
  echo "demo: perplexity $ppl matches REFERENCE.md (89.3739) -- OK"
else
  echo "demo: perplexity $ppl differs from REFERENCE.md (89.3739) -- FAILED" >&2
  exit 1
fi
