#!/usr/bin/env python3
"""Where a forward+backward step's time goes, from a Chrome trace of `bench_model --profile`
(libtorch's profiler; two steps recorded). Each op's self time (its duration less its
children's) goes to one part of the model:
  - GEMMs (mm, bmm, addmm, baddbmm), split by where they run: the decoder linears forward and
    backward, attention's scores and weighted values, the LM head;
  - other ops inside a model scope (model/profile_scopes.h: rms_norm, rope, attention, swiglu,
    head_loss, embed) go to that part; in the backward, to the part whose autograd node runs
    them (PowBackward0 -> rms_norm, SiluBackward0 -> swiglu, the custom attention and head-loss
    nodes, ...); MulBackward0 serves RMSNorm, RoPE and SwiGLU alike and is reported as such;
  - a scope's own time and a custom node's own time (the fused kernels of model/block_ops.h,
    rope.h and attention.h run as plain loops, not as ATen ops) go to that part;
  - what is left: residual adds, copies and views, allocation and zero-fill, gradient
    accumulation, and profiler/dispatcher overhead in the scopes themselves.
Prints ms per step and the share of the step, largest first. The profiler's own cost per op
inflates the many small ops; compare shares between builds, not with bench_model's timing.
Usage: profile_summary.py TRACE.json [STEPS (2)]
"""
import collections
import json
import sys

GEMM = {"aten::mm", "aten::bmm", "aten::addmm", "aten::addmm_", "aten::baddbmm"}
SCOPES = {"rq::embed": "embedding", "rq::rms_norm": "RMSNorm", "rq::rope": "RoPE",
          "rq::attention": "attention (softmax, mask, copies)", "rq::swiglu": "SwiGLU",
          "rq::head_loss": "LM head loss (log-softmax, NLL)"}
BACKWARD = {"PowBackward0": "RMSNorm", "RsqrtBackward0": "RMSNorm", "MeanBackward1": "RMSNorm",
            "SiluBackward0": "SwiGLU", "RmsNormFn": "RMSNorm", "SwigluFn": "SwiGLU", "RopeFn": "RoPE", "NegBackward0": "RoPE", "CatBackward0": "RoPE",
            "MulBackward0": "mul backward (RMSNorm, RoPE, SwiGLU)",
            "AddBackward0": "residual adds", "torch::autograd::AccumulateGrad": "gradient accumulation"}
FUSED = ("RmsNormFn", "SwigluFn", "RopeFn")
NODE = "autograd::engine::evaluate_function: "
ALLOC = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::zeros", "aten::zero_",
         "aten::fill_", "aten::full"}
COPY = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy", "aten::to", "aten::cat"}


def context(ev, parent, i):
    """The innermost model scope or backward node above event i: (kind, name) or None."""
    p = parent[i]
    while p is not None:
        n = ev[p]["name"]
        if n in SCOPES:
            return ("scope", n)
        if n.startswith(NODE):
            return ("node", n[len(NODE):])
        p = parent[p]
    return None


def node_part(c):
    """The part a backward node's own work belongs to, or None."""
    if "BlockedAttention" in c:
        return "attention (softmax, mask, copies)"
    if "ChunkedHeadLoss" in c:
        return "LM head loss (log-softmax, NLL)"
    if c in BACKWARD:
        return BACKWARD[c]
    for fn in FUSED:  # the fused kernels' own nodes: CppNode<...::RmsNormFn>
        if c.endswith("::" + fn + ">"):
            return BACKWARD[fn]
    return None


def part(name, ctx):
    if name in SCOPES:  # a scope's own time: a fused kernel's loops run in the scope itself
        return SCOPES[name]
    if name.startswith(NODE):
        return node_part(name[len(NODE):]) or "profiler and dispatch overhead"
    if name in GEMM:
        if ctx is None:
            return "GEMM: decoder linears, forward"
        kind, c = ctx
        if "BlockedAttention" in c or c == "rq::attention":
            return "GEMM: attention (QK^T, PV)" + (", backward" if kind == "node" else "")
        if "ChunkedHeadLoss" in c or c == "rq::head_loss":
            return "GEMM: LM head" + (", backward" if kind == "node" else "")
        return "GEMM: decoder linears, backward" if kind == "node" else "GEMM: in " + SCOPES[c]
    if ctx is not None:
        kind, c = ctx
        if kind == "scope":
            return SCOPES[c]
        if node_part(c):
            return node_part(c)
        if name in ALLOC:
            return "allocation and zero-fill"
        return "views and copies (backward)"
    if name in ALLOC:
        return "allocation and zero-fill"
    if name in COPY:
        return "copies"
    if name == "aten::add":
        return "residual adds"
    return "other: " + name


def main(path, steps):
    ev = [e for e in json.load(open(path)) if e.get("ph") == "X"]
    ev.sort(key=lambda e: (e["tid"], e["ts"], -e["dur"]))
    parent, stack = {}, []
    for i, e in enumerate(ev):
        while stack and (ev[stack[-1]]["tid"] != e["tid"] or
                         ev[stack[-1]]["ts"] + ev[stack[-1]]["dur"] <= e["ts"]):
            stack.pop()
        parent[i] = stack[-1] if stack else None
        stack.append(i)
    children = collections.Counter()
    for i, p in parent.items():
        if p is not None:
            children[p] += ev[i]["dur"]
    t = collections.Counter()
    for i, e in enumerate(ev):
        t[part(e["name"], context(ev, parent, i))] += e["dur"] - children[i]
    total = sum(t.values())
    gemm = sum(v for k, v in t.items() if k.startswith("GEMM"))
    print("  %-44s %10s %7s" % ("part", "ms/step", "share"))
    for k, v in t.most_common():
        if v / total >= 0.001:
            print("  %-44s %10.1f %6.1f%%" % (k, v / 1e3 / steps, 100 * v / total))
    print("# step %.1f ms under the profiler; GEMMs %.1f%%, the rest %.1f%%" %
          (total / 1e3 / steps, 100 * gemm / total, 100 - 100 * gemm / total))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)
