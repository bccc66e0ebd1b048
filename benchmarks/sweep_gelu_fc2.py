"""Tile sweep of the cuBLAS MLP path's GELU + fc2 + residual as one launch (``_fc2_residual_fwd`` with GELU_A).

For each (C, H) of ``sublayer_kernels.CUBLAS_MLP`` (SReT-S's stages 1 and 2, batch 256), times the whole sublayer
forward as the model runs it (``mlp_residual_forward`` on the cuBLAS path: LayerNorm kernel, cuBLAS fc1, then
``F.gelu`` + cuBLAS fc2 + the residual kernel) against the same with the last three as one Triton launch in every
tile config, each output checked against the launches it replaces, as CUDA-graph replays. Prints the
``CUBLAS_GELU_FC2`` entries that win by >= 3 % (for both the inference and training forward where CUBLAS_MLP has
them: the fc2 work is the same).

    PYTHONPATH=src python3 benchmarks/sweep_gelu_fc2.py
"""

from __future__ import annotations

import itertools

import torch
from triton.testing import do_bench_cudagraph

from sret.models import sublayer_kernels as K

BATCH = 256
TOKENS = {252: 196, 504: 49}  # SReT-S: stage 1 (14 x 14 tokens), stage 2 (7 x 7)
CONFIGS = [c for c in itertools.product((64, 128), (128, 256), (32, 64), (4, 8), (2, 3))
           if not (c[0] == 128 and c[1] == 256 and c[3] == 4)]  # a 128 x 256 float32 tile on 4 warps: spills


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__)
    print(f"{'C':>4} {'H':>5} {'launches us':>11} {'one launch us':>13}  "
          "best (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)")
    entries = []
    for C, H in sorted({(c, h) for c, h, _ in K.CUBLAS_MLP}):
        gen = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(BATCH, TOKENS[C], C, device="cuda", generator=gen)
        lw, lb = torch.randn(C, device="cuda", generator=gen), torch.randn(C, device="cuda", generator=gen)
        w1 = torch.randn(H, C, device="cuda", generator=gen) * C**-0.5
        b1 = torch.randn(H, device="cuda", generator=gen) * 0.1
        w2 = torch.randn(C, H, device="cuda", generator=gen) * H**-0.5
        b2 = torch.randn(C, device="cuda", generator=gen) * 0.1
        c1, c2 = torch.full((1,), 0.9, device="cuda"), torch.full((1,), 0.7, device="cuda")

        def run(tile):
            return K.mlp_residual_forward(x, lw, lb, w1, b1, w2, b2, c1, c2, None, 1e-6, torch.bfloat16, False,
                                          cublas=True, fc2_tile=tile)[0]

        ref = run(())
        branch = (ref - 0.9 * x).norm()
        base_us = do_bench_cudagraph(lambda: run(())) * 1e3
        best = (float("inf"), None)
        for cfg in CONFIGS:
            try:
                out = run(cfg)
            except Exception as err:  # noqa: BLE001 - tiles too large for this GPU: skip the config
                print(f"   {cfg}: {type(err).__name__}")
                continue
            err = ((out - ref).norm() / branch).item()  # relative to the branch, not the residual stream
            if err > 1e-2:
                raise SystemExit(f"config {cfg} for C={C}, H={H}: relative error {err:.2e} against the launches")
            best = min(best, (do_bench_cudagraph(lambda cfg=cfg: run(cfg)) * 1e3, cfg))
        print(f"{C:4d} {H:5d} {base_us:11.1f} {best[0]:13.1f}  {best[1]}", flush=True)
        if best[0] <= 0.97 * base_us:
            for save in (False, True):
                if (C, H, save) in K.CUBLAS_MLP:
                    entries.append(f"    ({C}, {H}, {save}): {best[1]},  # {best[0]:.1f} vs {base_us:.1f}")
    print("CUBLAS_GELU_FC2 entries (>= 3 % faster than F.gelu + cuBLAS + the residual kernel):")
    print("\n".join(entries) or "    (none)")


if __name__ == "__main__":
    main()
