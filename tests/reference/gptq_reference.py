#!/usr/bin/env python3
"""GPTQ written independently of this project's C++, from the paper (Frantar et al., 2023,
Algorithm 1) and a reading of the reference `fasterquant` (IST-DASLab/gptq, gptq.py and
quant.py), run on one decoder layer dumped by `requant-dist run --dump-layer L`
(include/requant/store/dump.h) and compared with the codes, grids and g_idx the run made.

What the reference does, step by step (and this script with it):
  - H = X^T X (any positive multiple: dampening is relative to mean diag H); columns with
    diag H = 0 are dead: H[d, d] = 1 and W[:, d] = 0;
  - --static-groups: every group's grid fitted on W up front, in the original column order;
  - act-order: columns by decreasing diag H (torch.argsort(descending=True));
  - H += damp * mean(diag H) * I; Hinv = upper Cholesky factor of H^-1;
  - blocks of `block_size` columns; in each, column by column: a group's grid is fitted on
    W[:, c : c + G] when column c = i1 + i starts a group (W: as it stood when the block began),
    q = clamp(round(w / scale) + zero, 0, maxq), err = (w - dequant(q)) / Hinv[c, c],
    W1[:, c:] -= err * Hinv[c, c:]; after the block, W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:];
  - g_idx: with act-order (and dynamic groups) column j's group is invperm[j] // G.
  - find_params (asymmetric, per row): xmin = min(min x, 0), xmax = max(max x, 0), a row of
    zeros gets [-1, 1], scale = (xmax - xmin) / maxq, zero = round(-xmin / scale).

Where this project's storage fixes a choice the reference leaves to its packer, the script
follows the project, and says so: the scale is rounded UP to fp16 before the zero point is
taken (the stored grid is the one quantized on; the reference rounds fp32 scales to fp16 only
when packing), the grid is computed on float32 copies of the weights (as the reference, which
runs in float32), the error feedback in float64.

ReQuant's sparse weights (the dump's `sparse` mask): kept at their value when their column is
reached, no error passed on (as SpQR), and left out of the grid fits (set to 0, which the
range always holds).

Comparison, per linear: the codes must be the run's except where the unrounded value w/scale
lies within --tie (1e-6) of a rounding boundary; such a tie is counted and the run's code is
taken from there on, so one tie does not cascade. g_idx, scales and zeros must be equal. Exit
status 1 on any other difference.

Usage: gptq_reference.py DUMP.h5 [--tie 1e-6]
"""
import argparse
import sys

import h5py
import numpy as np
import torch

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
INPUT_OF = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "o_proj": "attn_out",
            "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp_out"}


def fp16_up(s):
    """float32 scale -> the smallest fp16 value >= it, as float32."""
    h = s.to(torch.float16)
    up = (h.view(torch.int16) + 1).view(torch.float16)
    return torch.where(h.float() < s, up.float(), h.float())


def find_params(x, maxq, mask=None):
    """The reference Quantizer.find_params(x, weight=True), asymmetric, per row; x [O, n]."""
    x = x.float()
    if mask is not None:
        x = x.masked_fill(mask, 0.0)
    xmin = torch.clamp(x.min(1).values, max=0)
    xmax = torch.clamp(x.max(1).values, min=0)
    both = (xmin == 0) & (xmax == 0)
    xmin[both], xmax[both] = -1, 1
    scale = fp16_up((xmax - xmin) / maxq)  # the project's storage (see the docstring)
    zero = torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


class Tally:
    def __init__(self):
        self.ties = 0
        self.other = 0
        self.worst = 0.0


def gptq(W, H, run_codes, mask, bits, G, damp, act_order, static_groups, block, tie, tally):
    """Returns (codes [O, I] uint8 in the original order, scales, zeros [O, NG], g_idx or None,
    kept [O, I]: the value each weight had when quantized)."""
    O, I = W.shape
    maxq = float(2 ** bits - 1)
    W, H = W.double().clone(), H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Gs = G if G > 0 else I
    NG = (I + Gs - 1) // Gs
    scales = torch.zeros(O, NG)
    zeros = torch.zeros(O, NG)
    groups = []
    if static_groups:
        for g in range(NG):
            sl = slice(g * Gs, min(I, (g + 1) * Gs))
            groups.append(find_params(W[:, sl], maxq, None if mask is None else mask[:, sl]))
            scales[:, g], zeros[:, g] = groups[-1][0][:, 0], groups[-1][1][:, 0]
    perm = torch.arange(I)
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
        run_codes = run_codes[:, perm]
        mask = None if mask is None else mask[:, perm]
    invperm = torch.argsort(perm)
    H[torch.arange(I), torch.arange(I)] += damp * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    Q = torch.zeros(O, I, dtype=torch.uint8)
    kept = torch.zeros(O, I, dtype=torch.float64)
    scale = zero = None
    for i1 in range(0, I, block):
        i2 = min(i1 + block, I)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            if static_groups:
                scale, zero = groups[int(perm[c]) // Gs]
            elif c % Gs == 0:
                sl = slice(c, min(I, c + Gs))
                scale, zero = find_params(W[:, sl], maxq, None if mask is None else mask[:, sl])
                scales[:, c // Gs], zeros[:, c // Gs] = scale[:, 0], zero[:, 0]
            w = W1[:, i:i + 1]
            u = w.float() / scale  # the unrounded level
            q = torch.clamp(torch.round(u) + zero, 0, maxq)
            theirs = run_codes[:, c:c + 1].float()
            for r in torch.nonzero((q != theirs)[:, 0]).flatten().tolist():
                gap = abs(float(u[r, 0]) - (np.floor(float(u[r, 0])) + 0.5))
                tally.worst = max(tally.worst, gap)
                if gap <= tie:
                    tally.ties += 1
                    q[r, 0] = theirs[r, 0]  # follow the run past a tie
                else:
                    tally.other += 1
            Q[:, c] = q[:, 0].to(torch.uint8)
            kept[:, c] = w[:, 0]
            wq = (q - zero).double() * scale.double()
            if mask is not None:
                wq = torch.where(mask[:, c:c + 1], w, wq)
            err = (w - wq) / Hinv1[i, i]
            W1[:, i:] -= err.matmul(Hinv1[i:i + 1, i:])
            Err1[:, i:i + 1] = err
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    g_idx = None
    if act_order and G > 0 and not static_groups:
        g_idx = torch.div(invperm, Gs, rounding_mode="floor").to(torch.int32)
    return Q[:, invperm], scales, zeros, g_idx, kept[:, invperm]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dump")
    ap.add_argument("--tie", type=float, default=1e-6)
    a = ap.parse_args()
    torch.set_num_threads(1)
    f = h5py.File(a.dump, "r")
    at = f["/"].attrs
    method = at["method"].decode() if isinstance(at["method"], bytes) else str(at["method"])
    if method != "gptq":
        sys.exit(f"{a.dump}: method {method}, not gptq")
    bits, G, damp = int(at["bits"]), int(at["group_size"]), float(at["damp"])
    act, static, block = bool(at["act_order"]), bool(at["static_groups"]), int(at["block_size"])
    print(f"{a.dump}: layer {int(at['layer'])}, {bits} bits, G {G}, damp {damp}, act_order "
          f"{int(act)}, static_groups {int(static)}, block {block}")
    bad = 0
    total = Tally()
    for name in LINEARS:
        g = f[name]
        W = torch.from_numpy(g["weight"][()])
        H = torch.from_numpy(f[f"inputs/{INPUT_OF[name]}/xtx"][()])
        codes = torch.from_numpy(g["codes"][()])
        mask = torch.from_numpy(g["sparse"][()]).bool() if "sparse" in g else None
        t = Tally()
        Q, S, Z, gi, kept = gptq(W, H, codes, mask, bits, G, damp, act, static, block, a.tie, t)
        same_q = bool(torch.equal(Q, codes))
        same_s = bool(torch.equal(S.half(), torch.from_numpy(g["scales"][()]).half()))
        same_z = bool(torch.equal(Z, torch.from_numpy(g["zeros"][()])))
        run_gi = torch.from_numpy(g["g_idx"][()]) if "g_idx" in g else None
        same_g = (gi is None and run_gi is None) or (
            gi is not None and run_gi is not None and torch.equal(gi, run_gi))
        sparse_note = ""
        if mask is not None:  # stored: dense + fp16(kept - dense), at the mask
            cols = gi.long() if gi is not None else torch.arange(W.shape[1]) // (G or W.shape[1])
            dense = (Q.double() - Z[:, cols].double()) * S[:, cols].double()
            resid = (kept - dense)[mask]
            err = (torch.from_numpy(g["w_hat"][()]).double()[mask] - kept[mask]).abs()
            # fp16 rounding of the residual (half a unit: 2^-11 relative, 2^-25 in the
            # subnormals), then fp32 rounding of W_hat
            tol = resid.abs() * 2.0 ** -11 + 2.0 ** -25 + kept[mask].abs() * 2.0 ** -23
            n_off = int((err > tol).sum())
            sparse_note = f", {int(mask.sum())} sparse kept ({n_off} off)"
            bad += n_off > 0
        ok = t.other == 0 and same_s and same_z and same_g
        bad += not ok
        total.ties += t.ties
        total.other += t.other
        print(f"  {name:9s} {tuple(W.shape)}: codes {'equal' if same_q else 'differ'} "
              f"({t.ties} ties, {t.other} other), scales {'=' if same_s else '!='}, zeros "
              f"{'=' if same_z else '!='}, g_idx {'=' if same_g else '!='}{sparse_note}"
              f"{'' if ok else '  <-- MISMATCH'}")
    print(f"gptq reference: {total.ties} ties, {total.other} other differences; "
          f"{'PASS' if bad == 0 else 'FAIL'}")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
