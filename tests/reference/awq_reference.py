#!/usr/bin/env python3
"""AWQ, written from the paper (Lin et al., 2024, "AWQ: Activation-aware Weight Quantization")
and a reading of mit-han-lab/llm-awq (awq/quantize/auto_scale.py, auto_clip.py, quantizer.py),
run on one layer dumped by `requant-dist run --dump-layer L` (awq_loss = block), and compared
with what the run chose.

The recipe, per group of linears that read one input:
  scale search: s(a) = max(mean|x|^a, 1e-4) / sqrt(max s * min s), a = 0, 1/grid, ..,
    (grid-1)/grid, in fp16 (the reference model's dtype); the group's weights become
    Q(W diag(s)) diag(s)^-1 and a is scored by the mean squared error of the output of the block
    they feed, on every calibration token:
      q/k/v     the attention output (RoPE, causal softmax, o_proj at W),
      gate/up   the MLP output (down_proj at W),
      o_proj    its own output (only where v_proj and o_proj have one shape: never on GQA),
      down_proj its own output;
    a = 0 first, a later a only if strictly better.
  apply_scale: the scales of o_proj (where it has one) and down_proj are also folded into the
    rows of the linears whose outputs they read, before clipping: v_proj and up_proj become
    diag(1/r) W diag(s), r the next group's s (the run stores r as out_scale).
  clipping search (not q/k), on the scaled weights against the inputs divided by s, on the rows
    x[0 :: n // n_sample_token] (n_sample_token: the dump's awq_samples, 512 in the reference):
    per output row and group, max_val = absmax * (1 - k/20), k = 0 .. 9, weights clamped to
    [-max_val, max_val]; the k with the least mean squared error of the group's partial output,
    a later k only if strictly better.
  Q: asymmetric uniform per group of the input dimension. The grid follows the project's
    storage and says so: the range always holds 0 and the scale is rounded UP to fp16 before the
    zero point is taken (llm-awq's pseudo_quantize_tensor keeps fp32 scales and min/max as they
    are; the two differ only for a group of one sign).
The losses here are fp64. Checks:
  - the run's per-input mean|x| and sampled rows are the inputs' own (recomputed from the rows
    of the block inputs through the full-precision layer);
  - per group, the run's a (read back from its in_scale) is the reference's, or its reference
    loss is within 1e-6 relative of the best (a near-tie);
  - v_proj's and up_proj's out_scale is o_proj's and down_proj's s, where the reference folds
    one (and absent where it does not);
  - per clipped linear, per (row, group), the run's k (read back from its grid) is the
    reference's under the run's s, or its error is within 1e-6 relative of the best;
  - where every choice agrees, the codes are equal.
Prints one line per group and linear; exits 1 with MISMATCH lines on any disagreement.
Usage: awq_reference.py LAYER_DUMP.h5
"""
import math
import sys

import h5py
import torch

torch.set_grad_enabled(False)
DT = torch.float64
TOL = 1e-6
GROUPS = [("attn", ["q_proj", "k_proj", "v_proj"]), ("attn_out", ["o_proj"]),
          ("mlp", ["gate_proj", "up_proj"]), ("mlp_out", ["down_proj"])]
NO_CLIP = {"q_proj", "k_proj"}
# apply_scale's row folds: linear -> the linear whose input scale divides its rows.
ROW_FOLD = {"v_proj": "o_proj", "up_proj": "down_proj"}


def fp16_up(s):
    """float32 scale -> the smallest fp16 value >= it, as float32."""
    h = s.half()
    up = (h.view(torch.int16) + 1).view(torch.float16)
    return torch.where(h.float() < s, up.float(), h.float())


def grid(wg, bits):
    """Per-row (scale, zero) of a group wg float32 [O, n]."""
    maxq = 2 ** bits - 1
    lo = wg.amin(1, keepdim=True).clamp(max=0)
    hi = wg.amax(1, keepdim=True).clamp(min=0)
    scale = fp16_up((hi - lo).clamp(min=1e-5) / maxq)
    zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def quantize(w, bits, G):
    """Codes and dequantized weights of w float32 [O, I], per group of G columns."""
    maxq = 2 ** bits - 1
    codes, deq = torch.empty_like(w), torch.empty_like(w)
    for c0 in range(0, w.shape[1], G):
        wg = w[:, c0:c0 + G]
        scale, zero = grid(wg, bits)
        q = torch.clamp(torch.round(wg / scale) + zero, 0, maxq)
        codes[:, c0:c0 + G] = q
        deq[:, c0:c0 + G] = (q - zero) * scale
    return codes, deq


def alpha_scales(m, a):
    s = m.pow(a).clamp(min=1e-4)
    s = s / (s.max() * s.min()).sqrt()
    return s.half().float()


class Layer:
    def __init__(self, f):
        a = f["/"].attrs
        self.bits, self.G, self.grid = int(a["bits"]), int(a["group_size"]), int(a["awq_grid"])
        self.n_sample = int(a["awq_samples"])
        self.H, self.Hkv, self.D = int(a["n_head"]), int(a["n_head_kv"]), int(a["head_dim"])
        self.cos, self.sin = (torch.from_numpy(f["rope/" + k][()]).to(DT) for k in ("cos", "sin"))
        self.w = {n: torch.from_numpy(f[n + "/weight"][()]) for _, ns in GROUPS for n in ns}
        self.sparse = {n: (torch.from_numpy(f[n + "/sparse"][()]).bool()
                           if n + "/sparse" in f else None) for n in self.w}
        self.rows = {k: torch.from_numpy(f["inputs/%s/rows" % k][()]) for k in ("attn", "mlp")}

    def given(self, n):  # what the method was given: the sparse weights zeroed
        m = self.sparse[n]
        return self.w[n] if m is None else self.w[n].masked_fill(m, 0.0)

    def effective(self, n, w_hat):  # the reconstruction: the sparse weights keep W
        m = self.sparse[n]
        return w_hat if m is None else torch.where(m, self.w[n], w_hat)

    def rope(self, x):  # x [B, h, T, D], rotate-half convention
        T, half = x.shape[2], x.shape[3] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * self.cos[:T] + rot * self.sin[:T]

    def attn_core(self, x, wq, wk, wv):  # x [B, T, C] -> o_proj's input [B, T, H*D]
        B, T, _ = x.shape
        H, Hkv, D = self.H, self.Hkv, self.D
        q = self.rope((x @ wq.T).view(B, T, H, D).transpose(1, 2))
        k = self.rope((x @ wk.T).view(B, T, Hkv, D).transpose(1, 2))
        v = (x @ wv.T).view(B, T, Hkv, D).transpose(1, 2)
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        return (att @ v).transpose(1, 2).reshape(B, T, H * D)

    def block(self, which, ws):
        """The output of the block fed by input `which` with the linears in ws (fp64)."""
        W = {n: ws.get(n, self.w[n]).to(DT) for n in self.w}
        if which == "attn":
            x = self.rows["attn"].to(DT)
            return self.attn_core(x, W["q_proj"], W["k_proj"], W["v_proj"]) @ W["o_proj"].T
        x = self.rows["mlp"].to(DT)
        return (torch.nn.functional.silu(x @ W["gate_proj"].T) * (x @ W["up_proj"].T)) @ W["down_proj"].T

    def inputs(self):
        """Every row of each linear input, float64 [n, I], from the full-precision layer."""
        xa, xm = self.rows["attn"].to(DT), self.rows["mlp"].to(DT)
        W = {n: self.w[n].to(DT) for n in self.w}
        ao = self.attn_core(xa, W["q_proj"], W["k_proj"], W["v_proj"])
        mo = torch.nn.functional.silu(xm @ W["gate_proj"].T) * (xm @ W["up_proj"].T)
        return {k: t.reshape(-1, t.shape[-1]) for k, t in
                (("attn", xa), ("attn_out", ao), ("mlp", xm), ("mlp_out", mo))}


def search_alpha(L, which, names, x_all, m):
    """Reference losses of every a (fp64, mean over tokens and outputs) and the best index."""
    if which in ("attn", "mlp"):
        ref = L.block(which, {})
    losses = []
    for i in range(L.grid):
        s = alpha_scales(m, i / L.grid)
        ws = {}
        for n in names:
            _, deq = quantize(L.given(n) * s, L.bits, L.G)
            ws[n] = L.effective(n, deq / s)
        if which in ("attn", "mlp"):
            loss = (L.block(which, ws) - ref).pow(2).mean().item()
        else:
            n = names[0]
            d = ws[n].to(DT) - L.w[n].to(DT)
            loss = (x_all @ d.T).pow(2).mean().item()
        losses.append(loss)
    best = 0
    for i in range(1, len(losses)):
        if losses[i] < losses[best]:
            best = i
    return losses, best


def alpha_of(L, m, in_scale):
    """The grid index whose fp16 s(a) the run stored, or None."""
    for i in range(L.grid):
        if torch.equal(alpha_scales(m, i / L.grid), in_scale):
            return i
    return None


def clip_check(L, n, s, r, x_all, g):
    """Per (row, group): the reference's k and the run's, and their errors; and the codes that
    differ in the rows where the two agree. r: the row fold (float [O]) or None."""
    ws = L.given(n) * s if s is not None else L.given(n)
    if r is not None:
        ws = ws / r.unsqueeze(1)
    step = max(1, x_all.shape[0] // L.n_sample)
    x = x_all[0::step] / (s.to(DT) if s is not None else 1.0)  # [n_s, I]
    run_codes = torch.from_numpy(g["codes"][()]).float()
    code_diffs = 0
    scales = torch.from_numpy(g["scales"][()]).float()
    zeros = torch.from_numpy(g["zeros"][()]).float()
    maxq = 2 ** L.bits - 1
    n_shrink = int(0.5 * 20)
    diffs, ties, total = 0, 0, 0
    for gi, c0 in enumerate(range(0, ws.shape[1], L.G)):
        wg = ws[:, c0:c0 + L.G]
        xg = x[:, c0:c0 + wg.shape[1]]
        absmax = wg.abs().amax(1, keepdim=True)
        errs, grids = [], []
        for k in range(n_shrink):
            mv = absmax * (1 - k / 20)
            cur = torch.clamp(wg, -mv, mv)
            sc, ze = grid(cur, L.bits)
            q = (torch.clamp(torch.round(cur / sc) + ze, 0, maxq) - ze) * sc
            errs.append((xg @ (q.to(DT) - wg.to(DT)).T).pow(2).mean(0))  # [O]
            grids.append((sc[:, 0], ze[:, 0]))
        E = torch.stack(errs, 1)  # [O, K]
        best = torch.zeros(E.shape[0], dtype=torch.long)
        for k in range(1, n_shrink):
            better = E[:, k] < E[torch.arange(E.shape[0]), best]
            best = torch.where(better, torch.full_like(best, k), best)
        run_k = torch.full_like(best, -1)
        for k in range(n_shrink):
            hit = (grids[k][0] == scales[:, gi]) & (grids[k][1] == zeros[:, gi]) & (run_k < 0)
            run_k = torch.where(hit, torch.full_like(run_k, k), run_k)
        total += E.shape[0]
        mv = absmax * (1 - best.unsqueeze(1).to(absmax.dtype) / 20)
        cur = torch.clamp(wg, -mv, mv)
        sc, ze = grid(cur, L.bits)
        codes = torch.clamp(torch.round(cur / sc) + ze, 0, maxq)
        same = run_k == best
        code_diffs += int((codes[same] != run_codes[same, c0:c0 + wg.shape[1]]).sum())
        for r in torch.nonzero(run_k != best).flatten().tolist():
            k = int(run_k[r])
            e_best = E[r, best[r]].item()
            if k >= 0 and E[r, k].item() <= e_best * (1 + TOL):
                ties += 1
            else:
                diffs += 1
    return diffs, ties, total, code_diffs


def attr_str(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def main(path):
    bad = []
    with h5py.File(path, "r") as f:
        a = f["/"].attrs
        if attr_str(a["method"]) != "awq":
            sys.exit("not an AWQ dump")
        loss_kind = attr_str(a["awq_loss"])
        if loss_kind != "block":
            sys.exit("awq_loss is %s: the reference scores the block output" % loss_kind)
        L = Layer(f)
        X = L.inputs()
        n_codes = 0
        for which, names in GROUPS:
            x_all = X[which]
            m = x_all.abs().mean(0).float()
            run_m = torch.from_numpy(f["inputs/%s/abs_mean" % which][()])
            if not torch.allclose(run_m, m, rtol=1e-4, atol=1e-6):
                bad.append("MISMATCH %s: mean|x| differs from the inputs' own" % which)
            step = max(1, x_all.shape[0] // L.n_sample)
            run_x = torch.from_numpy(f["inputs/%s/samples" % which][()]).to(DT)
            own_x = x_all[0::step]
            if run_x.shape != own_x.shape or not torch.allclose(run_x, own_x, rtol=1e-4, atol=1e-5):
                bad.append("MISMATCH %s: the sampled rows are not x[0::%d]" % (which, step))
            has_s = names[0] + "/in_scale" in f
            scaled = which != "attn_out" or L.w["v_proj"].shape == L.w["o_proj"].shape
            if has_s != scaled:
                bad.append("MISMATCH %s: in_scale %s, the reference %s" %
                           (which, "stored" if has_s else "absent", "scales" if scaled else "does not"))
            s = None
            choice_ok = True
            if scaled and has_s:
                s = torch.from_numpy(f[names[0] + "/in_scale"][()]).float()
                losses, best = search_alpha(L, which, names, x_all, m)
                run_i = alpha_of(L, m, s)
                if run_i is None:
                    bad.append("MISMATCH %s: the run's in_scale is no s(a) of the grid" % which)
                    choice_ok = False
                else:
                    rel = losses[run_i] / losses[best] - 1
                    tie = run_i != best and rel <= TOL
                    if run_i != best and not tie:
                        bad.append("MISMATCH %s: alpha %d/%d, the reference %d/%d (loss +%.3g)" %
                                   (which, run_i, L.grid, best, L.grid, rel))
                        choice_ok = False
                    print("%-8s %-24s alpha %2d/%d (reference %2d/%d%s), loss %.6g" %
                          (which, "/".join(names), run_i, L.grid, best, L.grid,
                           ", near-tie" if tie else "", losses[run_i]))
                    choice_ok = choice_ok and run_i == best
            for n in names:
                g = f[n]
                r = None
                nxt = ROW_FOLD.get(n)
                if nxt is not None and nxt + "/in_scale" in f:
                    r = torch.from_numpy(f[nxt + "/in_scale"][()]).float()
                run_r = torch.from_numpy(g["out_scale"][()]).float() if "out_scale" in g else None
                if (r is None) != (run_r is None) or (r is not None and not torch.equal(r, run_r)):
                    bad.append("MISMATCH %s: out_scale %s, the reference folds %s" %
                               (n, "absent" if run_r is None else "stored",
                                "none" if r is None else nxt + "'s s"))
                if n not in NO_CLIP:
                    d, t, tot, cd = clip_check(L, n, s, r, x_all, g)
                    print("%-8s %-24s clip: %d (row, group)s, %d differ, %d near-ties" %
                          (which, n, tot, d, t))
                    if d:
                        bad.append("MISMATCH %s: clip differs on %d of %d (row, group)s" % (n, d, tot))
                    if cd and choice_ok:
                        bad.append("MISMATCH %s: %d codes differ where the choices agree" % (n, cd))
                    n_codes += int(choice_ok)
                elif choice_ok:
                    codes, _ = quantize(L.given(n) * s if s is not None else L.given(n), L.bits, L.G)
                    run_codes = torch.from_numpy(g["codes"][()]).float()
                    nd = int((codes != run_codes).sum())
                    if nd:
                        bad.append("MISMATCH %s: %d codes differ" % (n, nd))
                    n_codes += 1
    for b in bad:
        print(b)
    if bad:
        sys.exit(1)
    print("AWQ: every alpha and clip as the reference chooses; codes equal on %d linears" % n_codes)


if __name__ == "__main__":
    main(sys.argv[1])
