"""Where does the host's time go in an eager SReT step? (Eager steps are bound by the CPU, not the GPU.)

Runs eager steps of each model under ``cProfile`` and prints the step's wall time (synchronised) with and without
the profiler, then the Python functions with the most self time and the most cumulative time; and times, per call,
the host cost of the building blocks a fused sublayer is made of (a Triton launch, an ``autograd.Function``, a
small aten op), each on tiny tensors so the GPU never holds the host back.

    PYTHONPATH=src python3 benchmarks/host_overhead.py --out $OUT --models sret_t
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sret
from profile_step import make_step  # this script's folder is on sys.path when run as a file


def _wall_ms(step, steps: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / steps


def profile_model(name: str, bench: str, batch: int, steps: int, out: Path, rows: int) -> None:
    model = sret.create_model(name).cuda().train(bench == "train")
    step = make_step(model, bench, batch)
    for _ in range(5):
        step()
    plain = _wall_ms(step, steps)
    prof = cProfile.Profile()
    prof.enable()
    profiled = _wall_ms(step, steps)
    prof.disable()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(rows)
    stats.sort_stats("cumulative").print_stats(rows)
    head = (f"=== {name} {bench} batch {batch}: eager step {plain:.2f} ms wall ({batch / plain * 1e3:,.0f} img/s), "
            f"{profiled:.2f} ms under cProfile; times below are for {steps} steps")
    report = head + "\n" + text.getvalue()
    (out / f"host_{name}_{bench}.txt").write_text(report)
    print(head)
    print("\n".join(report.splitlines()[:rows + 12]))


def _per_call_us(fn, calls: int = 2000) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - t0
    torch.cuda.synchronize()
    return elapsed * 1e6 / calls


def building_blocks() -> None:
    """Host microseconds per call of the pieces a fused sublayer launches."""
    from sret.models import layernorm as ln
    from sret.models import sublayer_kernels as k

    x = torch.randn(2, 32, 64, device="cuda")
    y = torch.randn(2, 32, 64, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(64, device="cuda")
    b = torch.zeros(64, device="cuda")
    c = torch.ones(1, device="cuda")
    w1, b1 = torch.randn(230, 64, device="cuda"), torch.zeros(230, device="cuda")
    w2, b2 = torch.randn(64, 230, device="cuda"), torch.zeros(64, device="cuda")
    lin = torch.nn.Linear(64, 192).cuda()

    class _Noop(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t

        @staticmethod
        def backward(ctx, g):
            return g

    cases = {
        "torch.empty (64 floats)": lambda: torch.empty(64, device="cuda"),
        "aten add (tiny)": lambda: torch.add(x, x),
        "w.to(bfloat16) (192x64)": lambda: lin.weight.to(torch.bfloat16),
        "addmm bf16 (64x64 @ 64x192)": lambda: torch.addmm(lin.bias.to(torch.bfloat16), y.view(64, 64),
                                                           lin.weight.to(torch.bfloat16).t()),
        "autograd.Function.apply (no-op, no grad)": lambda: _Noop.apply(x),
        "ln_forward (Triton launch)": lambda: ln.ln_forward(x.view(64, 64), w, b, 1e-6, torch.bfloat16),
        "residual_forward (Triton launch)": lambda: k.residual_forward(x, y, c, c, None),
        "prepared_weights (Triton launch)": lambda: k.prepared_weights(w1, w2, 64, 64, torch.bfloat16),
        "mlp_residual_forward (2 Triton launches)": lambda: k.mlp_residual_forward(
            x, w, b, w1, b1, w2, b2, c, c, None, 1e-6, torch.bfloat16, False),
        "sdpa (tiny, bf16)": lambda: F.scaled_dot_product_attention(y.view(2, 2, 32, 32), y.view(2, 2, 32, 32),
                                                                      y.view(2, 2, 32, 32)),
    }
    print("=== host microseconds per call (tiny tensors, 2000 calls)")
    for label, fn in cases.items():
        print(f"{label:45s} {_per_call_us(fn):8.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["sret_t"])
    parser.add_argument("--benches", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=40)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    building_blocks()
    for name in args.models:
        for bench in args.benches:
            profile_model(name, bench, args.batch_size, args.steps, args.out, args.rows)


if __name__ == "__main__":
    main()
