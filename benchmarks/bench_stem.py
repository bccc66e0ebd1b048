"""Time the conv stem (3 x conv3x3/2 + BatchNorm + ReLU) in the layouts and precisions PyTorch can run it in.

SReT-T's stem is 3 -> 32 -> 64 -> 64 channels, SReT-S's 3 -> 63 -> 126 -> 126: not multiples of 8, which cuDNN's
channels-last bf16 kernels want (the run-10 profile of sret_s training shows ``nhwcAddPaddingKernel`` and slow conv
backward). Forward and forward + backward at batch 256, 224 px, train mode; the output is checked against float64.

    PYTHONPATH=src python3 benchmarks/bench_stem.py
"""

from __future__ import annotations

import argparse
import copy

import torch
import triton.testing

from sret.models.sret import ConvStem


def run_stem(stem: torch.nn.Module, x: torch.Tensor, layout: str, dtype: str) -> torch.Tensor:
    """The stem's layers by hand (ConvStem.forward picks a layout itself): input layout and autocast as asked."""
    x = x.contiguous(memory_format=torch.channels_last if layout == "NHWC" else torch.contiguous_format)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        x = torch.relu(stem.bn1(stem.conv1(x)))
        x = torch.relu(stem.bn2(stem.conv2(x)))
        return torch.relu(stem.bn3(stem.conv3(x)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    print(f"{'stem':8s} {'variant':12s} {'fwd ms':>8s} {'fwd+bwd ms':>10s} {'rel err':>9s}")
    for label, dim in (("T (64)", 64), ("S (126)", 126)):
        torch.manual_seed(0)
        base = ConvStem(3, dim).train()
        x = torch.randn(args.batch_size, 3, 224, 224, device="cuda")
        ref = run_stem(copy.deepcopy(base).double().cuda(), x[:16].double(), "NCHW", "fp64")
        for layout in ("NCHW", "NHWC"):
            for dtype in ("bf16", "fp32"):
                stem = copy.deepcopy(base).cuda()
                if layout == "NHWC":
                    stem = stem.to(memory_format=torch.channels_last)
                out = run_stem(stem, x[:16], layout, dtype)
                err = float((out.double() - ref).norm() / ref.norm())

                def fwd(stem=stem, layout=layout, dtype=dtype):
                    with torch.no_grad():
                        run_stem(stem, x, layout, dtype)

                def fwd_bwd(stem=stem, layout=layout, dtype=dtype):
                    run_stem(stem, x, layout, dtype).float().sum().backward()

                t_f = triton.testing.do_bench(fwd, warmup=25, rep=100, return_mode="median")
                t_fb = triton.testing.do_bench(fwd_bwd, warmup=25, rep=100, return_mode="median")
                print(f"{label:8s} {layout + ' ' + dtype:12s} {t_f:8.3f} {t_fb:10.3f} {err:9.2e}", flush=True)


if __name__ == "__main__":
    main()
