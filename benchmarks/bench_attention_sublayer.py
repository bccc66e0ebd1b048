"""Time the one-launch attention sublayer (``models/attention_sublayer.py``) against the separate launches it replaces,
at SReT-T's first-application shapes (batch 256, bf16), with each warp count; and its output against theirs.

    PYTHONPATH=src python3 benchmarks/bench_attention_sublayer.py

Bytes per call (float32 x read once, float32 out written once) over the measured time give its bandwidth: the floor
of a sublayer that reads x and writes out is 2 * 4 * M * C bytes.
"""

from __future__ import annotations

import torch
import triton.testing

from sret.models import attention_sublayer as AS
from sret.models import fused as FU

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

        def separate():
            return FU._AttnResidual.forward(FU._NoGraph(), x, lw, lb, wqkv, bqkv, wp, bp, c1, c2, None, eps, dt,
                                            None, None, None, heads, 0, False, groups, scale, True)

        ref = separate()
        floor_gb = 2 * 4 * x.numel() / 1e9
        t_sep = triton.testing.do_bench(separate, warmup=50, rep=300, return_mode="median")
        print(f"{name}: separate launches {t_sep * 1e3:.1f} us ({floor_gb / t_sep * 1e3:.0f} GB/s at the floor's "
              "bytes)")
        for warps in (4, 8):
            got = AS.attention_sublayer(x, lw, lb, wqkv, bqkv, wp, bp, c1, c2, eps, dt, groups, heads, scale,
                                        warps=warps)
            err = ((got - ref).norm() / ref.norm()).item()
            t = triton.testing.do_bench(
                lambda: AS.attention_sublayer(x, lw, lb, wqkv, bqkv, wp, bp, c1, c2, eps, dt, groups, heads, scale,
                                              warps=warps), warmup=50, rep=300, return_mode="median")
            print(f"  one launch, {warps} warps: {t * 1e3:.1f} us ({floor_gb / t * 1e3:.0f} GB/s), "
                  f"rel. difference to the separate launches {err:.2e}")


if __name__ == "__main__":
    main()
