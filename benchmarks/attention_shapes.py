"""The attention core alone, per shape SReT-T runs it, sliced and unsliced: does slicing pay in kernel time?

For every (batch x groups, heads, tokens per group, head dim) shape of ``sret_t`` and ``sret_t_wo_slice`` at batch
256, times ``F.scaled_dot_product_attention`` (bf16, the kernel sdpa picks) forward, and forward + backward, as CUDA
graph replays; prints microseconds per call, the useful TFLOP/s (4 * n^2 * D per head and group, no padding), and
each model's total per step (calls per step from the stage schedule). Target 3 of issue 3 asks the sliced model's
step to take <= 0.85 of the unsliced one's; this shows what the attention kernels themselves give.

    PYTHONPATH=src python3 benchmarks/attention_shapes.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from triton.testing import do_bench_cudagraph

BATCH, D = 256, 32
# (stage tokens, heads, groups, applications per step) of sret_t's schedule (groups 8-4-1 first, 2-1-1 recursive)
SLICED = [(784, 2, 8, 2), (784, 2, 2, 2), (196, 4, 4, 5), (196, 4, 1, 5), (49, 8, 1, 6)]
UNSLICED = [(784, 2, 1, 4), (196, 4, 1, 10), (49, 8, 1, 6)]


def time_shape(tokens: int, heads: int, groups: int) -> tuple[float, float, float]:
    n = tokens // groups
    q, k, v = (torch.randn(BATCH * groups, heads, n, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    do = torch.randn_like(q)
    scale = D**-0.5

    def fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, scale=scale)

    def fwd_bwd():
        torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, scale=scale), (q, k, v), do)

    f_ms = do_bench_cudagraph(fwd)
    fb_ms = do_bench_cudagraph(fwd_bwd)
    flops = 4 * BATCH * groups * heads * n * n * D
    return f_ms * 1e3, fb_ms * 1e3, flops / (f_ms * 1e-3) / 1e12


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__)
    print(f"{'tokens':>6} {'heads':>5} {'groups':>6} {'n':>4} {'fwd us':>8} {'fwd+bwd us':>10} {'fwd TFLOP/s':>11}")
    totals = {}
    for label, schedule in (("sret_t", SLICED), ("sret_t_wo_slice", UNSLICED)):
        f_total = fb_total = 0.0
        for tokens, heads, groups, calls in schedule:
            f_us, fb_us, tflops = time_shape(tokens, heads, groups)
            f_total += calls * f_us
            fb_total += calls * fb_us
            print(f"{tokens:6d} {heads:5d} {groups:6d} {tokens // groups:4d} {f_us:8.1f} {fb_us:10.1f} {tflops:11.1f}"
                  f"   x{calls} ({label})")
        totals[label] = (f_total, fb_total)
        print(f"== {label}: attention per step {f_total / 1e3:.3f} ms forward, {fb_total / 1e3:.3f} ms fwd+bwd")
    (sf, sb), (uf, ub) = totals["sret_t"], totals["sret_t_wo_slice"]
    flop_ratio = _flops(SLICED) / _flops(UNSLICED)
    print(f"== sliced / unsliced attention time: forward {sf / uf:.2f}, fwd+bwd {sb / ub:.2f} "
          f"(attention FLOP ratio {flop_ratio:.2f})")


def _flops(schedule) -> int:
    """Useful attention FLOPs of one forward per image: 4 n^2 D per head and group, n = tokens / groups."""
    return sum(4 * (t // g) ** 2 * g * h * D * c for t, h, g, c in schedule)


if __name__ == "__main__":
    main()
