"""Sweep of the LayerNorm backward's launch (``layernorm.ln_backward``) per SReT shape, timed as CUDA-graph replays.

The residual form the fused sublayers run (``residual_grad``, ``c1``, ``grad_sum``) at batch 256: x and the residual
gradient float32, the incoming gradient bf16, dx float32. Per shape it prints the current launch
(``backward_config``), every candidate (rows a tile, warps, programs per SM, column sums per tile or per element), the
best, and what the bytes it moves (14 a channel) would take at the bandwidth of a plain ``torch.add`` of float32
tensors of the same shape (12 bytes a channel), the floor. Each candidate's outputs are checked against the
current launch's: dx bit for bit (rows are independent), the column sums to float32 rounding (their order depends
on the programs). Prints, last, the shapes where a candidate beat the current launch by ``--margin``. ``--low``: the
launch also writes dx's bf16 copy (``dx_low``, the form the fused sublayers' backward runs since change 45; 16 bytes
a channel), checked bit for bit too.

    PYTHONPATH=src python3 benchmarks/sweep_ln_backward.py [--out $OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

import torch
from triton.testing import do_bench_cudagraph

from sret.models import layernorm as L

SHAPES = [  # (name, rows at batch 256, C)
    ("T s0", 256 * 784, 64), ("T s1", 256 * 196, 128), ("T s2", 256 * 49, 256),
    ("S s0", 256 * 784, 126), ("S s1", 256 * 196, 252), ("S s2", 256 * 49, 504),
]


def candidates(C: int) -> list[L.BackwardConfig]:
    base, _ = L._tiling(C)
    block_c = 1 << (C - 1).bit_length()
    out = []
    for mult, warps, per_sm, acc2d in itertools.product((0.25, 0.5, 1, 2), (4, 8), (1, 2, 4, 8), (False, True)):
        block_m = int(base * mult)
        if block_m >= 1 and block_m * block_c <= 8192 and (acc2d or mult >= 0.5):
            out.append((block_m, warps, per_sm, acc2d))
    return out


def inputs(M: int, C: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(M, C, device="cuda", generator=g)
    w = torch.randn(C, device="cuda", generator=g)
    b = torch.randn(C, device="cuda", generator=g)
    _, mean, rstd = L.ln_forward(x, w, b, 1e-6, torch.bfloat16)
    dy = torch.randn(M, C, device="cuda", generator=g).to(torch.bfloat16)
    res = torch.randn(M, C, device="cuda", generator=g)
    c1 = torch.tensor([0.9], device="cuda")
    return dy, x, w, mean, rstd, res, c1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--shapes", nargs="*", default=None, help="shape names (default: all), e.g. 'T s0'")
    parser.add_argument("--margin", type=float, default=0.03, help="relative gain a better launch must show")
    parser.add_argument("--low", action="store_true", help="also write dx's bf16 copy (dx_low)")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    rows, better = [], []
    for name, M, C in SHAPES:
        if args.shapes and name not in args.shapes:
            continue
        dy, x, w, mean, rstd, res, c1 = inputs(M, C)

        low = torch.empty(M, C, device="cuda", dtype=torch.bfloat16) if args.low else None

        def run(cfg=None):
            out = L.ln_backward(dy, x, w, mean, rstd, res, c1, grad_sum=True, tokens=1, config=cfg, dx_low=low)
            return out if low is None else (*out, low.clone())

        ref = run()
        out = torch.empty_like(x)
        floor_us = do_bench_cudagraph(lambda: torch.add(x, res, out=out)) * 1e3 * (16 if args.low else 14) / 12
        current = L.backward_config(M, C)
        cur_us = do_bench_cudagraph(run) * 1e3
        print(f"{name}: M {M} C {C}: current {current} {cur_us:.1f} us, floor at add's bandwidth {floor_us:.1f} us",
              flush=True)
        best = (cur_us, current)
        for cfg in candidates(C):
            try:
                got = run(cfg)
                close = (torch.allclose(a, r, rtol=1e-4, atol=1e-3 * r.abs().max().item())
                         for a, r in zip(got[1:5], ref[1:5]))  # the column sums
                ok = torch.equal(got[0], ref[0]) and all(close)
                ok = ok and (low is None or torch.equal(got[5], ref[5]))
                us = do_bench_cudagraph(lambda cfg=cfg: run(cfg)) * 1e3
            except Exception as exc:  # a launch Triton cannot build (registers, shared memory): note it, go on
                print(f"  {cfg}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", flush=True)
                continue
            rows.append(dict(shape=name, M=M, C=C, config=cfg, us=us, ok=ok))
            print(f"  {cfg}: {us:7.1f} us{'' if ok else '  MISMATCH'}", flush=True)
            if ok and us < best[0]:
                best = (us, cfg)
        print(f"  best {best[1]} {best[0]:.1f} us (current {cur_us:.1f}, floor {floor_us:.1f})", flush=True)
        rows.append(dict(shape=name, M=M, C=C, config=current, us=cur_us, ok=True, current=True, floor_us=floor_us))
        if best[0] < cur_us * (1 - args.margin):
            better.append((name, M, C, best[1], best[0], cur_us))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep_ln_backward.json").write_text(json.dumps(rows, indent=1))
    print("better launches:" if better else "no launch beat the current one by the margin")
    for name, M, C, cfg, us, cur in better:
        print(f"  {name} (M {M}, C {C}): {cfg} {us:.1f} us against {cur:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
