"""Tile sweep of the one-launch MLP sublayer kernel against the PyTorch ops, per SReT shape (one H100 call).

For every (tokens M, channels C, hidden H) an SReT-T or SReT-S MLP/NLL sublayer runs at batch 256, times with
``triton.testing.do_bench`` (median, ms): the PyTorch path of the fused sublayer (``SRET_FUSED_KERNELS=0``) and the
kernel under each tile config, in inference (``save=False``) and training-forward (``save=True``) form. Prints the
best config per shape and whether it beats PyTorch; ``--out`` gets the full table as JSON.

    PYTHONPATH=src python3 benchmarks/tune_sublayer_kernel.py --out $OUT
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

from sret.models import fused
from sret.models import sublayer_kernels as K

SHAPES = [  # (name, M, C, H)
    ("T s0 mlp", 256 * 784, 64, 230), ("T s0 nll", 256 * 784, 64, 64),
    ("T s1 mlp", 256 * 196, 128, 460), ("T s1 nll", 256 * 196, 128, 128),
    ("T s2 mlp", 256 * 49, 256, 921), ("T s2 nll", 256 * 49, 256, 256),
    ("S s0 mlp", 256 * 784, 126, 378), ("S s0 nll", 256 * 784, 126, 252),
    ("S s1 mlp", 256 * 196, 252, 756), ("S s1 nll", 256 * 196, 252, 504),
    ("S s2 mlp", 256 * 49, 504, 1512), ("S s2 nll", 256 * 49, 504, 1008),
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--deadline", type=float, default=480.0, help="seconds; configs after it are skipped")
    args = parser.parse_args()
    deadline = time.time() + args.deadline
    dev, dt = "cuda", torch.bfloat16
    table = []
    for name, M, C, H in SHAPES:
        N = M // 256
        x = torch.randn(256, N, C, device=dev)
        lw, lb = torch.randn(C, device=dev), torch.randn(C, device=dev)
        w1, b1 = torch.randn(H, C, device=dev) / C**0.5, torch.randn(H, device=dev)
        w2, b2 = torch.randn(C, H, device=dev) / H**0.5, torch.randn(C, device=dev)
        c1, c2 = torch.ones(1, device=dev), torch.ones(1, device=dev)
        block_c = max(16, triton.next_power_of_2(C))
        for save in (False, True):
            os.environ["SRET_FUSED_KERNELS"] = "0"
            args_t = (x, lw, lb, w1, b1, w2, b2, c1, c2, None, 1e-6, dt)
            if save:
                ws = [t.requires_grad_(True) for t in (w1, w2)]
                torch_ms = do_bench(lambda: fused._MlpResidual.apply(*args_t), return_mode="median")
                for t in ws:
                    t.requires_grad_(False)
            else:
                with torch.no_grad():
                    torch_ms = do_bench(lambda: fused._MlpResidual.apply(*args_t), return_mode="median")
            row = dict(shape=name, M=M, C=C, H=H, save=save, torch_ms=torch_ms, configs=[])
            out = torch.empty_like(x)
            h = torch.empty((M, H) if save else (1, 1), device=dev, dtype=dt)
            mean = torch.empty(M if save else 1, device=dev)
            rstd = torch.empty_like(mean)
            hs = (32, 64) if block_c <= 128 else (16, 32)
            for bm, bh, warps, stages in itertools.product((16, 32, 64, 128), hs, (4, 8), (2,)):
                if bm * block_c > 16384 or (bm == 16 and block_c < 512) or time.time() > deadline:
                    continue

                def launch(bm=bm, bh=bh, warps=warps, stages=stages):
                    K._mlp_residual_fwd[(triton.cdiv(M, bm),)](
                        x, lw, lb, w1, b1, w2, b2, c1, c2, out, h, mean, rstd, M, C, H, N, 1e-6, HAS_C1=True,
                        K_PER_SAMPLE=False, SAVE=save, BLOCK_M=bm, BLOCK_C=block_c, BLOCK_H=bh, num_warps=warps,
                        num_stages=stages)

                try:
                    ms = do_bench(launch, warmup=10, rep=40, return_mode="median")
                except Exception as err:  # out of shared memory / registers: not a candidate
                    row["configs"].append(dict(bm=bm, bh=bh, warps=warps, stages=stages, error=type(err).__name__))
                    continue
                row["configs"].append(dict(bm=bm, bh=bh, warps=warps, stages=stages, ms=ms))
            ok = [c for c in row["configs"] if "ms" in c]
            best = min(ok, key=lambda c: c["ms"]) if ok else None
            row["best"] = best
            table.append(row)
            print(f"{name:9s} M={M:6d} C={C:3d} H={H:4d} save={int(save)} torch {torch_ms:.3f} ms | best kernel "
                  + (f"{best['ms']:.3f} ms bm={best['bm']} bh={best['bh']} w={best['warps']} s={best['stages']} "
                     f"-> {torch_ms / best['ms']:.2f}x" if best else "none"), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune_sublayer_kernel.json").write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
