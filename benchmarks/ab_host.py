"""Host-side A/B inside one process: eager steps of two variants of the host code, alternating block by block.

Eager SReT steps are bound by the host, whose speed drifts by tens of per cent between processes (docs/perf_notes.md,
runs 27, 57 and 62) but less inside one. So the two variants alternate here in short blocks (A B, B A, ...) in one
process on one model, and the verdict is the median of the paired differences. ``--variant``:

- ``grid``: the names ``cdiv`` and ``next_power_of_2`` in the model modules are Triton's ``ConstexprFunction``
  helpers (the code before change 43) or ``kernel_launch``'s plain integer ones. First it times one call of each,
  and counts the calls a step makes.
- ``memo``: ``shared_weights.once`` is a no-op (every application prepares its weights, before change 44) or the
  real one.

    PYTHONPATH=src python3 benchmarks/ab_host.py --variant grid --models sret_t sret_s --benches infer train
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import timeit

import torch
import triton

import sret
from host_overhead import _wall_ms  # this script's folder is on sys.path when run as a file
from profile_step import make_step
from sret.models import batchnorm_kernels, group_attention, image_layout, kernel_launch, layernorm, pool_kernels
from sret.models import shared_weights, sublayer_kernels

MODULES = (batchnorm_kernels, group_attention, image_layout, layernorm, pool_kernels, sublayer_kernels)
PLAIN = {"cdiv": kernel_launch.cdiv, "next_power_of_2": kernel_launch.next_power_of_2}
TRITON = {"cdiv": triton.cdiv, "next_power_of_2": triton.next_power_of_2}
ONCE = shared_weights.once


def use(helpers: dict) -> None:
    for module in MODULES:
        for name, fn in helpers.items():
            if name in vars(module):
                setattr(module, name, fn)


def set_variant(kind: str, new: bool) -> None:
    """``new``: the current code; else the code before the change ``kind`` names."""
    if kind == "grid":
        use(PLAIN if new else TRITON)
    else:
        shared_weights.once = ONCE if new else contextlib.nullcontext


def count_calls(step) -> int:
    """Grid-helper calls in one step (the plain helpers wrapped with a counter)."""
    calls = [0]

    def counted(fn):
        def wrapper(*args):
            calls[0] += 1
            return fn(*args)
        return wrapper

    use({name: counted(fn) for name, fn in PLAIN.items()})
    step()
    torch.cuda.synchronize()
    use(PLAIN)
    return calls[0]


def ab_model(kind: str, name: str, bench: str, batch: int, blocks: int, steps: int) -> None:
    model = sret.create_model(name).cuda().train(bench == "train")
    step = make_step(model, bench, batch)
    times: dict[bool, list[float]] = {False: [], True: []}

    def block(new: bool) -> float:
        set_variant(kind, new)
        return _wall_ms(step, steps)

    for new in (True, False, True, False):  # warm-up: compile, allocator
        block(new)
    calls = count_calls(step) if kind == "grid" else None
    diffs = []
    for i in range(blocks):
        order = (False, True) if i % 2 == 0 else (True, False)
        got = {v: block(v) for v in order}
        for v, ms in got.items():
            times[v].append(ms)
        diffs.append(got[True] - got[False])
    set_variant(kind, True)
    old, new = statistics.median(times[False]), statistics.median(times[True])
    print(f"[{kind}] {name} {bench} batch {batch}"
          f"{f', {calls} grid-helper calls a step' if calls else ''}: ms/step, median of {blocks} blocks of {steps} "
          f"steps: before {old:.3f} ({min(times[False]):.3f}-{max(times[False]):.3f}), after {new:.3f} "
          f"({min(times[True]):.3f}-{max(times[True]):.3f}); paired difference median "
          f"{statistics.median(diffs):+.3f} ms ({statistics.median(diffs) / old * 100:+.1f} %), after faster in "
          f"{sum(d < 0 for d in diffs)}/{blocks} pairs", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["grid", "memo"], default="grid")
    parser.add_argument("--models", nargs="+", default=["sret_t"])
    parser.add_argument("--benches", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("ab_host.py needs a CUDA device", file=sys.stderr)
        return 2
    grid_calls = (("triton.cdiv", "triton.cdiv(200704, 64)"), ("plain cdiv", "kernel_launch.cdiv(200704, 64)"),
                  ("triton.next_power_of_2", "triton.next_power_of_2(230)"),
                  ("plain next_power_of_2", "kernel_launch.next_power_of_2(230)"))
    for label, stmt in grid_calls if args.variant == "grid" else ():
        us = min(timeit.repeat(stmt, globals=globals(), number=20000, repeat=5)) / 20000 * 1e6
        print(f"{label:24s} {us:6.2f} us a call")
    for name in args.models:
        for bench in args.benches:
            ab_model(args.variant, name, bench, args.batch_size, args.blocks, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
