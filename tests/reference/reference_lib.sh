# Sourced by the reference tests: `run NAME JOB LAYER [--set ...]` runs requant-dist with a
# layer dump and then $ref (the independent implementation) on that dump; `tiny_job METHOD
# [KEY = VALUE lines]` writes $tmp/tiny.toml, llama3-tiny-random calibrated on 16 x 128 seeded
# random tokens of its 1024-token vocabulary; `refused NAME...` checks that $ref fails on the
# changed dumps $tmp/NAME.h5 (negative controls). Needs $bin, $root and $ref.
source "$root/tests/cli/check_lib.sh"
[ -d "$root/../shared/models" ] || { echo "FAIL: ../shared not found beside the checkout"; exit 1; }
py=/usr/bin/python3
$py -c "import torch, h5py, sklearn" 2>/dev/null \
  || { echo "FAIL: needs python3-torch, python3-h5py and python3-sklearn"; exit 1; }

run() {  # run NAME JOB LAYER [--set ...]: the run, then the reference on its dump
  local name=$1 job=$2 layer=$3; shift 3
  local t0=$SECONDS
  "$bin" run "$job" --out "$tmp/$name" --set data.calibration_seqs=8 --set data.eval_max_seqs=2 \
    --dump-layer "$layer" "$@" > "$tmp/$name.log" 2>&1 || { fail "$name: run: $(tail -3 "$tmp/$name.log")"; return; }
  local dump; dump=$(printf '%s/%s/dump/layer-%03d.h5' "$tmp" "$name" "$layer")
  if $py "$ref" "$dump" > "$tmp/$name.ref" 2>&1; then
    ok "$name: $(tail -1 "$tmp/$name.ref") ($((SECONDS - t0)) s)"
  else
    cat "$tmp/$name.ref"; fail "$name: the reference disagrees"
  fi
}

refused() {  # refused NAME...: $ref must fail on each changed dump $tmp/NAME.h5
  local bad
  for bad in "$@"; do
    if $py "$ref" "$tmp/$bad.h5" > "$tmp/$bad.ref" 2>&1; then
      cat "$tmp/$bad.ref"; fail "the reference passes a changed dump ($bad)"
    else
      ok "changed dump ($bad): $(grep -c MISMATCH "$tmp/$bad.ref") flagged, the first: $(grep -m1 MISMATCH "$tmp/$bad.ref")"
    fi
  done
}

tiny_job() {  # tiny_job METHOD [extra [quant] lines]
  local method=$1; shift
  local tiny=$root/../shared/models/llama3-tiny-random
  [ -f "$tmp/random-tokens.safetensors" ] || $py - "$tmp/random-tokens.safetensors" <<'PY'
import json, struct, sys
import numpy as np
tokens = np.random.default_rng(20261203).integers(0, 1024, size=(16, 128), dtype=np.int64)
head = json.dumps({"tokens": {"dtype": "I64", "shape": list(tokens.shape),
                              "data_offsets": [0, tokens.nbytes]}}).encode()
head += b" " * (-len(head) % 8)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(head)) + head + tokens.tobytes())
PY
  {
    printf '[model]\npath = "%s"\n[data]\n' "$tiny"
    printf 'calibration = "%s"\nseq_len = 128\neval = ["%s"]\n' \
      "$tmp/random-tokens.safetensors" "$tmp/random-tokens.safetensors"
    printf '[quant]\nmethod = "%s"\n' "$method"
    printf '%s\n' "$@"
  } > "$tmp/tiny.toml"
}
