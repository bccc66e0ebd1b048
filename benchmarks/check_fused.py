"""Fused sublayers (``SRET_FUSED=1``) against the unfused modules and a float64 reference, on the device at hand.

On CUDA this exercises the Triton LayerNorm kernels with the fused residual backward; the CPU runs the native-op
path. For each gradient it prints the relative error of both bf16 paths against float64: the fused path must be as
close to the reference as the unfused one (the median over tensors within 1.5x, and no NaN), and so must the
BatchNorm running statistics after the step (the worst within 1.5x), else exit 1.

    PYTHONPATH=src python3 benchmarks/check_fused.py [--device cuda] [--model sret_t] [--img-size 224]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics

import torch

import sret


def _grads(model, x, fused: str, autocast: bool, seed: int = 0):
    before = os.environ.get("SRET_FUSED")
    os.environ["SRET_FUSED"] = fused
    try:
        torch.manual_seed(seed)  # same training permutations and drop-path masks in every run
        model.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        weights = torch.linspace(-1, 1, out.numel(), device=out.device, dtype=torch.float64).view_as(out)
        (out.double() * weights).sum().backward()
    finally:  # leave the switch as found: callers in the same process (A/B scripts) must not inherit "0"
        if before is None:
            os.environ.pop("SRET_FUSED", None)
        else:
            os.environ["SRET_FUSED"] = before
    grads = {n: p.grad.double().cpu() for n, p in model.named_parameters() if p.grad is not None}
    stats = {n: b.double().cpu() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))}
    return out.detach().double().cpu(), grads, stats


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="sret_t")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--drop-path", type=float, default=0.1)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = sret.create_model(args.model, img_size=args.img_size, drop_path_rate=args.drop_path).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "coefficient" in name:
                p.uniform_(0.5, 1.5)  # away from the published init so a swapped coefficient would show
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    ref_out, ref, ref_stats = _grads(copy.deepcopy(model).double(), x.double(), "0", autocast=False)
    xd = x.to(args.device)
    fused_out, fused, fused_stats = _grads(copy.deepcopy(model).to(args.device), xd, "1", autocast=True)
    plain_out, plain, plain_stats = _grads(copy.deepcopy(model).to(args.device), xd, "0", autocast=True)
    # Conv biases in front of BatchNorm have a gradient of (numerically) zero: relative errors mean nothing there.
    names = [n for n in ref if not (n.startswith("patch_embed.conv") and n.endswith("bias"))]
    ef = {n: _rel(fused[n], ref[n]) for n in names}
    ep = {n: _rel(plain[n], ref[n]) for n in names}
    print(f"device {args.device} model {args.model} {args.img_size}px batch {args.batch_size}")
    print(f"logits vs float64: fused {_rel(fused_out, ref_out):.2e}  unfused {_rel(plain_out, ref_out):.2e}")
    mf, mp = statistics.median(ef.values()), statistics.median(ep.values())
    print(f"gradients vs float64, median over {len(names)} tensors: fused {mf:.2e}  unfused {mp:.2e}")
    for n in sorted(names, key=lambda n: -ef[n])[:5]:
        print(f"  worst fused  {n:55s} fused {ef[n]:.2e} unfused {ep[n]:.2e} |ref| {ref[n].norm():.2e}")
    # The stem's BatchNorm running statistics after the step (the fused stem moves the running mean by the conv
    # bias it leaves out of the conv)
    sf = max(_rel(fused_stats[n], ref_stats[n]) for n in ref_stats)
    sp = max(_rel(plain_stats[n], ref_stats[n]) for n in ref_stats)
    print(f"BatchNorm running statistics vs float64, worst of {len(ref_stats)}: fused {sf:.2e}  unfused {sp:.2e}")
    bad = [n for n in names if not math.isfinite(ef[n])]
    ok = (not bad and mf <= 1.5 * mp + 1e-6 and _rel(fused_out, ref_out) <= 1.5 * _rel(plain_out, ref_out) + 1e-6
          and sf <= 1.5 * sp + 1e-6)
    print("OK" if ok else f"FAIL (non-finite: {bad[:3]})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
