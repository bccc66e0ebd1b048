"""How much of the one-launch MLP kernel's time is the exact GELU? An experiment, not a check.

Times ``mlp_residual_forward`` (inference, no saved tensors) on SReT-T's MLP and NLL shapes at batch 256 as CUDA
graph replays, with the kernels' GELU (``sublayer_kernels._gelu``) swapped before anything compiles, one process per
variant: ``exact`` (libdevice erf, the shipped one), ``identity`` (no activation: the bound on what any cheaper GELU
could save), ``erfc`` (x * Phi(x) from a Chebyshev erfc fit with fractional error < 1.2e-7 everywhere, so tails keep
their relative accuracy). For each variant it also prints how far the rounded activation is from ``F.gelu`` over a dense
grid of inputs (bf16 ulps where |gelu| >= 0.004, absolute everywhere).

    PYTHONPATH=src python3 benchmarks/gelu_cost.py
"""

from __future__ import annotations

import subprocess
import sys

import torch
import triton
import triton.language as tl

from sret.models import sublayer_kernels as _kernels

BATCH = 256
# (tokens per image, C, H) of sret_t's fused MLP-type sublayers, with their applications per inference step
SHAPES = [(784, 64, 230, 4), (784, 64, 64, 4), (196, 128, 460, 10), (196, 128, 128, 10), (49, 256, 256, 6),
          (49, 256, 921, 6)]
VARIANTS = ("exact", "identity", "erfc")


def _install(variant: str) -> None:
    if variant == "identity":
        @triton.jit
        def _gelu(x):
            return x
    elif variant == "erfc":
        @triton.jit
        def _gelu(x):
            z = tl.abs(x) * 0.7071067811865476
            t = 1.0 / (1.0 + 0.5 * z)
            poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (
                0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
            half_erfc = 0.5 * t * tl.exp(poly - z * z)  # Phi(-|x|)
            return x * tl.where(x < 0, half_erfc, 1.0 - half_erfc)
    if variant != "exact":
        _kernels._gelu = _gelu


def run(variant: str) -> None:
    from triton.testing import do_bench_cudagraph

    _install(variant)
    K = _kernels

    total = 0.0
    for tokens, C, H, calls in SHAPES:
        gen = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(BATCH, tokens, C, device="cuda", generator=gen)
        ln_w, ln_b = torch.ones(C, device="cuda"), torch.zeros(C, device="cuda")
        w1 = torch.randn(H, C, device="cuda", generator=gen) * C**-0.5
        w2 = torch.randn(C, H, device="cuda", generator=gen) * H**-0.5
        b1, b2 = torch.zeros(H, device="cuda"), torch.zeros(C, device="cuda")
        c = torch.ones(1, device="cuda")

        def step():
            return K.mlp_residual_forward(x, ln_w, ln_b, w1, b1, w2, b2, c, c, None, 1e-6, torch.bfloat16, False)

        assert step() is not None, (C, H)
        us = do_bench_cudagraph(step) * 1e3
        total += calls * us
        print(f"{variant:>8} C={C:3d} H={H:3d} tokens={tokens:3d}: {us:7.1f} us  x{calls}", flush=True)
    h = torch.linspace(-12, 12, 1 << 22, device="cuda")
    a = torch.empty_like(h, dtype=torch.bfloat16)
    ref = torch.nn.functional.gelu(h).to(torch.bfloat16)  # F.gelu in float32, what the kernels promise
    _probe[(triton_cdiv(h.numel(), 1024),)](h, a, h.numel(), BLOCK=1024)
    body = h >= -3  # below, |gelu| < 0.005 and float32's 1 + erf loses the relative accuracy anyway
    ulp = (_ordered(a) - _ordered(ref))[body].abs().max().item()
    abs_err = (a.float() - ref.float()).abs().max().item()
    print(f"{variant:>8} total {total / 1e3:.3f} ms per step; against F.gelu: max {ulp} bf16 ulp on [-3, 12], "
          f"max abs {abs_err:.1e} on [-12, 12]")


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """bf16 values as integers in the order of the values, one step per ulp (-0 and +0 both 0)."""
    bits = t.view(torch.int16).int()
    return torch.where(bits < 0, -(bits & 0x7FFF), bits)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


@triton.jit
def _probe(H, A, n, BLOCK: tl.constexpr):
    """Applies whatever ``sublayer_kernels._gelu`` is when it first compiles (after :func:`_install`)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(A + offs, _kernels._gelu(tl.load(H + offs, mask=m, other=0.0)).to(tl.bfloat16), mask=m)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        run(sys.argv[1])
    else:
        print(torch.cuda.get_device_name(), torch.__version__, flush=True)
        for name in VARIANTS:
            subprocess.run([sys.executable, __file__, name], check=True)
