"""Everything issue 3 measures, in one process on one GPU, so every ratio compares numbers taken side by side.

Run from the repository root on the device machine::

    PYTHONPATH=src python3 benchmarks/gpu_suite.py --out $OUT --phases eager compile checks

Phases (each appends rows to ``<out>/results.json`` as it goes, so a run cut short keeps what it measured):

- ``eager``: SReT-T with explicit attention (``attn_impl="math"``, the baseline) and with SDPA, SReT-T/S with and
  without slicing, DeiT-Tiny/Small and PiT-Ti; inference and training; batch 256, 224 px, bf16 autocast.
- ``compile``: the same models (not the math baseline) under ``torch.compile`` (``fullgraph=True`` for SReT, so a
  graph break fails loudly instead of slowing silently).
- ``cudagraph``: SReT-T/S in eval compiled with ``mode="reduce-overhead"`` (CUDA-graph capture): output checked
  against eager, CUDA-graph skips counted, and timed.
- ``native_ln``: SReT-T eager with PyTorch's LayerNorm instead of the Triton one (``SRET_FAST_LN=0``), for the A/B.
- ``channels_last``: SReT-T eager with model and input in channels-last memory format.
- ``checks``: ``torch._dynamo.explain`` on every distinct SReT architecture in train and eval mode (graph breaks).
- ``profile``: top kernels of one SReT-T eager inference and training step (torch.profiler), for the perf notes.

``--deadline`` seconds after the start, the remaining configurations are skipped (and listed as skipped) so the
command ends inside the device tool's limit with its results written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import sret  # noqa: E402
from sret.benchmark import BenchConfig, BenchResult, benchmark, environment, format_table, result_row  # noqa: E402

SRET_MODELS = ["sret_t", "sret_t_wo_slice", "sret_s", "sret_s_wo_slice"]
TIMM_MODELS = ["deit_tiny_patch16_224", "deit_small_patch16_224", "pit_ti_224"]
# One model per distinct architecture (the distill variants share their base model's graph).
ARCHITECTURES = [
    "sret_t", "sret_t_wo_slice", "sret_lt", "sret_lt_wo_slice", "sret_lt_16_14_1", "sret_s", "sret_s_wo_slice",
    "sret_t_wo_slice_distill_finetune_384", "sret_s_wo_slice_distill_finetune_384",
    "sret_s_wo_slice_distill_finetune_512",
]
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only for a dry run of this script


class Suite:
    """Collects rows and extra findings and rewrites the results file after each one."""

    def __init__(self, out: Path, deadline: float, batch: int, warmup: int, iters: int, repeats: int) -> None:
        self.out = out
        self.start = time.perf_counter()
        self.deadline = deadline
        self.batch, self.warmup, self.iters, self.repeats = batch, warmup, iters, repeats
        self.results: list[BenchResult] = []
        self.extra: dict[str, Any] = {"skipped": [], "errors": [], "graph_breaks": {}, "cudagraph": {}, "timings": {}}
        self.env = environment(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        self.macs: dict[tuple, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def time_left(self) -> bool:
        return self.elapsed() < self.deadline

    def save(self) -> None:
        data = {"environment": self.env, "results": [result_row(r) for r in self.results], **self.extra}
        tmp = self.out / ".results.json.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.out / "results.json")

    def guarded(self, label: str, fn: Callable[[], Any]) -> Any:
        """Run one piece of work unless out of time; record an exception instead of losing the whole run."""
        if not self.time_left():
            self.extra["skipped"].append(label)
            print(f"[{self.elapsed():6.0f}s] skip {label} (deadline)", flush=True)
            return None
        t0 = time.perf_counter()
        try:
            value = fn()
        except Exception as err:  # noqa: BLE001 - one failure must not lose the other measurements
            self.extra["errors"].append({"label": label, "error": f"{type(err).__name__}: {err}"[:2000]})
            print(f"[{self.elapsed():6.0f}s] FAIL {label}: {type(err).__name__}: {str(err)[:500]}", flush=True)
            traceback.print_exc(limit=3)
            value = None
        self.extra["timings"][label] = round(time.perf_counter() - t0, 2)
        self.save()
        return value

    def bench(self, model: str, bench: str, attn_impl: str | None = None, compile: bool = False,
              compile_mode: str | None = None, channels_last: bool = False, tag: str = "") -> None:
        cfg = BenchConfig(
            model=model, bench=bench, batch_size=self.batch, attn_impl=attn_impl, compile=compile,
            compile_mode=compile_mode, fullgraph=compile and model.startswith("sret"), warmup=self.warmup,
            iters=self.iters, repeats=self.repeats, device=DEV, channels_last=channels_last,
        )
        label = f"{model}/{bench}/{attn_impl or 'default'}/{'compile' if compile else 'eager'}" + (
            f":{compile_mode}" if compile_mode else "") + ("/channels_last" if channels_last else "") + (
            f"/{tag}" if tag else "")

        def go() -> None:
            result = benchmark(cfg, self.macs)
            if tag:
                result.mode = f"{result.mode}+{tag}"
            self.results.append(result)
            print(f"[{self.elapsed():6.0f}s] {label}: {result.samples_per_s or 0:,.0f} img/s, "
                  f"{result.step_ms or 0:.2f} ms, peak {result.peak_mem_gib or 0:.2f} GiB, "
                  f"first step {result.first_step_s or 0:.1f} s {result.error or ''}", flush=True)
            torch._dynamo.reset()

        self.guarded(label, go)


def phase_eager(s: Suite) -> None:
    for bench in ("infer", "train"):
        s.bench("sret_t", bench, attn_impl="math")
        for model in SRET_MODELS:
            s.bench(model, bench, attn_impl="sdpa")
        for model in TIMM_MODELS:
            s.bench(model, bench)


def phase_compile(s: Suite, models: list[str], benches: list[str]) -> None:
    for bench in benches:
        for model in models:
            s.bench(model, bench, attn_impl="sdpa" if model.startswith("sret") else None, compile=True)


def phase_cudagraph(s: Suite) -> None:
    """Eval-mode CUDA-graph capture through ``mode="reduce-overhead"``: works, matches eager, and its speed."""
    from torch._dynamo.utils import counters

    for name in s.cudagraph_models:
        def check(name: str = name) -> None:
            counters.clear()
            model = sret.create_model(name).to(DEV).eval()
            x = torch.randn(s.batch, 3, 224, 224, device=DEV)
            compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
            with torch.no_grad(), torch.autocast(DEV, dtype=torch.bfloat16):
                ref = model(x).float()
                for _ in range(3):
                    out = compiled(x).float().clone()
            rel = ((out - ref).norm() / ref.norm()).item()
            skips = dict(counters["inductor"])
            # Replays of the captured graph, timed like the benchmark (events around 20 calls, median of 3).
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            windows = []
            with torch.no_grad(), torch.autocast(DEV, dtype=torch.bfloat16):
                for _ in range(3):
                    start.record()
                    for _ in range(20):
                        compiled(x)
                    end.record()
                    end.synchronize()
                    windows.append(start.elapsed_time(end) / 20)
            ms = sorted(windows)[1]
            info = {"rel_err_vs_eager": rel, "inductor_counters": {k: v for k, v in skips.items() if "cudagraph" in k},
                    "step_ms": ms, "samples_per_s": s.batch * 1e3 / ms}
            s.extra["cudagraph"][name] = info
            print(f"[{s.elapsed():6.0f}s] cudagraph {name}: rel err {rel:.2e}, {info['inductor_counters']}", flush=True)
            del model, compiled
            torch._dynamo.reset()

        s.guarded(f"cudagraph-check/{name}", check)


def phase_channels_last(s: Suite) -> None:
    """SReT-T with the whole model and input in channels-last (the conv stem's BatchNorm then runs NHWC kernels)."""
    for bench in ("infer", "train"):
        s.bench("sret_t", bench, attn_impl="sdpa", channels_last=True)


def phase_native_ln(s: Suite) -> None:
    """A/B of the Triton LayerNorm: SReT-T eager with ``SRET_FAST_LN=0`` (PyTorch's LayerNorm kernels)."""
    os.environ["SRET_FAST_LN"] = "0"
    try:
        for bench in ("infer", "train"):
            s.bench("sret_t", bench, attn_impl="sdpa", tag="native_ln")
    finally:
        os.environ.pop("SRET_FAST_LN", None)


def phase_checks(s: Suite) -> None:
    """Graph breaks of every distinct architecture, train mode (random permutation) and eval (fixed buffers)."""
    for name in ARCHITECTURES:
        def explain(name: str = name) -> None:
            model = sret.create_model(name).to(DEV)
            size = model.img_size[0]
            x = torch.randn(2, 3, size, size, device=DEV)
            found = {}
            for mode in ("train", "eval"):
                model.train(mode == "train")
                torch._dynamo.reset()
                report = torch._dynamo.explain(model)(x)
                found[mode] = {"graphs": report.graph_count, "graph_breaks": report.graph_break_count,
                               "reasons": [str(r.reason)[:300] for r in report.break_reasons]}
            s.extra["graph_breaks"][name] = found
            print(f"[{s.elapsed():6.0f}s] explain {name}: " + ", ".join(
                f"{m} {v['graphs']} graph(s) {v['graph_breaks']} break(s)" for m, v in found.items()), flush=True)

        s.guarded(f"explain/{name}", explain)


def phase_profile(s: Suite) -> None:
    from profile_step import profile_model  # benchmarks/profile_step.py, beside this file

    for bench in ("infer", "train"):
        s.guarded(f"profile/{bench}", lambda bench=bench: profile_model("sret_t", bench, s.batch, s.out, "suite"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench_out")))
    parser.add_argument("--phases", nargs="+", default=["eager", "compile", "cudagraph", "checks"],
                        choices=("eager", "native_ln", "channels_last", "compile", "cudagraph", "checks", "profile"))
    parser.add_argument("--cudagraph-models", nargs="+", default=["sret_t", "sret_s"])
    parser.add_argument("--compile-benches", nargs="+", default=["infer", "train"])
    parser.add_argument("--compile-models", nargs="+", default=SRET_MODELS + TIMM_MODELS)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=520.0, help="seconds; later work is skipped")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    s = Suite(args.out, args.deadline, args.batch_size, args.warmup, args.iters, args.repeats)
    s.cudagraph_models = args.cudagraph_models
    s.env["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    print(f"{s.env}", flush=True)
    for phase in args.phases:
        if phase == "eager":
            phase_eager(s)
        elif phase == "compile":
            phase_compile(s, args.compile_models, args.compile_benches)
        elif phase == "native_ln":
            phase_native_ln(s)
        elif phase == "channels_last":
            phase_channels_last(s)
        elif phase == "cudagraph":
            phase_cudagraph(s)
        elif phase == "checks":
            phase_checks(s)
        elif phase == "profile":
            phase_profile(s)
    s.save()
    print(format_table(s.results))
    print(json.dumps({k: s.extra[k] for k in ("skipped", "errors", "cudagraph")}, indent=1)[:3000])
    print(f"total {s.elapsed():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
