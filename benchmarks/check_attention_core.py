"""The kept attention core (Triton for groups of <= 128 tokens; else the cuDNN / flash forward op with log-sum-exp,
its backward op called directly) on a GPU.

For each model: which kernel the fused attention sublayers ran in a bf16 training step, and the logits and every
gradient against the same step with the core re-run under autograd (``SRET_ATTN_DIRECT=0``), both against a float64
reference: the kept core must be as close to it as the re-run (median over tensors within 1.5x), else exit 1.

    PYTHONPATH=src python3 benchmarks/check_attention_core.py --models sret_t sret_s
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import statistics
import sys

import torch

import sret
from sret.models import fused


def _step(model, x, autocast: bool):
    torch.manual_seed(0)  # same permutations and drop-path masks in every run
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    (out.double() * torch.linspace(-1, 1, out.numel(), device=x.device, dtype=torch.float64).view_as(out)).sum() \
        .backward()
    return out.detach().double(), {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(name: str, batch: int) -> bool:
    torch.manual_seed(0)
    model = sret.create_model(name, drop_path_rate=0.1).cuda().train()
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    ref_out, ref = _step(copy.deepcopy(model).double(), x.double(), autocast=False)
    used = collections.Counter()
    plain_forward = fused._attention_forward

    def counting(q, k, v, scale, backend):
        used[(backend, tuple(q.shape))] += 1
        return plain_forward(q, k, v, scale, backend)

    plain_triton_backward = fused.group_attention_backward

    def counting_triton(qkv, do, groups, heads, scale, **kwargs):
        used[("triton", tuple(qkv.shape), groups)] += 1
        return plain_triton_backward(qkv, do, groups, heads, scale, **kwargs)

    fused._attention_forward, fused.group_attention_backward = counting, counting_triton
    try:
        out_k, kept = _step(model, x, autocast=True)
    finally:
        fused._attention_forward, fused.group_attention_backward = plain_forward, plain_triton_backward
    os.environ["SRET_ATTN_DIRECT"] = "0"
    out_r, rerun = _step(model, x, autocast=True)
    os.environ.pop("SRET_ATTN_DIRECT")
    err_k = statistics.median(_rel(kept[n], ref[n]) for n in ref if ref[n].norm() > 0)
    err_r = statistics.median(_rel(rerun[n], ref[n]) for n in ref if ref[n].norm() > 0)
    finite = all(torch.isfinite(g).all() for g in kept.values())
    ok = bool(used) and finite and err_k <= 1.5 * err_r + 1e-6 and _rel(out_k, ref_out) <= 1.5 * _rel(out_r, ref_out)
    print(f"{name}: kept-core kernels {dict(used)}")
    print(f"{name}: logits rel err kept {_rel(out_k, ref_out):.2e} re-run {_rel(out_r, ref_out):.2e}; median grad "
          f"rel err kept {err_k:.2e} re-run {err_r:.2e}; kept vs re-run logits {_rel(out_k, out_r):.2e} -> "
          f"{'OK' if ok else 'FAIL'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sret_t", "sret_s"])
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    results = [check(m, args.batch_size) for m in args.models]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
