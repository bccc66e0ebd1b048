"""``sret benchmark``: inference and training throughput, step time, peak memory, params and GMACs.

Models come from sret or timm by name, several per call, so SReT and its timm peers are measured side by side in
one process on one device: absolute numbers drift between machines, ratios measured together hold.

How a number is made (and why):

- Inputs are random normal images (never zeros: zeros can run faster than real data) and random labels, made once
  on the device, so no host-to-device copy or data loading is timed.
- ``--warmup`` steps run first and are not timed: they absorb cuDNN autotuning, lazy CUDA init and, with
  ``--compile``, the whole compilation (its wall time is reported as ``first_step_s``).
- Each of ``--repeats`` timed windows runs ``--iters`` steps between two CUDA events (a host clock after a
  synchronize on the CPU); the reported step time is the median window over its steps, so one slow window (a
  clock ramp, a stray process) does not move the result.
- A training step is forward + cross-entropy + backward + optimizer step (timm's ``create_optimizer_v2``, AdamW by
  default) + ``zero_grad``: what a training loop pays per batch. Inference runs under ``torch.no_grad`` in eval.
- Peak memory is ``torch.cuda.max_memory_allocated`` over warm-up and timed steps, after a reset: weights, optimizer
  state, activations and workspaces together, which is what decides the batch that fits.
- ``--cuda-graph`` captures the whole eager step as one CUDA graph and times its replays: the same kernels with the
  host's per-op dispatch cost removed, so the number is the GPU's time for the step. For training the graph holds
  forward, backward and a capturable AdamW step (gradients allocated in the graph's pool, no ``zero_grad``); on an
  H100 its losses and weights matched eager training to bf16 rounding (``benchmarks/check_train_graph.py``). The eager
  rows measure what a plain PyTorch loop gets on that host; a step of many small ops (SReT's 60 narrow sublayers)
  is bound by the host there, and host speed varies between machines.
- GMACs are counted once per model on a CPU copy (``sret.count_macs``, fvcore convention, batch 1, eval), before
  the model moves to the device, so the count neither pollutes the memory peak nor needs the accelerator.

Also ``python -m sret.benchmark``. Examples::

    sret benchmark --models sret_t sret_t_wo_slice deit_tiny_patch16_224 --bench both --batch-size 256
    sret benchmark --models sret_t --attn-impl math sdpa --compile --results-file results.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sret.errors import SReTError

AMP_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GPU_DEFAULTS = dict(batch_size=256, warmup=10, iters=30, repeats=3)
CPU_DEFAULTS = dict(batch_size=4, warmup=1, iters=2, repeats=1)


@dataclass
class BenchConfig:
    """One measurement: a model, a kind of step, and everything that changes its speed.

    ``attn_impl`` is applied only to SReT models (timm models have no such argument); ``None`` keeps the model's
    default (``"sdpa"`` for SReT).
    """

    model: str
    bench: str = "infer"  # "infer" or "train"
    batch_size: int = 256
    img_size: Optional[int] = None
    amp_dtype: str = "bfloat16"
    compile: bool = False
    compile_mode: Optional[str] = None
    fullgraph: bool = False
    channels_last: bool = False
    grad_checkpointing: bool = False
    keep_activations: Optional[bool] = None  # None: the model's default (sret models only)
    cuda_graph: bool = False
    attn_impl: Optional[str] = None
    warmup: int = 10
    iters: int = 30
    repeats: int = 3
    device: str = "cuda"
    num_classes: int = 1000
    opt: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05


@dataclass
class BenchResult:
    """What one measurement produced; one row of the table and of the results file."""

    model: str
    bench: str
    attn_impl: str
    mode: str  # "eager" or "compile" / "compile:<mode>"
    batch_size: int
    img_size: int
    amp_dtype: str
    channels_last: bool
    grad_checkpointing: bool
    params: int
    gmacs: Optional[float]
    samples_per_s: Optional[float] = None
    step_ms: Optional[float] = None
    step_ms_repeats: list[float] = field(default_factory=list)
    peak_mem_gib: Optional[float] = None
    first_step_s: Optional[float] = None
    device: str = ""
    error: Optional[str] = None
    keep_activations: Optional[bool] = None  # sret models: LayerNorm outputs and q/k/v kept for the backward

    @property
    def tmacs_per_s(self) -> Optional[float]:
        """Useful work rate, img/s x GMACs / 1000: compares models of different size per MAC."""
        if self.samples_per_s is None or self.gmacs is None:
            return None
        return self.samples_per_s * self.gmacs / 1000.0


# ------------------------------------------------------------------------------------------------------- helpers
def is_sret_model(name: str) -> bool:
    """Whether ``name`` is one of our variants (they take ``attn_impl``; timm's models do not)."""
    from sret.models.variants import VARIANTS

    return name in VARIANTS


def check_models(names: Sequence[str]) -> None:
    """Fail before any measurement when a name is unknown, rather than after minutes of other models."""
    import timm

    import sret  # noqa: F401  (registers the variants with timm)

    unknown = [n for n in names if not timm.is_model(n)]
    if unknown:
        hints = []
        for name in unknown:
            close = timm.list_models(f"*{name}*")[:6]
            hints.append(f"{name!r}" + (f" (similar: {', '.join(close)})" if close else ""))
        raise SReTError(f"unknown model {', '.join(hints)}; sret models: {', '.join(sret.list_models())}")


def build_model(cfg: BenchConfig) -> nn.Module:
    """Create the model on the CPU with the config's overrides."""
    import sret

    kwargs: dict[str, Any] = {"num_classes": cfg.num_classes}
    if cfg.img_size is not None:
        kwargs["img_size"] = cfg.img_size
    if cfg.attn_impl is not None and is_sret_model(cfg.model):
        kwargs["attn_impl"] = cfg.attn_impl
    try:
        return sret.create_model(cfg.model, **kwargs)
    except TypeError as err:  # a timm model that does not take img_size, say
        raise SReTError(f"cannot build {cfg.model!r} with {kwargs}: {err}") from err


def model_img_size(model: nn.Module, requested: Optional[int]) -> int:
    """The input size to feed: the requested one, else the model's own (pretrained cfg), else 224."""
    if requested is not None:
        return requested
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return int(size[-1]) if size else 224


def _amp_context(device: torch.device, dtype_name: str, cache: bool = True):
    dtype = AMP_DTYPES[dtype_name]
    if dtype == torch.float32:
        return nullcontext()
    # Autocast's weight-cast cache must be off inside a CUDA graph capture (PyTorch's CUDA-graph notes).
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def _graphed(step: Callable[[], None], device: torch.device, warmup: int = 3) -> Callable[[], None]:
    """Capture ``step`` as one CUDA graph (after warm-up on a side stream, as capture requires); return its replay."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    getattr(step, "before_capture", lambda: None)()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        getattr(step, "capture", step)()

    def replay() -> None:
        graph.replay()

    # The graph writes into every tensor the step touched (optimizer state included), but holds no reference to
    # them: keep the step's closure alive as long as the replay, or its tensors are freed and reused under it.
    replay.step = step  # type: ignore[attr-defined]
    return replay


class _Timer:
    """Times a window of steps: CUDA events on a GPU (device time, no host sync inside), a host clock elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], None], steps: int) -> float:
        """Milliseconds per step, averaged over ``steps`` back-to-back steps."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / steps
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - t0) * 1e3 / steps


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------------- core
def benchmark(cfg: BenchConfig, macs_cache: Optional[dict[tuple, float]] = None) -> BenchResult:
    """Build, (compile,) warm up and time one model for one kind of step.

    Args:
        cfg: What to measure.
        macs_cache: GMACs by (model, img_size, attn_impl), shared across calls so each model is counted once.

    Returns:
        The measurement; on a CUDA out-of-memory error, a result whose ``error`` says so (the next model still runs).
    """
    from sret.models.macs import count_params

    if cfg.bench not in ("infer", "train"):
        raise SReTError(f"bench must be 'infer' or 'train', got {cfg.bench!r}")
    if cfg.amp_dtype not in AMP_DTYPES:
        raise SReTError(f"amp dtype must be one of {', '.join(AMP_DTYPES)}, got {cfg.amp_dtype!r}")
    device = torch.device(cfg.device)
    model = build_model(cfg)
    img_size = model_img_size(model, cfg.img_size)
    attn_impl = cfg.attn_impl or "sdpa" if is_sret_model(cfg.model) else "-"
    key = (cfg.model, img_size, attn_impl)
    if macs_cache is not None and key in macs_cache:
        gmacs = macs_cache[key]
    else:
        gmacs = _count_gmacs(model, img_size)
        if macs_cache is not None:
            macs_cache[key] = gmacs
    mode = "eager" if not cfg.compile else ("compile" if not cfg.compile_mode else f"compile:{cfg.compile_mode}")
    if cfg.cuda_graph:
        mode += "+cudagraph"
    result = BenchResult(
        model=cfg.model, bench=cfg.bench, attn_impl=attn_impl, mode=mode, batch_size=cfg.batch_size,
        img_size=img_size, amp_dtype=cfg.amp_dtype, channels_last=cfg.channels_last,
        grad_checkpointing=cfg.grad_checkpointing, params=count_params(model), gmacs=gmacs,
        device=device_name(device),
    )

    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    if cfg.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise SReTError(f"{cfg.model} does not support gradient checkpointing")
        model.set_grad_checkpointing(True)
    if cfg.keep_activations is not None:
        if not hasattr(model, "set_keep_activations"):
            raise SReTError(f"--keep-activations / --no-keep-activations: {cfg.model} is not an sret model")
        model.set_keep_activations(cfg.keep_activations)
    result.keep_activations = getattr(model, "keep_activations", None)
    model.train(cfg.bench == "train")
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(cfg.batch_size, 3, img_size, img_size, device=device, generator=gen)
    x = x.contiguous(memory_format=memory_format)
    target = torch.randint(0, cfg.num_classes, (cfg.batch_size,), device=device, generator=gen)

    run_model: Callable[[torch.Tensor], torch.Tensor] = model
    if cfg.compile:
        run_model = torch.compile(model, mode=cfg.compile_mode, fullgraph=cfg.fullgraph)

    if cfg.bench == "infer":
        step = _infer_step(run_model, x, device, cfg.amp_dtype, cache=not cfg.cuda_graph)
    else:
        step = _train_step(model, run_model, x, target, device, cfg)
    if device.type == "cuda":
        # Before capture: a graph's memory comes from its private pool, allocated while capturing, so a peak reset
        # after capture would leave the activations out of the figure.
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if cfg.cuda_graph:
        try:
            step = _graphed(step, device)
        except torch.OutOfMemoryError:
            result.error = "out of memory"
            return _release(result, device)
        except RuntimeError as err:  # an op that cannot be captured: say which, keep the other rows
            result.error = f"CUDA graph capture failed: {str(err).splitlines()[0][:200]}"
            return _release(result, device)

    timer = _Timer(device)
    try:
        t0 = time.perf_counter()
        step()
        _synchronize(device)
        result.first_step_s = time.perf_counter() - t0
        for _ in range(max(cfg.warmup - 1, 0)):
            step()
        _synchronize(device)
        windows = [timer(step, cfg.iters) for _ in range(cfg.repeats)]
    except torch.OutOfMemoryError:
        result.error = "out of memory"
        return _release(result, device)
    result.step_ms_repeats = [round(w, 4) for w in windows]
    result.step_ms = statistics.median(windows)
    result.samples_per_s = cfg.batch_size * 1e3 / result.step_ms
    if device.type == "cuda":
        result.peak_mem_gib = torch.cuda.max_memory_allocated(device) / 2**30
    return _release(result, device)


def _count_gmacs(model: nn.Module, img_size: int) -> float:
    """GMACs per image on the CPU (before the model moves), with every parameter frozen for the count.

    Freezing matters for models like PiT whose forward passes parameter views between modules inside a tuple: the
    flop counter's module tracker hooks every grad-requiring input and fails on such views even under no_grad.
    """
    from sret.models.macs import count_macs

    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        return count_macs(model, img_size=img_size, in_chans=3) / 1e9  # batch 1, eval
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _release(result: BenchResult, device: torch.device) -> BenchResult:
    """Free the previous model's memory so the next measurement starts from an empty device."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _infer_step(model: Callable, x: torch.Tensor, device: torch.device, amp_dtype: str,
                cache: bool = True) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad(), _amp_context(device, amp_dtype, cache):
            model(x)

    return step


def _train_step(
    model: nn.Module, run_model: Callable, x: torch.Tensor, target: torch.Tensor, device: torch.device,
    cfg: BenchConfig,
) -> Callable[[], None]:
    from timm.optim import create_optimizer_v2

    # A captured step needs the optimizer's step count on the device (capturable=True); same update otherwise.
    extra = dict(capturable=True) if cfg.cuda_graph else {}
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)
    # float16 needs loss scaling to train; bfloat16 and float32 do not (scaler disabled is a no-op).
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp_dtype == "float16")

    def body() -> None:
        with _amp_context(device, cfg.amp_dtype, cache=not cfg.cuda_graph):
            loss = F.cross_entropy(run_model(x), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def step() -> None:
        body()
        optimizer.zero_grad(set_to_none=True)

    if cfg.cuda_graph:
        # PyTorch's whole-network capture: gradients are None when capture starts, so the captured backward
        # allocates them from the graph's pool and every replay overwrites the same memory (no zero_grad inside).
        step.capture = body  # type: ignore[attr-defined]
        step.before_capture = lambda: optimizer.zero_grad(set_to_none=True)  # type: ignore[attr-defined]
    return step


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and device, stored beside the results so a number can be traced to what produced it."""
    import timm

    import sret

    env = dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=device_name(device),
        torch=torch.__version__, timm=timm.__version__, sret=sret.__version__, python=platform.python_version(),
        command=" ".join(sys.argv),
    )
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


# ------------------------------------------------------------------------------------------------------- output
RESULT_COLUMNS = (
    "model", "bench", "attn_impl", "mode", "batch_size", "img_size", "amp_dtype", "channels_last",
    "grad_checkpointing", "keep_activations", "params", "gmacs", "samples_per_s", "step_ms", "peak_mem_gib",
    "tmacs_per_s", "first_step_s", "device", "error", "step_ms_repeats",
)


def result_row(result: BenchResult) -> dict[str, Any]:
    row = asdict(result)
    row["tmacs_per_s"] = result.tmacs_per_s
    return {k: row[k] for k in RESULT_COLUMNS}


def format_table(results: Sequence[BenchResult]) -> str:
    """Fixed-width table; ``TMAC/s`` = img/s x GMACs / 1000, the per-MAC comparison."""

    def num(value: Optional[float], fmt: str) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    header = (
        f"{'model':<28} {'bench':<5} {'attn':<5} {'mode':<16} {'batch':>5} {'px':>4} {'img/s':>10} {'ms/step':>9} "
        f"{'peak GiB':>8} {'params M':>8} {'GMACs':>6} {'TMAC/s':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        if r.error:
            tail = f"{'error: ' + r.error:>28}"
            lines.append(f"{r.model:<28} {r.bench:<5} {r.attn_impl:<5} {r.mode:<16} {r.batch_size:>5} {r.img_size:>4} "
                         f"{tail}")
            continue
        lines.append(
            f"{r.model:<28} {r.bench:<5} {r.attn_impl:<5} {r.mode:<16} {r.batch_size:>5} {r.img_size:>4} "
            f"{num(r.samples_per_s, ',.0f'):>10} {num(r.step_ms, '.2f'):>9} {num(r.peak_mem_gib, '.2f'):>8} "
            f"{r.params / 1e6:>8.2f} {num(r.gmacs, '.3f'):>6} {num(r.tmacs_per_s, '.2f'):>7}"
        )
    return "\n".join(lines)


def write_results(path: Path, results: Sequence[BenchResult], env: dict[str, Any]) -> None:
    """Write JSON (``{"environment": ..., "results": [...]}``) or CSV by the file's extension, atomically.

    The file is written beside its destination and renamed over it, so a reader (or a run killed half-way) never
    sees a half-written file.
    """
    suffix = path.suffix.lower()
    rows = [result_row(r) for r in results]
    if suffix == ".json":
        text = json.dumps({"environment": env, "results": rows}, indent=2) + "\n"
    elif suffix == ".csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(RESULT_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            row = dict(row, step_ms_repeats=" ".join(map(str, row["step_ms_repeats"])))
            writer.writerow(row)
        text = buf.getvalue()
    else:
        raise SReTError(f"results file must end in .json or .csv, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=["sret_t"], metavar="NAME",
                        help="sret or timm model names, e.g. sret_t sret_t_wo_slice deit_tiny_patch16_224")
    parser.add_argument("--bench", choices=("infer", "train", "both"), default="both")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"images per step (default {GPU_DEFAULTS['batch_size']} on a GPU, "
                             f"{CPU_DEFAULTS['batch_size']} on the CPU)")
    parser.add_argument("--img-size", type=int, default=None, help="input size (default: each model's own)")
    parser.add_argument("--amp-dtype", choices=tuple(AMP_DTYPES), default="bfloat16",
                        help="autocast dtype; float32 turns autocast off")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default=None, help="torch.compile mode")
    parser.add_argument("--fullgraph", action="store_true", help="compile with fullgraph=True (fail on graph breaks)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format (conv stem)")
    parser.add_argument("--grad-checkpointing", action="store_true", help="activation checkpointing in training")
    parser.add_argument("--keep-activations", action=argparse.BooleanOptionalAction, default=None,
                        help="sret models in training: keep LayerNorm outputs and q/k/v for the backward (faster, "
                             "more memory) or recompute them (default: the model's own setting)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="capture the whole step as one CUDA graph and time its replays (CUDA only)")
    parser.add_argument("--attn-impl", nargs="+", choices=("sdpa", "math"), default=None,
                        help="attention kernel(s) of sret models; several give one row each")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 GPU, 1 CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps per repeat (default 30 GPU, 2 CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed windows; the median counts (default 3/1)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if there is one)")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--opt", default="adamw", help="optimizer of the training step (timm name)")
    parser.add_argument("--results-file", type=Path, default=None, help="write results to .json or .csv")


def configs_from_args(args: argparse.Namespace) -> list[BenchConfig]:
    """Expand the CLI into one config per (model, attention kernel, bench), after validating everything."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SReTError(f"device {args.device!r} asked for, but PyTorch sees no CUDA device")
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    batch = defaults["batch_size"] if args.batch_size is None else args.batch_size
    warmup = defaults["warmup"] if args.warmup is None else args.warmup
    iters = defaults["iters"] if args.iters is None else args.iters
    repeats = defaults["repeats"] if args.repeats is None else args.repeats
    for name, value, low in (("--batch-size", batch, 1), ("--iters", iters, 1), ("--repeats", repeats, 1),
                             ("--warmup", warmup, 0)):
        if value < low:
            raise SReTError(f"{name} must be >= {low}, got {value}")
    if args.img_size is not None and args.img_size < 8:
        raise SReTError(f"--img-size must be >= 8, got {args.img_size}")
    if args.compile_mode and not args.compile:
        raise SReTError("--compile-mode needs --compile")
    if args.cuda_graph and device.type != "cuda":
        raise SReTError("--cuda-graph needs a CUDA device")
    check_models(args.models)
    benches = ("infer", "train") if args.bench == "both" else (args.bench,)
    configs = []
    for name in args.models:
        impls = list(dict.fromkeys(args.attn_impl)) if args.attn_impl and is_sret_model(name) else [None]
        for impl in impls:
            for bench in benches:
                configs.append(BenchConfig(
                    model=name, bench=bench, batch_size=batch, img_size=args.img_size, amp_dtype=args.amp_dtype,
                    compile=args.compile, compile_mode=args.compile_mode, fullgraph=args.fullgraph,
                    channels_last=args.channels_last, grad_checkpointing=args.grad_checkpointing, attn_impl=impl,
                    keep_activations=args.keep_activations if is_sret_model(name) else None,
                    cuda_graph=args.cuda_graph,
                    warmup=warmup, iters=iters, repeats=repeats, device=str(device), num_classes=args.num_classes,
                    opt=args.opt,
                ))
    return configs


def run(args: argparse.Namespace) -> int:
    configs = configs_from_args(args)
    device = torch.device(configs[0].device)
    if args.results_file is not None and args.results_file.suffix.lower() not in (".json", ".csv"):
        raise SReTError(f"--results-file must end in .json or .csv, got {str(args.results_file)!r}")
    if device.type == "cpu":
        print(f"sret benchmark: running on the CPU {device_name(device)[4:]}: no CUDA device, so a small batch "
              f"({configs[0].batch_size}) and few steps; these numbers say nothing about GPU throughput.", flush=True)
    else:
        torch.backends.cudnn.benchmark = True  # the conv stem: pick the fastest algorithm once
    env = environment(device)
    results: list[BenchResult] = []
    macs_cache: dict[tuple, float] = {}
    for cfg in configs:
        result = benchmark(cfg, macs_cache)
        results.append(result)
        status = f"{result.samples_per_s:,.0f} img/s" if result.samples_per_s else f"error: {result.error}"
        print(f"  {cfg.model} {cfg.bench} {result.attn_impl} {result.mode}: {status}", file=sys.stderr, flush=True)
        if args.results_file is not None:  # after every model: a killed run keeps what it measured
            write_results(args.results_file, results, env)
    print(f"device: {env['device']}; torch {env['torch']}, timm {env['timm']}; amp {configs[0].amp_dtype}")
    print(format_table(results))
    if args.results_file is not None:
        print(f"results written to {args.results_file}")
    return 1 if any(r.error for r in results) else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m sret.benchmark``: the same command as ``sret benchmark``, with the CLI's error handling."""
    from sret.cli import main as cli_main

    return cli_main(["benchmark", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
