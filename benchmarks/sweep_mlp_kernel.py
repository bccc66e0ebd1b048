"""Sweep of the one-launch MLP kernel over prepared weights (``_mlp_residual_fwd_pw``), timed as CUDA-graph replays.

For every SReT MLP/NLL sublayer shape at batch 256, inference (``save=False``) and training forward (``save=True``):
the PyTorch ops of the fused sublayer, the path the current tables choose (``TILES`` / ``GEMM_TILES``), and the new
kernel under each (BLOCK_M, BLOCK_H, warps, stages), its weight preparation launch included. Every time is
``triton.testing.do_bench_cudagraph`` (median of replays): the earlier sweeps used ``do_bench``, whose launch gaps
favour the paths with fewest launches. Each candidate's output is checked against the PyTorch ops on the same data.
The kernels are compiled first in a pool of processes (Triton's on-disk cache is shared), then timed in this one.
Prints, last, the ``PW_TILES`` table of shapes where the new kernel beat both alternatives by ``--margin``.

    PYTHONPATH=src python3 benchmarks/sweep_mlp_kernel.py --out $OUT [--shapes T] [--only "S s0"]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import itertools
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import torch
import triton
from triton.testing import do_bench_cudagraph

from sret.models import fused
from sret.models import sublayer_kernels as K

SHAPES = [  # (name, tokens per sample, C, H)
    ("T s0 mlp", 784, 64, 230), ("T s0 nll", 784, 64, 64), ("T s1 mlp", 196, 128, 460), ("T s1 nll", 196, 128, 128),
    ("T s2 mlp", 49, 256, 921), ("T s2 nll", 49, 256, 256),
    ("S s0 mlp", 784, 126, 378), ("S s0 nll", 784, 126, 252), ("S s1 mlp", 196, 252, 756),
    ("S s1 nll", 196, 252, 504), ("S s2 mlp", 49, 504, 1512), ("S s2 nll", 49, 504, 1008),
]


def configs(block_c: int) -> list[tuple[int, int, int, int]]:
    """(BLOCK_M, BLOCK_H, warps, stages) candidates; the register tiles (BLOCK_M or BLOCK_H by BLOCK_C) are capped."""
    out = []
    for bm, bh, warps, stages in itertools.product((32, 64, 128), (32, 64, 128), (4, 8), (2, 3)):
        if bm * block_c <= 32768 and bh * block_c <= 32768:
            out.append((bm, bh, warps, stages))
    return out


def inputs(batch: int, n: int, C: int, H: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)
    return (r(batch, n, C), r(C), r(C), r(H, C) / C**0.5, r(H), r(C, H) / H**0.5, r(C),
            torch.tensor([0.9], device="cuda"), torch.tensor([1.1], device="cuda"))


def _compile(job) -> tuple:
    """Worker: run the kernel once on a small batch of the job's shape (same integer specialisations as batch 256)."""
    n, C, H, save, cfg = job
    try:
        x, lw, lb, w1, b1, w2, b2, c1, c2 = inputs(16, n, C, H)
        with torch.no_grad():
            K.mlp_residual_forward(x, lw, lb, w1, b1, w2, b2, c1, c2, None, 1e-6, torch.bfloat16, save, pw_tile=cfg)
        torch.cuda.synchronize()
        return job, None
    except Exception as err:  # noqa: BLE001  out of resources, compiler failure: not a candidate
        return job, f"{type(err).__name__}: {str(err)[:200]}"


def torch_path(args_t, save: bool):
    """The fused sublayer's forward with the Triton MLP kernels off (LayerNorm kernel, cuBLAS, PyTorch ops)."""
    os.environ["SRET_FUSED_KERNELS"] = "0"
    try:
        with torch.set_grad_enabled(save):
            return fused._MlpResidual.apply(*args_t, save)
    finally:
        os.environ["SRET_FUSED_KERNELS"] = "1"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--deadline", type=float, default=500.0, help="seconds; shapes after it are skipped")
    parser.add_argument("--shapes", default="T", help="prefixes of the shape names to run")
    parser.add_argument("--only", nargs="*", default=None, help="whole-name prefixes, e.g. 'S s0' (narrows --shapes)")
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--margin", type=float, default=1.03)
    args = parser.parse_args()
    t0 = time.time()
    shapes = [s for s in SHAPES if s[0].split()[0] in args.shapes.split()
              and (args.only is None or any(s[0].startswith(p) for p in args.only))]
    jobs = [(n, C, H, save, cfg) for _, n, C, H in shapes for save in (False, True)
            for cfg in configs(max(16, triton.next_power_of_2(C)))]
    failed = {}
    with cf.ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        for job, err in pool.map(_compile, jobs):
            if err:
                failed[job] = err
    print(f"compiled {len(jobs)} kernels in {time.time() - t0:.0f} s, {len(failed)} failed", flush=True)
    table, rows = {}, []
    for name, n, C, H in shapes:
        if time.time() - t0 > args.deadline:
            print(f"deadline: {name} and later skipped", flush=True)
            break
        x, lw, lb, w1, b1, w2, b2, c1, c2 = inputs(256, n, C, H, seed=1)
        base = (x, lw, lb, w1, b1, w2, b2, c1, c2, None, 1e-6, torch.bfloat16)
        for save in (False, True):
            for w in (w1, w2):
                w.requires_grad_(save)
            with torch.no_grad():
                ref = torch_path(base, False)
            branch = (ref - c1 * x).norm()
            torch_ms = do_bench_cudagraph(lambda: torch_path(base, save), return_mode="median")
            with torch.set_grad_enabled(save):
                current_ms = do_bench_cudagraph(lambda: fused._MlpResidual.apply(*base, save), return_mode="median")
            prep_ms = {bh: do_bench_cudagraph(lambda bh=bh: K.prepared_weights(
                w1, w2, max(16, triton.next_power_of_2(C)), bh, torch.bfloat16), return_mode="median")
                for bh in (32, 64, 128)}
            cands = []
            for cfg in configs(max(16, triton.next_power_of_2(C))):
                if (n, C, H, save, cfg) in failed:
                    continue

                def run(cfg=cfg):
                    with torch.no_grad():
                        return K.mlp_residual_forward(x.detach(), lw, lb, w1.detach(), b1, w2.detach(), b2, c1, c2,
                                                      None, 1e-6, torch.bfloat16, save, pw_tile=cfg)

                got = run()
                if got is None:  # out of shared memory at launch
                    cands.append(dict(cfg=cfg, error="OutOfResources"))
                    continue
                err = float((got[0] - ref).norm() / branch)
                if not err < 1e-2:  # also NaN
                    cands.append(dict(cfg=cfg, error=err))
                    continue
                cands.append(dict(cfg=cfg, ms=do_bench_cudagraph(run, return_mode="median"), err=err))
            ok = [c for c in cands if "ms" in c]
            best = min(ok, key=lambda c: c["ms"]) if ok else None
            alt = min(torch_ms, current_ms)
            row = dict(shape=name, M=256 * n, C=C, H=H, save=save, torch_ms=torch_ms, current_ms=current_ms,
                       prep_ms=prep_ms, best=best, candidates=cands)
            rows.append(row)
            if best and alt / best["ms"] >= args.margin:
                table[(C, H, save)] = (tuple(best["cfg"]), alt / best["ms"], best["ms"], alt)
            print(f"{name:9s} save={int(save)} torch {torch_ms:.4f} current {current_ms:.4f} | new "
                  + (f"{best['ms']:.4f} {tuple(best['cfg'])} err {best['err']:.1e} -> {alt / best['ms']:.2f}x"
                     if best else "none") + f" | prep {prep_ms[64]:.4f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep_mlp_kernel.json").write_text(json.dumps(dict(rows=rows, failed=[list(j[:4]) + [list(j[4]), e]
                                                                                 for j, e in failed.items()]),
                                                               indent=1))
    print("PW_TILES = {")
    for (C, H, save), (cfg, speedup, ms, alt) in table.items():
        print(f"    ({C}, {H}, {save}): {cfg},  # {ms:.3f} vs {alt:.3f} ms, {speedup:.2f}x")
    print("}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
