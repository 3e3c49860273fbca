#!/usr/bin/env python3
"""Compares the runs of two launch/regress.sh directories: BASE and NEW, cell by cell.

For each cell: model.requant.h5 (every dataset's dtype, shape and bytes, every attribute, except
the root attribute `run`, the job fingerprint), results.json (every value except phase times,
version and paths), and for sensitivity runs pqi.h5 and the report CSVs. Outputs that only NEW
has (a dataset, attribute or key a feature added) are listed, prefixed "+", and do not count as
a difference; anything changed or missing in NEW does. Prints one line per cell ("same" or where
it differs) and exits 1 if any cell differs or is missing; a cell only NEW has (a job added
since the baseline) is listed as "new" and does not count.
Usage: regress_compare.py BASE NEW CELL...
"""
import json
import math
import os
import sys

import h5py
import numpy as np

IGNORED_ATTRS = {"/": {"run"}}  # the job fingerprint: changes whenever a job key is added
IGNORED_KEYS = {"phases", "version", "load", "replicas"}  # seconds, the version, per-rank load



def h5_items(path):
    """{object path: ("dataset", dtype, shape, bytes) | ("group",)}, {(path, attr): value}."""
    objs, attrs = {}, {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            key = "/" + name
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                raw = data.tobytes() if isinstance(data, np.ndarray) else repr(data).encode()
                objs[key] = ("dataset", str(obj.dtype), obj.shape, raw)
            else:
                objs[key] = ("group",)
            for a, v in obj.attrs.items():
                attrs[(key, a)] = v
        for a, v in f.attrs.items():
            attrs[("/", a)] = v
        f.visititems(visit)
    return objs, attrs


def same_value(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def diff_h5(base, new):
    out = []
    bo, ba = h5_items(base)
    no, na = h5_items(new)
    for k in sorted(set(bo) | set(no)):
        if k not in no:
            out.append(f"{k}: missing in new")
        elif k not in bo:
            out.append(f"+ {k}: new object")
        elif bo[k][:3] != no[k][:3]:
            out.append(f"{k}: dtype/shape {bo[k][1:3]} -> {no[k][1:3]}")
        elif bo[k] != no[k]:
            b = np.frombuffer(bo[k][3], dtype=np.uint8)
            n = np.frombuffer(no[k][3], dtype=np.uint8)
            out.append(f"{k}: {int((b != n).sum())} of {b.size} bytes differ")
    for k in sorted(set(ba) | set(na)):
        if k[1] in IGNORED_ATTRS.get(k[0], set()):
            continue
        if k not in na or k not in ba:
            out.append(f"{k[0]}@{k[1]}: missing in new" if k not in na else f"+ {k[0]}@{k[1]}: new attribute")
        elif not same_value(ba[k], na[k]):
            out.append(f"{k[0]}@{k[1]}: {str(ba[k])[:60]} -> {str(na[k])[:60]}")
    return out


def diff_json(a, b, dirs, where=""):
    """Differences of two JSON values; strings are compared with each run's folder (dirs: base,
    new) written as <OUT>."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k in IGNORED_KEYS:
                continue
            if k not in a or k not in b:
                out.append(f"{where}/{k}: missing in new" if k not in b else f"+ {where}/{k}: new key")
            else:
                out += diff_json(a[k], b[k], dirs, f"{where}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} -> {len(b)} entries"]
        return [d for i, (x, y) in enumerate(zip(a, b))
                for d in diff_json(x, y, dirs, f"{where}[{i}]")]
    if isinstance(a, str) and isinstance(b, str):
        a, b = a.replace(dirs[0], "<OUT>"), b.replace(dirs[1], "<OUT>")
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{where}: {a!r} -> {b!r}"]


def diff_cell(base, new):
    out = []
    names = ["model.requant.h5", "pqi.h5"]
    for d in (base, new):  # the per-layer PQI files pqi.h5 links to
        if os.path.isdir(os.path.join(d, "pqi")):
            names += [os.path.join("pqi", f) for f in os.listdir(os.path.join(d, "pqi"))]
    for name in sorted(set(names)):
        b, n = os.path.join(base, name), os.path.join(new, name)
        if os.path.exists(b) or os.path.exists(n):
            if not (os.path.exists(b) and os.path.exists(n)):
                out.append(f"{name}: present in only one")
            else:
                out += [f"+ {name} {d[2:]}" if d.startswith("+ ") else f"{name} {d}"
                        for d in diff_h5(b, n)]
    b, n = os.path.join(base, "results.json"), os.path.join(new, "results.json")
    if not (os.path.exists(b) and os.path.exists(n)):
        out.append("results.json: missing")
    else:
        out += [f"+ results.json {d[2:]}" if d.startswith("+ ") else f"results.json {d}"
                for d in diff_json(json.load(open(b)), json.load(open(n)), (base, new))]
    rb, rn = os.path.join(base, "report"), os.path.join(new, "report")
    if os.path.isdir(rb):
        for f in sorted(os.listdir(rb)):
            if f.endswith(".csv"):
                pb, pn = os.path.join(rb, f), os.path.join(rn, f)
                if not os.path.exists(pn) or open(pb, "rb").read() != open(pn, "rb").read():
                    out.append(f"report/{f}: differs")
    return out


def main():
    base, new, cells = sys.argv[1], sys.argv[2], sys.argv[3:]
    n_diff = n_new = 0
    for c in cells:
        if not os.path.isdir(os.path.join(base, c)) and os.path.isdir(os.path.join(new, c)):
            n_new += 1  # a job added since the baseline: nothing to compare it with
            print(f"new     {c}: not in the baseline")
            continue
        all_lines = diff_cell(os.path.join(base, c), os.path.join(new, c))
        d = [x for x in all_lines if not x.startswith("+ ")]
        added = [x for x in all_lines if x.startswith("+ ")]
        if added:
            print(f"added   {c}: " + "; ".join(x[2:] for x in added[:4])
                  + (f"; ... ({len(added)} in all)" if len(added) > 4 else ""))
        if d:
            n_diff += 1
            print(f"DIFFERS {c}:")
            for line in d[:12]:
                print(f"    {line}")
            if len(d) > 12:
                print(f"    ... and {len(d) - 12} more")
        else:
            print(f"same    {c}")
    print(f"regress: {len(cells) - n_diff - n_new} of {len(cells) - n_new} runs the same as {base}"
          + (f" ({n_new} new)" if n_new else ""))
    sys.exit(1 if n_diff else 0)


if __name__ == "__main__":
    main()
