#!/usr/bin/env bash
# AWQ against an independent implementation (tests/reference/awq_reference.py, PyTorch from
# Debian's python3-torch), on real layer inputs: `requant-dist run --dump-layer L` writes the
# layer's weights, every row of its block inputs, the sampled rows, mean|x|, the RoPE tables and
# the run's in_scale, grids and codes. The script searches alpha on the block outputs (attention
# through softmax and o_proj; MLP) and the clipping ranges itself and compares: the same alpha
# per group (or a near-tie within 1e-6), the same clip per (row, group), equal codes. Cells:
#   llama-7m-en (GQA; calibration: sotu-1790-1980 windows), 4-bit g128, layer 1;
#   3-bit g64 with 0.5% fixed outliers (they keep W in the block loss), layer 6;
#   llama3-tiny-random (256/512 wide) on seeded random token sequences, 4-bit g128, layer 2.
# Negative controls: the script must FAIL on a dump whose q/k/v in_scale is set to alpha = 0,
# on one with one (row, group) grid of v_proj moved, and on one whose up_proj lost its row fold
# (out_scale, down_proj's s) with its codes and grids those of W diag(s) clipped unfolded.
# Usage: test_awq_reference.sh PATH/TO/requant-dist REPO_ROOT
set -uo pipefail
bin=$1; root=$2
ref=$root/tests/reference/awq_reference.py
source "$root/tests/reference/reference_lib.sh"

j7=$root/jobs/llama-7m-en-awq.toml
run awq4 "$j7" 1
run awq3 "$j7" 6 --set quant.bits=3 --set quant.group_size=64 --set requant.outlier_ratio=0.005 \
  --set requant.outlier_select=fixed
tiny_job awq "bits = 4"
run tiny4 "$tmp/tiny.toml" 2

# Negative controls on copies of the 4-bit dump.
d=$tmp/awq4/dump/layer-001.h5
cp "$d" "$tmp/alpha.h5"; cp "$d" "$tmp/clip.h5"; cp "$d" "$tmp/fold.h5"
$py - "$tmp/alpha.h5" "$tmp/clip.h5" "$tmp/fold.h5" <<'PY'
import sys, h5py
with h5py.File(sys.argv[1], "r+") as f:
    f["q_proj/in_scale"][...] = 1.0
with h5py.File(sys.argv[2], "r+") as f:
    s = f["v_proj/scales"][()]
    s[0, 0] *= 0.9
    f["v_proj/scales"][...] = s
with h5py.File(sys.argv[3], "r+") as f:  # the row fold undone: grids back in W diag(s)'s scale
    r = f["up_proj/out_scale"][()]
    f["up_proj/scales"][...] = f["up_proj/scales"][()] * r[:, None]
    del f["up_proj/out_scale"]
PY
refused alpha clip fold

[ $fails -eq 0 ] && echo "PASS" || { echo "$fails FAILED"; exit 1; }
