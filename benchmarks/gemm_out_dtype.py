"""Time the training backward's weight-gradient GEMMs (``A^T B`` over the M = batch x tokens rows) with a bf16 result
(what the fused backward asks for now) against a float32 result (``torch.mm(..., out_dtype=torch.float32)``), at
SReT-T's shapes (batch 256, CUDA-graph replays), and count the kernels each launches.

Why: cuBLAS runs most of these long-K, small-result GEMMs split over K, then adds the float32 pieces in a
``splitKreduce`` kernel of its own that rounds to bf16: ~116 of those a training step (run 88). With a float32 result
it may pick another scheme; the finishing kernel (``backward_finish.py``) would then read float32 instead.

    PYTHONPATH=src python3 benchmarks/gemm_out_dtype.py
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench_cudagraph

from gemm_orientation import SHAPES


def kernels(fn) -> int:
    """Kernels one call of ``fn`` launches."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def main() -> None:
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"{'M':>7} {'n1':>4} {'n2':>4} | {'bf16 us':>8} {'kern':>4} | {'fp32 us':>8} {'kern':>4} | max rel diff")
    total = [0.0, 0.0]
    for M, n1, n2 in SHAPES:
        a = torch.randn(M, n1, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(M, n2, device="cuda", dtype=torch.bfloat16)
        low = lambda: torch.mm(a.t(), b)  # noqa: E731
        try:
            wide = lambda: torch.mm(a.t(), b, out_dtype=torch.float32)  # noqa: E731
            wide()
        except (TypeError, RuntimeError) as exc:
            print(f"out_dtype not available: {exc}")
            return
        t_low, t_wide = do_bench_cudagraph(low) * 1e3, do_bench_cudagraph(wide) * 1e3
        ref = a.double().t() @ b.double()
        err = [((f().double() - ref).norm() / ref.norm()).item() for f in (low, wide)]
        total[0] += t_low
        total[1] += t_wide
        print(f"{M:>7} {n1:>4} {n2:>4} | {t_low:8.1f} {kernels(low):>4} | {t_wide:8.1f} {kernels(wide):>4} | "
              f"{err[0]:.1e} / {err[1]:.1e}")
    print(f"sum over the shapes (one call each): bf16 {total[0]:.1f} us, fp32 {total[1]:.1f} us")


if __name__ == "__main__":
    main()
