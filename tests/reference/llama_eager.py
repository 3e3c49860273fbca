#!/usr/bin/env python3
"""A plain PyTorch-eager Llama (the Hugging Face layout: RMSNorm, rotate-half RoPE with the
optional llama3 frequency scaling, grouped-query causal attention, SwiGLU MLP, tied or untied
head), written for issue 18's comparison: the same model, tokens, threads and BLAS as
`bench_model`, timed the same way. Reads the model folder itself (config.json and the
safetensors shards), in fp32.

Forward: the mean next-token loss of B random sequences of T tokens (torch.randint with a CPU
generator seeded 1, the same tokens as bench_model's at::randint). Forward+backward: that loss
backpropagated into the decoder layers' linear weights only (as bench_model: embeddings, norms
and head get no gradient).

Prints the loss (so that a caller can check both engines computed the same thing) and
tokens/s of forward and of forward+backward, each timed after one warm-up call until at least
--min-seconds have passed.
Usage: llama_eager.py --model DIR [--seq-len 256] [--batch 16] [--threads 2] [--min-seconds 3]
"""
import argparse
import json
import math
import os
import struct
import time

import torch
import torch.nn.functional as F

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def load_safetensors(path):
    """{name: float32 tensor} from one .safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=DTYPES[meta["dtype"]])
        out[name] = t.reshape(meta["shape"]).float()
    return out


def load_model(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    index = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) \
        else ["model.safetensors"]
    w = {}
    for f in files:
        w.update(load_safetensors(os.path.join(d, f)))
    return cfg, w


def rope_freqs(cfg, head_dim):
    """float [head_dim / 2]: the inverse frequencies, llama3-scaled where the config says so."""
    theta = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    rs = cfg.get("rope_scaling") or {}
    if rs.get("rope_type", rs.get("type")) == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - lo) / (hi - lo)
        mid = (1 - smooth) * inv / factor + smooth * inv
        inv = torch.where(wavelen > old / lo, inv / factor, torch.where(wavelen < old / hi, inv, mid))
    elif rs:
        raise SystemExit("llama_eager.py: rope_scaling %r is not supported" % rs)
    return inv


class Llama:
    def __init__(self, cfg, w, T):
        self.c, self.w = cfg, w
        self.L = cfg["num_hidden_layers"]
        self.H = cfg["num_attention_heads"]
        self.Hkv = cfg.get("num_key_value_heads", self.H)
        self.D = cfg.get("head_dim", cfg["hidden_size"] // self.H)
        self.eps = cfg["rms_norm_eps"]
        ang = torch.arange(T, dtype=torch.float64)[:, None] * rope_freqs(cfg, self.D)[None, :]
        ang = torch.cat([ang, ang], 1)  # [T, D]
        self.cos, self.sin = ang.cos().float(), ang.sin().float()
        self.head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        self.mask = torch.full((T, T), float("-inf")).triu(1)

    def linears(self):
        names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
        return [self.w["model.layers.%d.%s.weight" % (l, n)] for l in range(self.L) for n in names]

    def norm(self, x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * g

    def rope(self, x):  # [B, h, T, D]
        x1, x2 = x[..., : self.D // 2], x[..., self.D // 2:]
        return x * self.cos + torch.cat([-x2, x1], -1) * self.sin

    def layer(self, x, l):
        p = "model.layers.%d." % l
        W = lambda n: self.w[p + n + ".weight"]
        B, T, C = x.shape
        h = self.norm(x, W("input_layernorm"))
        q = (h @ W("self_attn.q_proj").T).view(B, T, self.H, self.D).transpose(1, 2)
        k = (h @ W("self_attn.k_proj").T).view(B, T, self.Hkv, self.D).transpose(1, 2)
        v = (h @ W("self_attn.v_proj").T).view(B, T, self.Hkv, self.D).transpose(1, 2)
        q, k = self.rope(q), self.rope(k)
        rep = self.H // self.Hkv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        a = (q @ k.transpose(-1, -2)) / math.sqrt(self.D) + self.mask
        o = (a.softmax(-1) @ v).transpose(1, 2).reshape(B, T, self.H * self.D)
        x = x + o @ W("self_attn.o_proj").T
        h = self.norm(x, W("post_attention_layernorm"))
        m = F.silu(h @ W("mlp.gate_proj").T) * (h @ W("mlp.up_proj").T)
        return x + m @ W("mlp.down_proj").T

    def loss(self, tok):
        x = self.w["model.embed_tokens.weight"][tok]
        for l in range(self.L):
            x = self.layer(x, l)
        x = self.norm(x[:, :-1], self.w["model.norm.weight"])
        logits = x @ self.head.T
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tok[:, 1:].reshape(-1))


def blas_library():
    """The BLAS shared library this process mapped (Debian's torch calls libblas.so.3, an
    alternative: OpenBLAS when libopenblas0-pthread is installed)."""
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            p = line.split()[-1]
            if "blas" in os.path.basename(p).lower():
                libs.add(os.path.realpath(p))
    return ", ".join(sorted(libs)) or "none found"


def time_it(fn, min_s):
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return dt / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg, w = load_model(a.model)
    m = Llama(cfg, w, a.seq_len)
    gen = torch.Generator().manual_seed(1)
    tok = torch.randint(0, cfg["vocab_size"], (a.batch, a.seq_len), generator=gen)
    ntok = a.batch * a.seq_len
    with torch.no_grad():
        loss = m.loss(tok).item()
        t_fwd = time_it(lambda: m.loss(tok), a.min_seconds)
    for p in m.linears():
        p.requires_grad_(True)

    def fb():
        for p in m.linears():
            p.grad = None
        m.loss(tok).backward()
    t_fb = time_it(fb, a.min_seconds)
    print("# eager    : torch %s, %d threads, BLAS %s, OPENBLAS_CORETYPE=%s" % (
        torch.__version__, a.threads, blas_library(), os.environ.get("OPENBLAS_CORETYPE", "")))
    print("  loss %.6f" % loss)
    print("  eager forward           %4dx%-5d %12.0f tokens/s" % (a.batch, a.seq_len, ntok / t_fwd))
    print("  eager forward+backward  %4dx%-5d %12.0f tokens/s" % (a.batch, a.seq_len, ntok / t_fb))


if __name__ == "__main__":
    main()
