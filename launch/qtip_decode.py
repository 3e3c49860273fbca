#!/usr/bin/python3
"""Decode a QTIP linear of a requant-dist checkpoint (model.requant.h5) with h5py and numpy
alone, from what the file stores: the tiles' trellis bits, the sign vectors, Wscale, HYB's table
and the Kronecker factors (DESIGN.md §4, PAPER.md §9). Written from the format's description,
independently of the C++ decoder, so that it checks the file is self-describing.

  qtip_decode.py CHECKPOINT LAYER LINEAR [--compare EXPORT_DIR]

prints the weight's shape and norm; with --compare, the largest difference from the exported
Hugging Face weight (model*.safetensors in EXPORT_DIR, written by `requant-dist export`), and
exits 1 when it exceeds 1e-5 of the weight's largest entry.
"""
import argparse, glob, json, struct, sys

import h5py
import numpy as np

L = 16  # trellis state bits


def code_values(code, states, lut):
    """The V values of each state (uint32 array): [n, V]."""
    s = states.astype(np.uint64)
    if code == "hyb":  # idx from s (s + 1); the first value's sign from bit 15 of it
        h = (s * (s + 1)) & 0xFFFFFFFF
        idx = (h >> 6) & 511
        v0 = lut[idx, 0].astype(np.float64) * np.where((h >> 15) & 1, -1.0, 1.0)
        return np.stack([v0, lut[idx, 1].astype(np.float64)], axis=1)
    if code == "1mad":
        x = (34038481 * s + 76625530) & 0xFFFFFFFF
        y = (x & 255) + ((x >> 8) & 255) + ((x >> 16) & 255) + (x >> 24)
        return ((y.astype(np.float64) - 510) / 147.800537109375)[:, None]
    if code == "3inst":
        x = (89226354 * s + 64248484) & 0xFFFFFFFF
        r = (x & 0x8FFF8FFF) ^ 0x3B603B60
        hi = (r >> 16).astype(np.uint16).view(np.float16)
        lo = (r & 0xFFFF).astype(np.uint16).view(np.float16)
        return (hi + lo).astype(np.float64)[:, None]  # the fp16 sum, as the code defines it
    raise ValueError("unknown code " + code)


def decode_tiles(trellis, K, V, code, lut):
    """X [O', I'] from the tiles: uint8 [O'/16, I'/16, 32 K], each 256 K bits, MSB first."""
    nr, nc, _ = trellis.shape
    T, kv = 256, K * V
    bits = np.unpackbits(trellis, axis=-1).astype(np.uint32)  # [nr, nc, 256 K]
    S = T // V
    pos = (np.arange(S)[:, None] * kv + np.arange(L)[None, :]) % (T * K)  # cyclic: tail-biting
    states = (bits[..., pos] << np.arange(L - 1, -1, -1, dtype=np.uint32)).sum(-1)  # [nr, nc, S]
    vals = code_values(code, states.reshape(-1), lut).reshape(nr, nc, T)  # state t -> weights tV..
    return vals.reshape(nr, nc, 16, 16).transpose(0, 2, 1, 3).reshape(nr * 16, nc * 16)


def hadamard(n):
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def transform(n, f):
    """U_n = kron(Q_m^T, H_{n/m}), m the odd part of n."""
    m = n
    while m % 2 == 0:
        m //= 2
    h = hadamard(n // m)
    return np.kron(f["qtip/factors/%d" % m][...].T, h) if m > 1 else h


def decode(f, layer, linear):
    g = f["layers/%03d/%s" % (layer, linear)]
    K, code = int(g.attrs["bits"]), g.attrs["code"]
    code = code.decode() if isinstance(code, bytes) else code
    V = 2 if code == "hyb" else 1
    lut = f["qtip/lut"][...] if code == "hyb" else None
    x = decode_tiles(g["trellis"][...], K, V, code, lut) * float(g.attrs["wscale"])
    n_r, n_c = x.shape
    s_r = 1.0 - 2.0 * np.unpackbits(g["signs_rows"][...])[:n_r]
    s_c = 1.0 - 2.0 * np.unpackbits(g["signs_cols"][...])[:n_c]
    w = (s_r[:, None] * transform(n_r, f)) @ x @ (transform(n_c, f).T * s_c[None, :])
    return w[: int(g.attrs["rows"]), : int(g.attrs["cols"])]


def exported(folder, name):
    for path in sorted(glob.glob(folder + "/model*.safetensors")):
        with open(path, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
            if name in header:
                t = header[name]
                assert t["dtype"] == "F32", "export with --dtype f32"
                a, b = t["data_offsets"]
                fh.seek(8 + n + a)
                return np.frombuffer(fh.read(b - a), np.float32).reshape(t["shape"])
    raise KeyError(name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("layer", type=int)
    ap.add_argument("linear")
    ap.add_argument("--compare", metavar="EXPORT_DIR")
    a = ap.parse_args()
    with h5py.File(a.checkpoint, "r") as f:
        w = decode(f, a.layer, a.linear)
    print("layer %d %s: %s, |W| %.6f" % (a.layer, a.linear, w.shape, np.linalg.norm(w)))
    if a.compare:
        part = "self_attn" if a.linear in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        e = exported(a.compare, "model.layers.%d.%s.%s.weight" % (a.layer, part, a.linear))
        diff = float(np.abs(w - e).max())
        print("largest difference from the export: %.3e (largest entry %.3e)" % (diff, np.abs(e).max()))
        if not diff <= 1e-5 * np.abs(e).max():
            sys.exit(1)


if __name__ == "__main__":
    main()
