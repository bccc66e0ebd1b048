"""Kernel-level profile of eager SReT steps, plus the stem's BatchNorm layouts: where does a step's time go?

Prints, per model (sret's or timm's) and kind of step, the wall time of unprofiled steps, the CPU and GPU time of one
step, the number of aten ops launched per step, and the kernels with the most GPU self time (``--compile``: of the
compiled model); then times the conv stem's forward + backward in NCHW and channels-last
(its bf16 NCHW BatchNorm backward was the largest single kernel of the run-1 training profile).

    PYTHONPATH=src python3 benchmarks/profile_step.py --out $OUT --models sret_t sret_t_wo_slice

Environment switches read by the model (``SRET_FAST_LN``, ``SRET_FUSED``) are set per entry of ``--variants``
(e.g. ``--variants default SRET_FUSED=0``), so before/after run in one process on one GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import timm
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import sret
from sret.models.sret import ConvStem


def _env(variant: str) -> dict[str, str]:
    if variant == "default":
        return {}
    return dict(kv.split("=", 1) for kv in variant.split(","))


def make_step(model: torch.nn.Module, bench: str, batch: int):
    """One eager bf16 step of ``model`` on random 224 px inputs: inference (no grad) or a training step (cross-entropy,
    backward, fused AdamW). Shared with ``host_overhead.py``."""
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (batch,), device="cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        if bench == "infer":
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                model(x)
            return
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _model(name: str):
    return sret.create_model(name) if name in sret.list_models() else timm.create_model(name)


def host_profile(step, steps: int, rows: int) -> str:
    """Where the host's time goes in ``steps`` steps (cProfile, Python functions): the view the kernel table lacks
    when a step's wall time is well above its GPU time. Top functions by own time, then by cumulative time."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    prof.disable()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(rows)
    stats.sort_stats("cumulative").print_stats(rows)
    return text.getvalue()


def profile_model(name: str, bench: str, batch: int, out: Path, tag: str, steps: int = 3, rows: int = 25,
                  by_shape: tuple[str, ...] = (), compile_mode: Optional[str] = None, host: bool = False) -> None:
    model = _model(name).cuda().train(bench == "train")
    if compile_mode is not None:  # "default" or a torch.compile mode; profiled after the compilation (warm-up)
        model = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
        tag = f"{tag}_compile_{compile_mode}"
    step = make_step(model, bench, batch)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):  # wall time of a step without the profiler: against its GPU time, is the host the bound?
        step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) * 1e3 / 10
    torch.cuda.reset_peak_memory_stats()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=bool(by_shape)) as p:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    events = p.key_averages()
    kernels = [e.time_range.elapsed_us() for e in p.events() if e.device_type == DeviceType.CUDA]
    aten_calls = sum(e.count for e in events if e.key.startswith("aten::"))
    cpu_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
    gpu_ms = sum(e.self_device_time_total for e in events) / 1e3 / steps
    table = events.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=70)
    head = (f"=== {name} {bench} [{tag}] per step: wall {wall_ms:.2f} ms unprofiled, CPU self {cpu_ms:.1f} ms, "
            f"GPU self {gpu_ms:.1f} ms, "
            f"aten calls {aten_calls / steps:.0f} (incl. nested), peak {peak:.2f} GiB\n"
            + kernel_histogram(kernels, steps))
    for op in by_shape:  # the named ops split by input shapes: which calls of a many-called op cost the time
        shaped = [e for e in p.key_averages(group_by_input_shape=True) if e.key == op]
        shaped.sort(key=lambda e: -e.self_device_time_total)
        table += f"\n\n{op} by input shapes (per step: calls, GPU us):\n" + "\n".join(
            f"{e.count / steps:7.1f} {e.self_device_time_total / steps:9.1f}  {e.input_shapes}" for e in shaped[:rows])
    table += "\n\nBy CPU self time:\n" + events.table(sort_by="self_cpu_time_total", row_limit=rows,
                                                     max_name_column_width=70)
    if host:
        table += f"\n\nHost (cProfile, {steps} steps):\n" + host_profile(step, steps, rows)
    (out / f"profile_{name}_{bench}_{tag}.txt").write_text(head + "\n" + table)
    print(head, flush=True)
    kept = [ln for ln in table.splitlines()[3:3 + 14]]
    print("\n".join(ln[:72] + ln[-60:] for ln in kept), flush=True)


def kernel_histogram(durations_us: list[float], steps: int) -> str:
    """Kernels (and memsets/copies) a step, their summed time, and how much of it is in short kernels: a step of
    many few-microsecond launches is bound by their count, not their bytes."""
    edges = (2, 4, 8, 16, 32, 64, 128, float("inf"))
    line = f"kernels per step {len(durations_us) / steps:.0f}, {sum(durations_us) / steps / 1e3:.2f} ms;"
    lo = 0.0
    for hi in edges:
        sel = [d for d in durations_us if lo <= d < hi]
        line += f" [{lo:g},{hi:g}) us: {len(sel) / steps:.0f} / {sum(sel) / steps / 1e3:.2f} ms;"
        lo = hi
    return line


def time_stem(batch: int, channels_last: bool, iters: int = 20) -> float:
    stem = ConvStem(3, 64).cuda().train()
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    if channels_last:
        stem = stem.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = stem(x)
        out.float().sum().backward()

    for _ in range(3):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "profile_out")))
    parser.add_argument("--models", nargs="+", default=["sret_t", "sret_t_wo_slice"])
    parser.add_argument("--benches", nargs="+", default=["infer", "train"])
    parser.add_argument("--variants", nargs="+", default=["default"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--stem", action="store_true", help="also time the conv stem in both layouts")
    parser.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        help="profile torch.compile(model) (after its compilation), optionally in a compile mode")
    parser.add_argument("--rows", type=int, default=25, help="kernels listed per profile")
    parser.add_argument("--host", action="store_true", help="also profile the host's Python functions (cProfile)")
    parser.add_argument("--by-shape", nargs="*", default=[], metavar="OP",
                        help="also list these ops (e.g. aten::copy_) split by input shapes")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("profile_step.py needs a CUDA device", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    for variant in args.variants:
        saved = dict(os.environ)
        os.environ.update(_env(variant))
        try:
            for name in args.models:
                for bench in args.benches:
                    try:
                        tag = variant.replace("=", "").replace(",", "_")
                        profile_model(name, bench, args.batch_size, args.out, tag, rows=args.rows,
                                      by_shape=tuple(args.by_shape), compile_mode=args.compile, host=args.host)
                    except Exception as exc:  # keep going: one failure should not cost the call
                        print(f"!!! {name} {bench} [{variant}]: {type(exc).__name__}: {exc}", flush=True)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    if args.stem:
        for cl in (False, True):
            print(f"stem fwd+bwd, batch {args.batch_size}, {'channels_last' if cl else 'NCHW'}: "
                  f"{time_stem(args.batch_size, cl):.2f} ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
