"""Time attention + projection + residual in one launch (``models/attention_sublayer.py``) against the launches it
replaces (attention kernel, proj GEMM, residual kernel), at SReT-T's first-application shapes (batch 256, bf16), with
each warp count, each from the same qkv; and its output against theirs.

    PYTHONPATH=src python3 benchmarks/bench_attention_sublayer.py

Bytes: bf16 qkv read (6 per element of x), float32 x read and float32 out written (8): the floor is 14 * M * C bytes.
Times are CUDA-graph replays of 20 calls, so the host's launch cost stays out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton.testing

from sret.models import attention_sublayer as AS
from sret.models import group_attention as GA
from sret.models import sublayer_kernels as K

SHAPES = {  # name: (B, N, C, groups, heads)
    "sret_t stage 1, 8 groups of 98": (256, 784, 64, 8, 2),
    "sret_t stage 2, 4 groups of 49": (256, 196, 128, 4, 4),
}


def main() -> None:
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), torch.__version__)
    for name, (B, N, C, groups, heads) in SHAPES.items():
        x = torch.randn(B, N, C, device="cuda")
        lw, lb = torch.rand(C, device="cuda") + 0.5, torch.randn(C, device="cuda") * 0.1
        wqkv, bqkv = torch.randn(3 * C, C, device="cuda") / C**0.5, torch.randn(3 * C, device="cuda") * 0.1
        wp, bp = torch.randn(C, C, device="cuda") / C**0.5, torch.randn(C, device="cuda") * 0.1
        c1, c2 = torch.tensor([0.7], device="cuda"), torch.tensor([1.3], device="cuda")
        scale, eps, dt = (C // heads) ** -0.5, 1e-6, torch.bfloat16

        wp16, bp16 = wp.to(dt), bp.to(dt)
        xn = F.layer_norm(x, (C,), lw, lb, eps).to(dt).view(B * N, C)
        qkv = torch.addmm(bqkv.to(dt), xn, wqkv.to(dt).t()).view(B, N, 3 * C)

        def separate():
            o = GA.group_attention(qkv, groups, heads, scale).view(B * N, C)
            y = torch.addmm(bp16, o, wp16.t()).view(B, N, C)
            return K.residual_forward(x, y, c1, c2, None)

        ref = separate()
        floor_gb = 14 * x.numel() / 1e9
        t_sep = _graph_us(separate)
        print(f"{name}: separate launches {t_sep:.1f} us ({floor_gb / t_sep * 1e6:.0f} GB/s at the floor's bytes)")
        for warps in (4, 8):
            def one():
                return AS.attention_proj_residual(qkv, x, wp16, bp16, c1, c2, groups, heads, scale, warps=warps)
            err = ((one() - ref).norm() / ref.norm()).item()
            t = _graph_us(one)
            print(f"  one launch, {warps} warps: {t:.1f} us ({floor_gb / t * 1e6:.0f} GB/s), "
                  f"rel. difference to the separate launches {err:.2e}")


def _graph_us(fn, calls: int = 20) -> float:
    """Median microseconds per call over CUDA-graph replays of ``calls`` calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return triton.testing.do_bench(graph.replay, warmup=20, rep=200, return_mode="median") * 1e3 / calls


if __name__ == "__main__":
    main()
