#!/usr/bin/env python3
"""SqueezeLLM's dense part by the reference recipe (Kim et al., 2023; SqueezeAILab/SqueezeLLM
clusters each output row with scikit-learn's KMeans, the Fisher diagonal as sample_weight,
max_iter 50, tol 1e-4), run with Debian's python3-sklearn on one decoder layer dumped by
`requant-dist run --dump-layer L` (include/requant/store/dump.h), and compared with the run.

Both start from the same k-means++ centres (the dump's `lut_init`: the two random generators
differ, so the start is passed in, and Lloyd's iterations are what is compared). The weights
and Fisher values the method was given are the dump's with the sparse weights (`sparse`)
zeroed; as the reference, a weight that is exactly 0 gets sample weight 0, and a row whose
sample weights are all zero is clustered with uniform weights. The LUT is
the centres rounded to fp16, ascending; each weight takes its nearest level.

Comparison, per linear: the weighted objective sum f (w - lut[code])^2 of the run's stored LUT
and codes against sklearn's, within --rel (0.5%) in total; rows with at most K distinct fp16
values (no start: NaN) must be exact in both. Exit status 1 otherwise.

Usage: squeezellm_reference.py DUMP.h5 [--rel 0.005]
"""
import argparse
import sys
import warnings

import h5py
import numpy as np
from sklearn.cluster import KMeans

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def attr(at, key):
    v = at[key]
    return v.decode() if isinstance(v, bytes) else v


def objective(w, f, lut, codes):
    return float((f * (w.astype(np.float64) - lut[np.arange(len(lut))[:, None], codes]) ** 2).sum())


def reference_row(w, f, init, iters):
    km = KMeans(n_clusters=len(init), init=init.reshape(-1, 1), n_init=1, max_iter=iters,
                tol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate points or fewer distinct than clusters
        km.fit(w.reshape(-1, 1), sample_weight=f)
    lut = np.sort(km.cluster_centers_.reshape(-1).astype(np.float16).astype(np.float32))
    d = np.abs(w[:, None].astype(np.float64) - lut[None, :])
    return lut, d.argmin(axis=1)  # the first (lowest) level on ties


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dump")
    ap.add_argument("--rel", type=float, default=0.005)
    a = ap.parse_args()
    f5 = h5py.File(a.dump, "r")
    at = f5["/"].attrs
    if attr(at, "method") != "squeezellm" or attr(at, "kmeans_init") != "kmeans++":
        sys.exit(f"{a.dump}: needs a squeezellm run with kmeans_init = kmeans++")
    bits, iters = int(at["bits"]), int(at["kmeans_iters"])
    print(f"{a.dump}: layer {int(at['layer'])}, {bits} bits, {iters} iterations at most")
    bad = 0
    for name in LINEARS:
        g = f5[name]
        w = g["weight"][()].astype(np.float32)
        fi = g["fisher"][()].astype(np.float64)
        if "sparse" in g:
            m = g["sparse"][()].astype(bool)
            w, fi = np.where(m, 0, w).astype(np.float32), np.where(m, 0, fi)
        fi = fi * (w != 0)  # nuq.py: sample_weight = g * (w != 0)
        fi[~(fi > 0).any(axis=1)] = 1.0  # all-zero rows: uniform weights
        init, lut_run, codes_run = g["lut_init"][()], g["lut"][()], g["codes"][()].astype(int)
        mine = theirs = 0.0
        n_exact = n_exact_bad = 0
        worst = 0.0
        for r in range(w.shape[0]):
            e_run = objective(w[r:r + 1], fi[r:r + 1], lut_run[r:r + 1], codes_run[r:r + 1])
            if np.isnan(init[r]).any():  # an exact row: the run's levels are its values
                n_exact += 1
                n_exact_bad += e_run != 0.0
                continue
            lut, codes = reference_row(w[r], fi[r], np.sort(init[r]), iters)
            e_ref = objective(w[r:r + 1], fi[r:r + 1], lut[None, :], codes[None, :])
            mine, theirs = mine + e_run, theirs + e_ref
            worst = max(worst, abs(e_run - e_ref) / max(e_ref, 1e-30))
        rel = abs(mine - theirs) / max(theirs, 1e-30)
        ok = rel <= a.rel and n_exact_bad == 0
        bad += not ok
        print(f"  {name:9s} {w.shape}: objective run {mine:.6e}, sklearn {theirs:.6e}, "
              f"rel {rel:.2e} (worst row {worst:.2e}); {n_exact} exact rows"
              f"{'' if ok else '  <-- MISMATCH'}")
    print(f"squeezellm reference: {'PASS' if bad == 0 else 'FAIL'}")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
