"""Tile sweep of the LayerNorm + two GEMM path of the MLP sublayer (``GEMM_TILES``) against the PyTorch ops and the
one-launch kernel, per SReT shape (one H100 call).

For every (tokens M, channels C, hidden H) an SReT-T or SReT-S MLP/NLL sublayer runs at batch 256: the best fc1 and
fc2 GEMM tiles, then the whole path against the one-launch kernel (its ``PW_TILES`` entry, if any) and the PyTorch
ops, in inference (``save=False``) and training-forward (``save=True``) form, timed with
``triton.testing.do_bench`` (median, ms). ``--out`` gets the full table as JSON. (The one-launch kernel has its own
sweep, timed as CUDA graphs: ``benchmarks/sweep_mlp_kernel.py``.)

    PYTHONPATH=src python3 benchmarks/tune_sublayer_kernel.py --out $OUT
"""

from __future__ import annotations

import argparse
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


def sublayer_inputs(M: int, C: int, H: int, dev: str) -> tuple[torch.Tensor, ...]:
    """Random inputs of one MLP sublayer at batch 256: x (256, M / 256, C), LN affine, fc1, fc2, c1, c2."""
    x = torch.randn(256, M // 256, C, device=dev)
    lw, lb = torch.randn(C, device=dev), torch.randn(C, device=dev)
    w1, b1 = torch.randn(H, C, device=dev) / C**0.5, torch.randn(H, device=dev)
    w2, b2 = torch.randn(C, H, device=dev) / H**0.5, torch.randn(C, device=dev)
    return x, lw, lb, w1, b1, w2, b2, torch.ones(1, device=dev), torch.ones(1, device=dev)


GEMM_CONFIGS = [  # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): the usual Hopper/Ampere matmul tiles, a few small ones;
    # BLOCK_K must divide 64 (the padding of the K dimensions)
    (128, 128, 64, 8, 3), (128, 64, 64, 4, 3), (64, 128, 64, 4, 3), (128, 128, 32, 8, 4), (64, 64, 64, 4, 3),
    (128, 256, 64, 8, 3), (64, 256, 32, 8, 3), (128, 64, 32, 4, 4), (256, 64, 64, 8, 3), (128, 32, 64, 4, 3),
]


def tune_gemm(args: argparse.Namespace) -> int:
    """LayerNorm + two GEMM launches (``GEMM_TILES``): best fc1 and fc2 tiles per shape, then the whole path against
    the one-launch kernel (its ``PW_TILES`` entry, if any) and the PyTorch ops, inference and training forward."""
    deadline = time.time() + args.deadline
    dev, dt = "cuda", torch.bfloat16
    table = []
    for name, M, C, H in SHAPES:
        if name.startswith("T") and name.endswith("nll") and not args.all_shapes:  # one launch: 0.06-0.08 ms
            continue
        N = M // 256
        x, lw, lb, w1, b1, w2, b2, c1, c2 = sublayer_inputs(M, C, H, dev)
        cp, hp = triton.cdiv(C, 64) * 64, triton.cdiv(H, 64) * 64
        xn = torch.randn(M, cp, device=dev, dtype=dt)
        a = torch.randn(M, hp, device=dev, dtype=dt)
        w1p, w2p = K._padded(w1, hp, cp, dt), K._padded(w2, C, hp, dt)
        h = torch.empty((1, 1), device=dev, dtype=dt)
        out = torch.empty_like(x)
        fc1, fc2 = [], []
        for cfg in GEMM_CONFIGS:
            bm, bn, bk, warps, stages = cfg
            if time.time() > deadline:
                break

            def k1(bm=bm, bn=bn, bk=bk, warps=warps, stages=stages, xn=xn, w1p=w1p, b1=b1, a=a, h=h, M=M, H=H,
                   cp=cp, hp=hp):
                K._fc1_gelu_fwd[(triton.cdiv(M, bm), triton.cdiv(hp, bn))](
                    xn, w1p, b1, a, h, M, H, cp, hp, SAVE=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
                    num_stages=stages)

            def k2(bm=bm, bn=bn, bk=bk, warps=warps, stages=stages, a=a, w2p=w2p, b2=b2, x=x, c1=c1, c2=c2,
                   out=out, M=M, C=C, N=N, hp=hp):
                K._fc2_residual_fwd[(triton.cdiv(M, bm), triton.cdiv(C, bn))](
                    a, w2p, b2, x, c1, c2, out, M, C, hp, N, HAS_C1=True, K_PER_SAMPLE=False, BLOCK_M=bm, BLOCK_N=bn,
                    BLOCK_K=bk, GELU_A=False, num_warps=warps, num_stages=stages)

            for fn, sink, useful in ((k1, fc1, bn <= hp), (k2, fc2, bn <= max(64, triton.next_power_of_2(C)))):
                if not useful:
                    continue
                try:
                    sink.append((do_bench(fn, warmup=10, rep=40, return_mode="median"), cfg))
                except Exception as err:  # noqa: BLE001  out of shared memory / registers: not a candidate
                    print(f"  {name} {cfg}: {type(err).__name__}", flush=True)
        if not fc1 or not fc2:
            continue
        best = (min(fc1)[1], min(fc2)[1])
        for save in (False, True):
            os.environ["SRET_FUSED_KERNELS"] = "0"
            ws = [t.requires_grad_(save) for t in (w1, w2)]
            args_t = (x, lw, lb, w1, b1, w2, b2, c1, c2, None, 1e-6, dt, save)
            with torch.set_grad_enabled(save):
                torch_ms = do_bench(lambda args_t=args_t: fused._MlpResidual.apply(*args_t), return_mode="median")
            for t in ws:
                t.requires_grad_(False)
            os.environ["SRET_FUSED_KERNELS"] = "1"
            tile = K.PW_TILES.get((C, H, save))
            one_ms = None
            if tile is not None:
                one_ms = do_bench(lambda tile=tile, save=save: K.mlp_residual_forward(
                    x, lw, lb, w1, b1, w2, b2, c1, c2, None, 1e-6, dt, save=save, pw_tile=tile), return_mode="median")
            two_ms = do_bench(lambda save=save: K.mlp_residual_forward(
                x, lw, lb, w1, b1, w2, b2, c1, c2, None, 1e-6, dt, save=save, gemm_tile=best), return_mode="median")
            row = {"shape": name, "M": M, "C": C, "H": H, "save": save, "torch_ms": torch_ms, "one_launch_ms": one_ms,
                   "gemm_ms": two_ms, "gemm_tile": best, "fc1_ms": min(fc1)[0], "fc2_ms": min(fc2)[0],
                   "fc1_configs": fc1, "fc2_configs": fc2}
            table.append(row)
            print(f"{name:9s} save={int(save)} torch {torch_ms:.3f} | one-launch "
                  + (f"{one_ms:.3f}" if one_ms else "  -  ") + f" | LN+2 GEMMs {two_ms:.3f} ms "
                  f"(fc1 {min(fc1)[0]:.3f}, fc2 {min(fc2)[0]:.3f}) tiles {best} -> "
                  f"{min(torch_ms, one_ms or 1e9) / two_ms:.2f}x", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune_gemm_path.json").write_text(json.dumps(table, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--deadline", type=float, default=480.0, help="seconds; configs after it are skipped")
    parser.add_argument("--all-shapes", action="store_true", help="SReT-T's NLL shapes too")
    return tune_gemm(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
