"""Compiled inference and training on the GPU: ``torch.compile`` with the fused sublayers as ops, against float64
(inference) or the eager fused step (training) and the plain modules, then the step times with the ops on and off.

For each model (parameters moved away from their init first, as ``check_inference.py`` does, so that a dropped
coefficient or a wrong fold shows): ``torch.compile(model, fullgraph=True)`` in eval, bf16 autocast, with the ops
(``SRET_COMPILED_OPS=1``) and without (``=0``: the plain modules on Inductor's kernels, the compiled path before the
ops). Each one's relative logit error against float64 on the CPU (16 images); the ops' error must be finite and
within 1.5x the plain one (exit 1 otherwise). The profiler then confirms that the compiled step with the ops
launches the fused kernels (``_mlp_residual_fwd_pw`` and friends) and the step time is measured both ways (CUDA
events, median of 5 windows of 20 steps, after the compilation and 5 warm-up steps).

    PYTHONPATH=src python3 benchmarks/check_compiled.py [--models sret_t sret_s] [--batch-size 256]
    TORCHINDUCTOR_LOOP_ORDERING_AFTER_FUSION=0 PYTHONPATH=src python3 benchmarks/check_compiled.py --models sret_t \
        --train-only
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

import sret
from check_inference import _rel, _trained_looking  # this script's folder is on sys.path when run as a file

FUSED_KERNELS = ("_mlp_residual_fwd_pw", "_fc1_gelu_fwd", "_group_attention_fwd", "_residual_fwd", "_ln_fwd")


def _compiled(model, ops: str, dynamic: bool = False):
    os.environ["SRET_COMPILED_OPS"] = ops  # read while tracing: a fresh compilation per setting
    torch._dynamo.reset()
    return torch.compile(model, fullgraph=True, dynamic=dynamic)


def _step(compiled, x):
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        return compiled(x)


def _time_ms(compiled, x, windows: int = 5, steps: int = 20) -> float:
    for _ in range(5):
        _step(compiled, x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(windows):
        start.record()
        for _ in range(steps):
            _step(compiled, x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / steps)
    return statistics.median(times)


def check(name: str, batch: int) -> bool:
    torch.manual_seed(0)
    model = sret.create_model(name).eval()
    _trained_looking(model)
    x = torch.randn(batch, 3, 224, 224)
    few = x[:16]  # the float64 reference runs on the CPU: checked on 16 images, timed on the whole batch
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(few.double())
    model, x, few = model.cuda(), x.cuda(), few.cuda()
    errors, kernels, times = {}, {}, {}
    for ops in ("1", "0"):
        t0 = time.perf_counter()
        compiled = _compiled(model, ops)
        errors[ops] = _rel(_step(compiled, few).float(), ref)
        compile_s = time.perf_counter() - t0
        _step(compiled, x)  # the batch's own compilation (a new batch size) before the profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            _step(compiled, x)
            torch.cuda.synchronize()
        names = {e.key for e in prof.key_averages()}
        kernels[ops] = sorted(k for k in FUSED_KERNELS if any(n.startswith(k) for n in names))
        times[ops] = _time_ms(compiled, x)
        print(f"{name} SRET_COMPILED_OPS={ops}: rel err vs float64 {errors[ops]:.2e}, compile {compile_s:.0f} s, "
              f"fused kernels seen {kernels[ops]}, {times[ops]:.2f} ms/step at batch {batch} "
              f"({batch / times[ops] * 1e3:,.0f} img/s)", flush=True)
    ok = (errors["1"] == errors["1"] and errors["1"] <= 1.5 * errors["0"] and "_ln_fwd" in kernels["1"]
          and "_residual_fwd" in kernels["1"] and not kernels["0"])
    print(f"{name}: {'OK' if ok else 'FAILED'} (ops / plain: error {errors['1'] / errors['0']:.2f}x, "
          f"time {times['1'] / times['0']:.3f}x)", flush=True)
    return ok


def _train_step(step_model, x, y, opt=None):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(step_model(x), y)
    loss.backward()
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss


def check_train(name: str, batch: int) -> bool:
    """A compiled training step with the training ops (``SRET_COMPILED_OPS=1``) and without (``=0``), each against
    the eager fused step: loss and gradients (median relative error over the parameters), with the same (fixed)
    permutations and no drop path. The ops' gradient error must be within 1.5x the plain modules'. Then both compiled
    steps (forward, backward, AdamW) timed at ``batch`` with their peak memory. With torch 2.11 this needs
    ``TORCHINDUCTOR_LOOP_ORDERING_AFTER_FUSION=0`` (Inductor's loop reordering asserts on the backward graph)."""
    os.environ["SRET_COMPILED_TRAIN"] = "1"  # training through the ops is opt-in
    torch.manual_seed(0)
    model = sret.create_model(name, drop_path_rate=0.0).cuda().train()
    # Compiled random draws differ from eager ones: the training permutations are pinned to the model's fixed
    # (eval) ones, so that both steps shuffle alike
    for stage in model.transformers:
        stage._permutation = lambda step, n, device, stage=stage: getattr(stage, f"perm{step}")
    x = torch.randn(32, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (32,), device="cuda")

    def grads(step_model):
        torch.manual_seed(1)
        model.zero_grad(set_to_none=True)
        loss = _train_step(step_model, x, y)
        return loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}

    want_loss, want = grads(model)
    errs, ok = {}, True
    for ops in ("1", "0"):
        compiled = _compiled(model, ops)
        grads(compiled)  # compiles
        loss, got = grads(compiled)
        per = sorted(_rel(got[n], want[n]) for n in want if want[n].norm() > 0)
        errs[ops] = per[len(per) // 2]
        ok &= got.keys() == want.keys() and abs(loss - want_loss) < 1e-2 * abs(want_loss)
        print(f"{name} train SRET_COMPILED_OPS={ops}: loss {loss:.5f} (eager fused {want_loss:.5f}), median grad rel "
              f"err vs eager fused {errs[ops]:.2e}, worst {per[-1]:.2e}", flush=True)
    ok &= errs["1"] <= 1.5 * errs["0"]
    xb = torch.randn(batch, 3, 224, 224, device="cuda")
    yb = torch.randint(0, 1000, (batch,), device="cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    for ops in ("1", "0"):
        compiled = _compiled(model, ops)
        for _ in range(3):
            _train_step(compiled, xb, yb, opt)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(3):
            start.record()
            for _ in range(10):
                _train_step(compiled, xb, yb, opt)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 10)
        ms = statistics.median(times)
        print(f"{name} train SRET_COMPILED_OPS={ops}: {ms:.2f} ms/step at batch {batch} ({batch / ms * 1e3:,.0f} "
              f"img/s), peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
    print(f"{name} train: {'OK' if ok else 'FAILED'}", flush=True)
    return ok


def check_dynamic(name: str) -> bool:
    """Symbolic shapes: every dimension (``dynamic=True``: the token count gets pinned where the ops read their tile
    tables), then the batch alone (what a second batch size makes of it). Two batch sizes each, the eager fused
    logits as the reference, the fused kernels seen in both."""
    torch.manual_seed(0)
    model = sret.create_model(name).eval().cuda()
    ok = True
    for how in ("all", "batch"):
        compiled = _compiled(model, "1", dynamic=how == "all")
        for batch in (8, 24):
            x = torch.randn(batch, 3, 224, 224, device="cuda")
            if how == "batch":
                torch._dynamo.mark_dynamic(x, 0)
            os.environ["SRET_COMPILED_OPS"] = "1"
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                want = model(x).float()  # eager fused path
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                err = _rel(_step(compiled, x).float(), want)
            fused_seen = any(e.key.startswith("_residual_fwd") for e in prof.key_averages())
            ok &= err < 2e-2 and fused_seen
            print(f"{name} dynamic {how}, batch {batch}: rel err vs eager fused {err:.2e}, fused kernels seen: "
                  f"{fused_seen}", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sret_t", "sret_t_wo_slice", "sret_s"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-only", action="store_true", help="only the training checks")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    results = [check(name, args.batch_size) for name in args.models] if not args.train_only else []
    results += [check_train(name, args.batch_size) for name in args.models]
    if args.train_only:
        return 0 if all(results) else 1
    try:
        results.append(check_dynamic(args.models[0]))
    except Exception as exc:  # reported, and a failure: a dynamic batch must compile too
        print(f"dynamic batch: {type(exc).__name__}: {str(exc)[:2000]}", flush=True)
        results.append(False)
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
