"""The LayerNorm kernels (``layernorm.ln_backward_partials``, ``ln_forward``) on contiguous and zero-padded rows.

Change 54 makes the GEMMs before the backward write ``dy`` 16-byte aligned (SReT-S's 126 and 252 channels carried at
128 and 256), and the kernel reads a (M, C) view with rows ``DY_STRIDE`` apart. Here, per SReT-S width and the two
forms the fused sublayers run (the MLP's: dx's bf16 copy; the sliced attention's: the copy and dy in the shuffled
order), at batch 256 as CUDA-graph replays: dy contiguous and dy in padded rows, dx checked bit for bit between the
two. Then the forward writing rows C or cp wide, the same way. It times the kernels of the tree on ``PYTHONPATH``:
run it on two trees to compare them. (Run 101 also timed a copy of the kernel with ``DY_STRIDE`` not specialised,
``benchmarks/results/session_runs100_104/run101_ln_backward_stride/``; since change 57 the strides are compile-time
constants, and that variant no longer exists.)

    PYTHONPATH=src python3 benchmarks/ln_backward_stride.py [--out $OUT]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from triton.testing import do_bench_cudagraph

from sret.models import layernorm as L

SHAPES = [("S s0", 256 * 784, 784, 126), ("S s1", 256 * 196, 196, 252), ("T s0", 256 * 784, 784, 64)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = parser.parse_args()
    rows = []
    for name, M, N, C in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(M, C, device="cuda", generator=g)
        w = torch.randn(C, device="cuda", generator=g)
        mean, rstd = x.mean(1), x.var(1, unbiased=False).add(1e-6).rsqrt()
        res = torch.randn(M, C, device="cuda", generator=g)
        c1 = torch.tensor([0.9], device="cuda")
        cp = C + (-C % 8)
        padded = torch.zeros(M, cp, device="cuda", dtype=torch.bfloat16)
        padded[:, :C] = torch.randn(M, C, device="cuda", generator=g)
        dense = padded[:, :C].contiguous()
        low = torch.empty(M, cp, device="cuda", dtype=torch.bfloat16)  # written cp wide, as the models ask for it
        idx = torch.randperm(N, device="cuda", generator=g)
        for form, order in (("mlp", None), ("attention", idx)):
            def run(dy):
                return L.ln_backward_partials(dy, x, w, mean, rstd, res, c1, True, None, N, dx_low=low,
                                              dy_rows=order, dx_low_rows=order)[0]
            ref = run(dense).clone()
            times = {}
            for label, dy in (("contiguous", dense), ("padded", padded[:, :C])):
                same = torch.equal(run(dy), ref)
                times[label] = do_bench_cudagraph(lambda: run(dy), return_mode="median") * 1e3
                print(f"{name} {form:9s} {label:24s} {times[label]:8.1f} us  dx same bits: {same}", flush=True)
            rows.append(dict(shape=name, M=M, C=C, form=form, us=times))
    # the forward writing its output C or cp wide (``width``)
    for name, M, N, C in SHAPES:
        x = torch.randn(M, C, device="cuda")
        w, b = torch.randn(C, device="cuda"), torch.randn(C, device="cuda")
        perm = torch.randperm(N, device="cuda")
        cp = C + (-C % 8)
        for form, order in (("plain", None), ("shuffled", perm)):
            ref = L.ln_forward(x, w, b, 1e-6, torch.bfloat16, rows=order)[0]
            times = {}
            for label, width in (("width C", C), ("width cp", cp)):
                def run(width=width):
                    return L.ln_forward(x, w, b, 1e-6, torch.bfloat16, width=width, rows=order)[0]
                same = torch.equal(run()[:, :C], ref)
                times[label] = do_bench_cudagraph(run, return_mode="median") * 1e3
                print(f"{name} forward {form:9s} {label:27s} {times[label]:8.1f} us  same bits: {same}", flush=True)
            rows.append(dict(shape=name, M=M, C=C, form="forward " + form, us=times))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ln_backward_stride.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
