"""Attention, projection and residual of short groups in one launch (``models/attention_sublayer.py``) on the GPU:
the fused attention sublayer with it against float64 and against the separate launches (``SRET_ATTN_SUBLAYER=0``),
per shape, compute dtype and warp count. The output block is poisoned with NaN before each call (freed NaN memory the
allocator hands back), so an element the kernel does not write shows. Exit 1 on a failure.

    CUDA_LAUNCH_BLOCKING=1 PYTHONPATH=src python3 benchmarks/check_attention_sublayer.py
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

from sret.models import attention_sublayer as AS
from sret.models import fused as FU

SHAPES = [  # (B, N, C, groups, heads)
    (2, 24, 32, 2, 2), (2, 40, 48, 4, 3), (1, 16, 64, 1, 4),  # the CPU test's shapes
    (256, 784, 64, 8, 2), (256, 196, 128, 4, 4),  # SReT-T's first applications, stage 1 and 2
]


def reference(x, lw, lb, wqkv, bqkv, wp, bp, c1, c2, eps, groups, heads, scale):
    B, N, C = x.shape
    n, D = N // groups, C // heads
    qkv = F.layer_norm(x, (C,), lw, lb, eps) @ wqkv.T + bqkv
    q, k, v = qkv.view(B, groups, n, 3, heads, D).permute(3, 0, 1, 4, 2, 5)
    o = torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v
    return c1 * x + c2 * (o.permute(0, 1, 3, 2, 4).reshape(B, N, C) @ wp.T + bp)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main() -> int:
    torch.manual_seed(0)
    ok = True
    for B, N, C, groups, heads in SHAPES:
        dev = "cuda"
        x = torch.randn(B, N, C, device=dev) * 2 + 0.5
        lw, lb = torch.rand(C, device=dev) + 0.5, torch.randn(C, device=dev) * 0.1
        wqkv, bqkv = torch.randn(3 * C, C, device=dev) / C**0.5, torch.randn(3 * C, device=dev) * 0.1
        wp, bp = torch.randn(C, C, device=dev) / C**0.5, torch.randn(C, device=dev) * 0.1
        c1, c2 = torch.tensor([0.7], device=dev), torch.tensor([1.3], device=dev)
        scale, eps = (C // heads) ** -0.5, 1e-6
        args = (x, lw, lb, wqkv, bqkv, wp, bp, c1, c2, eps)
        ref = reference(*(t.double() if isinstance(t, torch.Tensor) else t for t in args), groups, heads, scale)
        for dt in (torch.bfloat16, torch.float16):
            def attend(qkv, p, inv):
                q, k, v = qkv.view(B, groups, N // groups, 3, heads, C // heads).permute(3, 0, 1, 4, 2, 5)
                return F.scaled_dot_product_attention(q, k, v, scale=scale).permute(0, 1, 3, 2, 4).reshape(B, N, C)
            def sublayer(one_launch: bool) -> torch.Tensor:
                os.environ["SRET_ATTN_SUBLAYER"] = "1" if one_launch else "0"
                return FU._AttnResidual.forward(FU._NoGraph(), *args[:9], None, eps, dt, attend, None, None, heads,
                                                0, False, groups, scale, True)

            e_sep = _rel(sublayer(False), ref)
            plain = AS.attention_proj_residual
            for warps in (4, 8):
                AS.attention_proj_residual = lambda *a, **k: plain(*a, **k, warps=warps)
                torch.full((B, N, C), float("nan"), device=dev)  # freed at once: the next block of this size
                got = sublayer(True)
                torch.cuda.synchronize()
                AS.attention_proj_residual = plain
                e = _rel(got, ref)
                good = bool(torch.isfinite(got).all()) and e <= 1.5 * e_sep + 1e-4
                ok &= good
                print(f"B {B} N {N} C {C} groups {groups} heads {heads} {str(dt)[6:]:8s} {warps} warps: one launch "
                      f"{e:.2e}, separate {e_sep:.2e} against float64 {'OK' if good else 'FAIL'}", flush=True)
    print("attention sublayer check:", "OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
