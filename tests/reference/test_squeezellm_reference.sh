#!/usr/bin/env bash
# SqueezeLLM against the reference recipe (tests/reference/squeezellm_reference.py: Debian's
# scikit-learn KMeans, the Fisher diagonal as sample_weight), on real layer inputs: `requant-dist
# run --dump-layer L` writes the layer's weights, Fisher diagonals, k-means++ starts and the
# run's LUTs and codes; sklearn runs Lloyd from the same starts and the weighted objectives must
# agree within 0.5% per linear. Cells:
#   llama-7m-en (calibration: sotu-1790-1980 windows), the Dense-and-Sparse job at 4 bits
#   (0.45% range-rule outliers, 0.05% Fisher-sensitive weights: zeroed in the fit);
#   the same at 3 bits without sparse weights;
#   llama3-tiny-random at 4 bits on seeded random token sequences of its vocabulary.
# Negative controls: the script must FAIL on a dump whose LUT is moved and on one that claims
# a single Lloyd iteration.
# Usage: test_squeezellm_reference.sh PATH/TO/requant-dist REPO_ROOT
set -uo pipefail
bin=$1; root=$2
ref=$root/tests/reference/squeezellm_reference.py
source "$root/tests/reference/reference_lib.sh"

j7=$root/jobs/llama-7m-en-squeezellm-ds.toml
run ds4 "$j7" 1
run dense3 "$j7" 3 --set quant.bits=3 --set requant.outlier_ratio=0 --set requant.outlier_select=none \
  --set requant.significant_ratio=0
tiny_job squeezellm "bits = 4"
run tiny4 "$tmp/tiny.toml" 2

# Negative controls on copies of the 4-bit dump.
d=$tmp/ds4/dump/layer-001.h5
cp "$d" "$tmp/lut.h5"; cp "$d" "$tmp/iters.h5"
$py - "$tmp/lut.h5" "$tmp/iters.h5" <<'PY'
import sys, h5py
with h5py.File(sys.argv[1], "r+") as f:
    f["o_proj/lut"][...] = f["o_proj/lut"][()] * 1.05
with h5py.File(sys.argv[2], "r+") as f:
    f["/"].attrs["kmeans_iters"] = 1
PY
refused lut iters

[ $fails -eq 0 ] && echo "PASS" || { echo "$fails FAILED"; exit 1; }
