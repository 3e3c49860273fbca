#!/usr/bin/env bash
# End-to-end checks of the requant-dist command line: --help/--version, eval on the bundled
# models against REFERENCE.md, and one clear error with a non-zero exit for bad input.
# Usage: test_cli.sh PATH/TO/requant-dist PATH/TO/shared
set -uo pipefail
bin=$1; shared=$2; M=$shared/models
source "$(dirname "$0")/check_lib.sh"
[ -d "$M" ] || { echo "FAIL: $M not found (tests need ../shared)"; exit 1; }

"$bin" --help | grep -q "eval" && ok "--help lists eval" || fail "--help"
"$bin" --version | grep -q "^requant-dist [0-9]" && ok "--version" || fail "--version"
"$bin" --version | grep -q "BLAS:" && ok "--version reports the BLAS" || fail "--version BLAS"

# check NAME KEY WANT eval-args...: the JSON value within 1e-4 relative
check() {
  local name=$1 key=$2 want=$3; shift 3
  if ! "$bin" eval "$@" --json "$tmp/e.json" > "$tmp/out" 2> "$tmp/err"; then
    fail "$name: eval exited non-zero: $(tail -1 "$tmp/err")"; return
  fi
  local got; got=$(sed -n "s/.*\"$key\": *\([0-9.e+-]*\).*/\1/p" "$tmp/e.json")
  awk -v g="$got" -v w="$want" 'BEGIN { d = g - w; if (d < 0) d = -d; exit !(g != "" && d <= w * 1e-4) }' \
    && ok "$name: $key $got (REFERENCE.md $want)" || fail "$name: $key ${got:-missing}, want $want"
}
check stories260k perplexity 17.4413 --model "$M/stories260k" --data "$M/stories260k/eval-tokens.safetensors"
check llama3-tiny-random loss 8.108137 --model "$M/llama3-tiny-random" --data "$M/llama3-tiny-random/reference.safetensors"
check llama-7m-en perplexity 89.3739 --model "$M/llama-7m-en" --data "$shared/data/sotu-1981-2021.txt" --seq-len 256 --max-seqs 64
grep -q '"seqs": 64' "$tmp/e.json" && grep -q '"tokens": 16320' "$tmp/e.json" \
  && ok "eval --json has seqs and tokens" || fail "eval --json fields: $(cat "$tmp/e.json")"

# expect_error NAME NEEDLE eval-args...: non-zero exit, one line naming the problem, no crash
expect_error() {
  local name=$1 needle=$2; shift 2
  "$bin" eval "$@" > "$tmp/out" 2> "$tmp/err"; local rc=$?
  if [ $rc -eq 0 ]; then fail "$name: exit 0"; return; fi
  if [ $rc -gt 2 ]; then fail "$name: exit $rc (crash?)"; return; fi
  grep -q -- "$needle" "$tmp/err" && ok "$name: exit $rc, '$(grep -- "$needle" "$tmp/err" | head -1)'" \
    || fail "$name: message lacks '$needle': $(cat "$tmp/err")"
}
expect_error "no tokenizer" "tokenizer.model" --model "$M/stories260k" --data "$shared/data/mobydick.txt"
head -c 1000 "$M/stories260k/model.safetensors" > "$tmp/trunc.safetensors"
mkdir -p "$tmp/bad"; cp "$M/stories260k/config.json" "$tmp/bad/"; cp "$tmp/trunc.safetensors" "$tmp/bad/model.safetensors"
expect_error "truncated weights" "model.safetensors" --model "$tmp/bad" --data "$M/stories260k/eval-tokens.safetensors"
sed 's/"hidden_size": 64/"hidden_size": 96/' "$M/stories260k/config.json" > "$tmp/bad/config.json"
cp "$M/stories260k/model.safetensors" "$tmp/bad/"
expect_error "config disagrees with weights" "wrong shape" --model "$tmp/bad" --data "$M/stories260k/eval-tokens.safetensors"
expect_error "token ids beyond vocab" "outside the model's vocabulary" --model "$M/stories260k" --data "$M/llama-7m-en/reference.safetensors"
# Non-finite weights: a NaN (F32), an Inf (F32) and a BF16 NaN, each refused at load with the
# file and tensor named.
poison() {  # poison SRC DST TENSOR VALUE_BYTES_HEX ELEMENT: one element overwritten
  /usr/bin/python3 - "$@" <<'PY'
import json, shutil, struct, sys
src, dst, name, value, elem = sys.argv[1], sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4]), int(sys.argv[5])
shutil.copyfile(src, dst)
with open(dst, "r+b") as f:
    n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n))
    f.seek(8 + n + h[name]["data_offsets"][0] + elem * len(value)); f.write(value)
PY
}
mkdir -p "$tmp/nan"; cp "$M/stories260k/config.json" "$tmp/nan/"
poison "$M/stories260k/model.safetensors" "$tmp/nan/model.safetensors" model.layers.3.mlp.down_proj.weight 0000c07f 77
expect_error "NaN weight" "model.safetensors: tensor 'model.layers.3.mlp.down_proj.weight' holds NaN at element 77" \
  --model "$tmp/nan" --data "$M/stories260k/eval-tokens.safetensors"
poison "$M/stories260k/model.safetensors" "$tmp/nan/model.safetensors" model.embed_tokens.weight 0000807f 3
expect_error "Inf weight" "tensor 'model.embed_tokens.weight' holds +Inf at element 3" \
  --model "$tmp/nan" --data "$M/stories260k/eval-tokens.safetensors"
mkdir -p "$tmp/bf"; cp "$M/llama-7m-en/config.json" "$M/llama-7m-en/tokenizer.model" "$tmp/bf/"
poison "$M/llama-7m-en/model.safetensors" "$tmp/bf/model.safetensors" model.layers.2.self_attn.q_proj.weight c1ff 1000
expect_error "BF16 NaN weight" "model.safetensors: tensor 'model.layers.2.self_attn.q_proj.weight'" \
  --model "$tmp/bf" --data "$M/llama-7m-en/reference.safetensors"
grep -q "holds NaN at element 1000 of \[.*\] (BF16)" "$tmp/err" && ok "BF16 NaN: $(grep -o 'holds NaN.*(BF16)' "$tmp/err")" \
  || fail "BF16 NaN message: $(cat "$tmp/err")"
expect_error "missing model folder" "model" --model "$tmp/nope" --data "$M/stories260k/eval-tokens.safetensors"

[ $fails -eq 0 ] && echo "all CLI checks passed" || echo "$fails CLI checks failed"
exit $((fails > 0))
