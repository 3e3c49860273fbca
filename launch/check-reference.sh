#!/usr/bin/env bash
# Reproduces every loss/perplexity row of the bundled models' REFERENCE.md tables with
# `requant-dist eval`, including the all-window rows (minutes on 2 cores), and checks each to
# 1e-4 relative. Needs a build (launch/setup.sh).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
rq_need_shared
M=$RQ_SHARED/models D=$RQ_SHARED/data
fails=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
row() {  # row WANT_LOSS WANT_PPL eval-args...
  local wl=$1 wp=$2; shift 2
  local t0=$SECONDS
  "$RQ_BIN" eval "$@" --json "$tmp/e.json" > /dev/null 2>&1 || { echo "FAIL: eval $*"; fails=$((fails+1)); return; }
  local l p; l=$(sed -n 's/.*"loss": *\([0-9.e+-]*\).*/\1/p' "$tmp/e.json"); p=$(sed -n 's/.*"perplexity": *\([0-9.e+-]*\).*/\1/p' "$tmp/e.json")
  local s; s=$(sed -n 's/.*"seqs": *\([0-9]*\).*/\1/p' "$tmp/e.json")
  if awk -v l="$l" -v wl="$wl" -v p="$p" -v wp="$wp" 'BEGIN{a=l-wl;if(a<0)a=-a;b=p-wp;if(b<0)b=-b;exit !(a<=wl*1e-4 && (wp=="-" || b<=wp*1e-4))}'; then
    printf "ok    %-20s %-26s seqs %5s  loss %.6f (%s)  ppl %.4f (%s)  %ds\n" "$(basename "$2")" \
      "$(basename "$4")" "$s" "$l" "$wl" "$p" "$wp" $((SECONDS-t0))
  else
    printf "FAIL  %s: loss %s (want %s) ppl %s (want %s)\n" "$*" "$l" "$wl" "$p" "$wp"; fails=$((fails+1))
  fi
}
E="--model $M/llama-7m-en --data"
row 4.492829 89.3739  $E $D/sotu-1981-2021.txt --max-seqs 64
row 4.717781 111.9196 $E $D/sotu-1981-2021.txt
row 5.141365 170.9489 $E $D/mobydick.txt --max-seqs 64
row 5.157193 173.6763 $E $D/mobydick.txt
row 4.010465 55.1725  $E $D/sotu-1790-1980.txt --max-seqs 64
row 2.887033 17.9400  --model $M/stories260k --data $M/stories260k/calib-tokens.safetensors
row 2.858844 17.4413  --model $M/stories260k --data $M/stories260k/eval-tokens.safetensors
row 8.108137 -        --model $M/llama3-tiny-random --data $M/llama3-tiny-random/reference.safetensors
[ $fails -eq 0 ] && echo "check-reference: all rows reproduced" || { echo "check-reference: $fails rows FAILED"; exit 1; }
