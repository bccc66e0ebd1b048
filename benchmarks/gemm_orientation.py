"""Time the training backward's weight-gradient GEMMs (``A^T B`` summed over the M = batch x tokens rows) in the
orientations cuBLAS can be asked for, at SReT-T's shapes (batch 256, bf16, CUDA-graph replays).

These GEMMs reduce over 12k-200k rows into a small (n1, n2) result; the run-70 profile put them at ~1.5-2x the time
their bytes take. ``A^T B`` and ``(B^T A)^T`` are the same numbers computed by different kernels; this says whether
asking for the other one pays.

    PYTHONPATH=src python3 benchmarks/gemm_orientation.py
"""

from __future__ import annotations

import torch
from triton.testing import do_bench_cudagraph

# (M, n1, n2): the (A, B) shapes of SReT-T's weight-gradient GEMMs, from the run-70 profile by input shape
SHAPES = [
    (50176, 480, 136), (50176, 128, 480), (50176, 128, 128), (50176, 384, 136), (50176, 128, 136),
    (200704, 64, 64), (200704, 256, 72), (200704, 64, 256), (200704, 192, 72), (200704, 64, 72),
    (12544, 960, 264), (12544, 256, 960), (12544, 768, 264), (12544, 256, 256), (12544, 256, 264),
]


def main() -> None:
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"{'M':>7} {'n1':>4} {'n2':>4} | {'A^T B us':>9} {'(B^T A)^T us':>13} {'+copy us':>9} | floor us | max diff")
    for M, n1, n2 in SHAPES:
        a = torch.randn(M, n1, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(M, n2, device="cuda", dtype=torch.bfloat16)
        ref = torch.mm(a.t(), b)
        alt = torch.mm(b.t(), a).t()
        t1 = do_bench_cudagraph(lambda: torch.mm(a.t(), b)) * 1e3
        t2 = do_bench_cudagraph(lambda: torch.mm(b.t(), a)) * 1e3
        t3 = do_bench_cudagraph(lambda: torch.mm(b.t(), a).t().contiguous()) * 1e3
        floor = (a.numel() + b.numel()) * 2 / 3.0e12 * 1e6  # bytes at ~3 TB/s
        diff = (ref.float() - alt.float()).abs().max().item()
        print(f"{M:7d} {n1:4d} {n2:4d} | {t1:9.1f} {t2:13.1f} {t3:9.1f} | {floor:8.1f} | {diff:.3g}")


if __name__ == "__main__":
    main()
