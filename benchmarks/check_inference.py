"""Inference paths on the GPU against the plain modules and a float64 reference: eval logits, no autograd.

Covers what only runs under ``torch.no_grad`` on CUDA: the stem with BatchNorm folded into cuDNN's conv + bias +
ReLU, the sliced attention's shuffle inside the LayerNorm / residual kernels, and the MLP kernels' inference tiles.
The BatchNorm statistics, affine parameters and residual coefficients are moved away from their init first, so a
wrong fold or a dropped coefficient shows. For each model: relative error of the fused (``SRET_FUSED=1``) and plain
(``SRET_FUSED=0``) logits against float64 on the CPU, in bf16 autocast and in float32; the fused error must be
within 1.5x the plain one and finite (exit 1 otherwise). Then the eval stem's forward time both ways.

    PYTHONPATH=src python3 benchmarks/check_inference.py [--models sret_t sret_s] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import copy
import os

import torch

import sret
from sret.models import sret as sret_module


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()


def _logits(model, x, fused: str, autocast: bool) -> torch.Tensor:
    os.environ["SRET_FUSED"] = fused
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            return model(x).float()
    finally:
        os.environ["SRET_FUSED"] = "1"


def _trained_looking(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "coefficient" in name:
                p.uniform_(0.5, 1.5)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)


def _time_stem(stem, x, fused: str, iters: int = 20) -> float:
    os.environ["SRET_FUSED"] = fused
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(3):
                stem(x)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            times = []
            for _ in range(5):
                start.record()
                for _ in range(iters):
                    stem(x)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / iters)
        return sorted(times)[len(times) // 2]
    finally:
        os.environ["SRET_FUSED"] = "1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sret_t", "sret_t_wo_slice", "sret_s"])
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    ok = True
    for name in args.models:
        torch.manual_seed(0)
        model = sret.create_model(name).eval()
        _trained_looking(model)
        x = torch.randn(args.batch_size, 3, 224, 224)
        with torch.no_grad():
            ref = copy.deepcopy(model).double()(x.double())
        model, xd = model.cuda(), x.cuda()
        for autocast in (True, False):
            ef = _rel(_logits(model, xd, "1", autocast), ref)
            ep = _rel(_logits(model, xd, "0", autocast), ref)
            good = ef == ef and ef <= 1.5 * ep + (1e-6 if autocast else 1e-4)  # float32: both near TF32 rounding
            ok &= good
            print(f"check {name} eval logits vs float64 ({'bf16 autocast' if autocast else 'float32'}): "
                  f"fused {ef:.2e} plain {ep:.2e} {'OK' if good else 'FAIL'}", flush=True)
        stem = model.patch_embed
        xs = torch.randn(256, 3, 224, 224, device="cuda")
        print(f"check {name} eval stem, batch 256, bf16: folded {_time_stem(stem, xs, '1'):.3f} ms, "
              f"plain {_time_stem(stem, xs, '0'):.3f} ms; cuDNN conv+ReLU refused for: "
              f"{sorted(sret_module._CUDNN_CONV_RELU_FAILED) or 'none'}", flush=True)
    print("check inference OK" if ok else "check inference FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
