#!/usr/bin/env bash
# Text data through a model folder's Llama 3 tokenizer.json: a small random model with the
# Llama 3 vocabulary (128 256) and ../shared/tokenizers/llama3's tokenizer files linked in.
# eval of a text file gives the perplexity of the reference token dataset of the same text bit
# for bit (same ids, same windows); a 2-rank run reads text calibration and evaluation through
# it; the tokenizer is in the run's fingerprint (a changed tokenizer.json is refused on resume);
# a folder with no usable tokenizer is refused with one clear message.
# Usage: test_llama3_text.sh PATH/TO/requant-dist REPO_ROOT PATH/TO/mpiexec
set -uo pipefail
bin=$1; root=$2; mpiexec=$3
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source "$(dirname "$0")/check_lib.sh"
shared=$(cd "$root/../shared" 2>/dev/null && pwd) || { echo "FAIL: ../shared not found beside the checkout"; exit 1; }
tok=$shared/tokenizers/llama3
m=$tmp/model
"$(dirname "$bin")/make_synthetic_model" "$m" --hidden 64 --ff 128 --layers 2 --heads 4 --kv 2 \
  --vocab 128256 > "$tmp/log" 2>&1 || { fail "make_synthetic_model: $(tail -2 "$tmp/log")"; exit 1; }

"$bin" eval --model "$m" --data "$shared/data/sotu-1981-2021.txt" --seq-len 512 --max-seqs 3 \
  > "$tmp/log" 2>&1; rc=$?
[ $rc -ne 0 ] && grep -q "no usable tokenizer (neither a byte-level BPE tokenizer.json nor a sentencepiece tokenizer.model)" "$tmp/log" \
  && ok "no tokenizer: $(grep -o 'no usable tokenizer.*' "$tmp/log" | head -1)" || fail "no tokenizer: rc $rc $(tail -2 "$tmp/log")"

ln -s "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$m/"
"$bin" eval --model "$m" --data "$shared/data/sotu-1981-2021.txt" --seq-len 512 --max-seqs 3 \
  --json "$tmp/text.json" > "$tmp/log" 2>&1 || fail "eval of text: $(tail -2 "$tmp/log")"
"$bin" eval --model "$m" --data "$shared/data/llama3-tokens/sotu-1981-2021-512.safetensors" \
  --max-seqs 3 --json "$tmp/tokens.json" > "$tmp/log" 2>&1 || fail "eval of tokens: $(tail -2 "$tmp/log")"
a=$(val "$tmp/text.json" loss); b=$(val "$tmp/tokens.json" loss)
[ -n "$a" ] && [ "$a" = "$b" ] && ok "text through tokenizer.json: loss $a = the reference token dataset's" \
  || fail "loss of text '$a' vs token dataset '$b'"

job=$root/jobs/llama-7m-en-rtn.toml
RQ=(--set model.path="$m" --set data.calibration="$shared/data/mobydick.txt" --set data.seq_len=128
    --set data.calibration_seqs=4 --set data.eval="[\"$shared/data/sotu-1981-2021.txt\"]"
    --set data.eval_max_seqs=2 --set run.threads=1)
"$mpiexec" -np 2 "$bin" run "$job" --out "$tmp/run" "${RQ[@]}" > "$tmp/log" 2>&1 \
  && [ -f "$tmp/run/model.requant.h5" ] && ok "2-rank RTN run on text data through tokenizer.json" \
  || fail "run: $(tail -3 "$tmp/log")"

# The tokenizer shapes the data: a different tokenizer.json makes it another run.
rm "$m/tokenizer.json"
/usr/bin/python3 -c "import json,sys; t=json.load(open(sys.argv[1])); t['model']['ignore_merges']=False; json.dump(t,open(sys.argv[2],'w'))" \
  "$tok/tokenizer.json" "$m/tokenizer.json"
"$bin" run "$job" --out "$tmp/run" "${RQ[@]}" > "$tmp/log" 2>&1; rc=$?
[ $rc -ne 0 ] && grep -q "holds a run of another job (the data differ)" "$tmp/log" \
  && ok "a changed tokenizer.json refused on resume" || fail "changed tokenizer: rc $rc $(tail -2 "$tmp/log")"

[ $fails -eq 0 ] && echo "all llama3-text checks passed" || echo "$fails llama3-text checks failed"
exit $((fails > 0))
