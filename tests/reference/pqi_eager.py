#!/usr/bin/env python3
"""The paper's PQI recipe in plain PyTorch eager, for issue 18's time-to-accuracy comparison:
PQI_i = (w~_i - w_i) * integral_0^1 dF/dw_i(w + t (w~ - w)) dt with the right-endpoint rule,
N nodes t = k/N, k = 1..N (Hu et al., 2025: N = 32), every decoder linear moving together. Each
node is one forward+backward of the whole calibration batch (in microbatches, gradients summed)
at w + t dw; F(w) is one more forward. The model is llama_eager.py's.

w~ comes from a safetensors file of the linears' quantized weights in HF names (bench_pqi
--dump-wq), so that both engines integrate the same path; the tokens are bench_pqi's (random,
torch.randint with a CPU generator seeded 1, N sequences of T).

Prints F(w), F(w~), dF, sum PQI, the self-test error |sum PQI - dF| / |dF| and the wall time of
the whole recipe (F(w) and the N nodes).
Usage: pqi_eager.py --model DIR --wq FILE [--seqs 16] [--seq-len 256] [--microbatch 4]
                    [--nodes 32] [--threads 2]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_eager import Llama, blas_library, load_model, load_safetensors  # noqa: E402

NAMES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def batch_loss(m, tok, mb, backward):
    """F over every predicted position of tok, in microbatches of mb sequences; with backward,
    dF/dW accumulates in the linears' .grad."""
    n, total = tok.shape[0], 0.0
    for b in range(0, n, mb):
        part = tok[b:b + mb]
        loss = m.loss(part) * (part.shape[0] / n)  # equal positions per sequence
        if backward:
            loss.backward()
        total += loss.item()
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--wq", required=True)
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--microbatch", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg, w = load_model(a.model)
    wq = load_safetensors(a.wq)
    m = Llama(cfg, w, a.seq_len)
    names = ["model.layers.%d.%s.weight" % (l, n) for l in range(m.L) for n in NAMES]
    w0 = {k: w[k].clone() for k in names}
    dw = {k: wq[k] - w0[k] for k in names}
    gen = torch.Generator().manual_seed(1)
    tok = torch.randint(0, cfg["vocab_size"], (a.seqs, a.seq_len), generator=gen)

    t0 = time.perf_counter()
    with torch.no_grad():
        f0 = batch_loss(m, tok, a.microbatch, False)
    acc = {k: torch.zeros_like(w0[k]) for k in names}
    f1 = None
    for k in range(1, a.nodes + 1):
        t = k / a.nodes
        for n in names:
            w[n] = (w0[n] + t * dw[n]).requires_grad_(True)
        f = batch_loss(m, tok, a.microbatch, True)
        for n in names:
            acc[n] += w[n].grad / a.nodes
        if k == a.nodes:
            f1 = f
    pqi_sum = sum((dw[n].double() * acc[n].double()).sum().item() for n in names)
    wall = time.perf_counter() - t0
    df = f1 - f0
    print("# eager PQI: torch %s, %d threads, BLAS %s" % (torch.__version__, a.threads,
                                                         blas_library()))
    print("  eager right N=%d  %dx%d tokens  F(w) %.6f  F(w~) %.6f  dF %.6e  sum PQI %.6e  "
          "rel %.3e  %.1f s" % (a.nodes, a.seqs, a.seq_len, f0, f1, df, pqi_sum,
                                abs(pqi_sum - df) / abs(df), wall))


if __name__ == "__main__":
    main()
