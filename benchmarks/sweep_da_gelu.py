"""Tile sweep of the MLP backward's d fc2-input GEMM with the GELU pass as its epilogue (``_da_gelu_bwd``).

For each MLP / NLL shape of SReT-T and SReT-S in training (batch 256; the hidden width as the forward kernels save
h), times cuBLAS's ``mm`` followed by ``gelu_and_grad`` (what the backward runs without the table entry) against
``da_gelu_and_grad`` in every tile config, each checked against the unfused pair, as CUDA-graph replays; prints the
``DA_GELU_TILES`` entries that win by >= 3 %.

    PYTHONPATH=src python3 benchmarks/sweep_da_gelu.py
"""

from __future__ import annotations

import argparse
import itertools

import torch
from triton.testing import do_bench_cudagraph

from sret.models import sublayer_kernels as K

BATCH = 256
# (tokens per image, C, hidden units) of the MLP and NLL sublayers: SReT-T, then SReT-S; h is saved wider (the
# forward kernels' tile, ``saved_hidden_width``)
SHAPES = [(784, 64, 230), (784, 64, 64), (196, 128, 460), (196, 128, 128), (49, 256, 921), (49, 256, 256),
          (784, 126, 378), (784, 126, 252), (196, 252, 756), (196, 252, 504), (49, 504, 1008), (49, 504, 1512)]
CONFIGS = list(itertools.product((64, 128), (64, 128), (32, 64), (4, 8), (2, 3)))
QUICK_CONFIGS = [c for c in CONFIGS if c[2] == 64]  # every winner so far had BLOCK_K = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=3, type=int, action="append", metavar=("TOKENS", "C", "H"),
                        help="sweep only this shape (repeatable); default: every shape of SHAPES")
    parser.add_argument("--quick", action="store_true", help="only the configs with BLOCK_K = 64 (half the sweep)")
    args = parser.parse_args()
    shapes = [tuple(s) for s in args.shape or SHAPES]
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    print(torch.cuda.get_device_name(), torch.__version__)
    print(f"{'tokens':>6} {'C':>4} {'HW':>5} {'mm+pass us':>10} {'best us':>8}  "
          "best (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)")
    entries = []
    for tokens, C, H in shapes:
        HW = K.saved_hidden_width(C, H)
        gen = torch.Generator(device="cuda").manual_seed(0)
        M = BATCH * tokens
        # the branch gradient as the backward has it: rows aligned_width(C) wide, zeros past C (fused.py)
        g16 = torch.nn.functional.pad(torch.randn(M, C, device="cuda", generator=gen), (0, -C % 8)).bfloat16()
        w2 = torch.randn(C, HW, device="cuda", generator=gen) * C**-0.5
        c2 = torch.full((1,), 0.7, device="cuda")
        h = torch.randn(M, HW, device="cuda", generator=gen).bfloat16()

        def unfused():
            w = torch.nn.functional.pad(w2 * c2, (0, 0, 0, g16.shape[1] - C))  # zero rows past C, as the model's
            return K.gelu_and_grad(h, torch.mm(g16, w.to(torch.bfloat16)))

        ref_a, ref_dh = (t.float() for t in unfused())
        base_us = do_bench_cudagraph(unfused) * 1e3
        best = (float("inf"), None)
        for cfg in configs:
            try:
                a, dh = K.da_gelu_and_grad(g16, w2, c2, h, config=cfg)
            except Exception as err:  # noqa: BLE001 - tiles too large for this GPU: skip the config
                print(f"   {cfg}: {type(err).__name__}")
                continue
            err_a = (a.float() - ref_a).abs().max().item()
            err_dh = ((dh.float() - ref_dh).norm() / ref_dh.norm()).item()
            if err_a > 0 or err_dh > 1e-2:
                raise SystemExit(f"config {cfg} for {(tokens, C, HW)}: a differs by {err_a}, dh by {err_dh:.2e}")
            best = min(best, (do_bench_cudagraph(lambda: K.da_gelu_and_grad(g16, w2, c2, h, config=cfg)) * 1e3, cfg))
        print(f"{tokens:6d} {C:4d} {HW:5d} {base_us:10.1f} {best[0]:8.1f}  {best[1]}", flush=True)
        if best[0] <= 0.97 * base_us:
            entries.append(f"    ({C}, {HW}): {best[1]},  # {best[0]:.1f} vs {base_us:.1f}")
    print("DA_GELU_TILES entries (>= 3 % faster than mm + gelu_and_grad):")
    print("\n".join(entries) or "    (none)")


if __name__ == "__main__":
    main()
