"""Time the between-stage pooling conv (3x3, stride 2, groups = C_in, C_in -> 2 C_in) in the ways PyTorch can run it.

The run-4 profile of sret_t inference spent ~1.6 ms a step in cuDNN's NHWC grouped-conv engine (193 launches a step)
for two small convs whose bytes take ~15 us: this script finds the layout/dtype/formulation that is fast, forward and
forward + backward, at the SReT-T and SReT-S pool shapes (batch 256, 224 px), with bf16 autocast as in training.
Every variant is checked against the float64 result first.

    PYTHONPATH=src python3 benchmarks/bench_pool.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton.testing


def variants(w: torch.Tensor, b: torch.Tensor):
    """name -> f(x) where x is the stage output folded to (B, C, H, W) with NHWC strides, float32."""
    cin = w.shape[0] // 2

    def conv(x):
        return F.conv2d(x, w, b, stride=2, padding=1, groups=cin)

    def rep(x):  # a true depthwise conv (multiplier 1) on the channels repeated twice
        return F.conv2d(x.repeat_interleave(2, dim=1), w, b, stride=2, padding=1, groups=2 * cin)

    def autocast(fn):
        def run(x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return fn(x)
        return run

    def fp32(fn):
        def run(x):
            with torch.autocast("cuda", enabled=False):
                return fn(x)
        return run

    def no_cudnn(fn):
        def run(x):
            with torch.backends.cudnn.flags(enabled=False):
                return fn(x)
        return run

    def nchw(fn):
        return lambda x: fn(x.contiguous())

    def nchw_bf16(fn):
        return lambda x: fn(x.to(torch.bfloat16).contiguous())

    return {
        "bf16 NHWC (current)": autocast(conv),
        "bf16 NCHW": autocast(nchw(conv)),
        "bf16 NCHW cast first": autocast(nchw_bf16(conv)),
        "bf16 NCHW native (cudnn off)": no_cudnn(autocast(nchw(conv))),
        "bf16 NHWC native (cudnn off)": no_cudnn(autocast(conv)),
        "fp32 NHWC": fp32(conv),
        "fp32 NCHW": fp32(nchw(conv)),
        "fp32 NCHW native (cudnn off)": no_cudnn(fp32(nchw(conv))),
        "bf16 NHWC repeat+depthwise": autocast(rep),
        "bf16 NCHW repeat+depthwise": autocast(nchw(rep)),
        "fp32 NCHW repeat+depthwise": fp32(nchw(rep)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    shapes = [("T pool 0", 64, 28), ("T pool 1", 128, 14), ("S pool 0", 126, 28), ("S pool 1", 252, 14)]
    print(f"{'shape':10s} {'variant':32s} {'fwd ms':>8s} {'fwd+bwd ms':>10s} {'rel err':>9s}")
    for label, cin, hw in shapes:
        torch.manual_seed(0)
        w = (torch.randn(2 * cin, 1, 3, 3, device="cuda") * 0.3).requires_grad_()
        b = (torch.randn(2 * cin, device="cuda") * 0.1).requires_grad_()
        tokens = torch.randn(args.batch_size, hw * hw, cin, device="cuda")
        x = tokens.transpose(1, 2).unflatten(2, (hw, hw)).requires_grad_()  # (B, C, H, W), NHWC strides
        ref = F.conv2d(x.detach().double(), w.detach().double(), b.detach().double(), stride=2, padding=1, groups=cin)
        grad = torch.randn_like(ref, dtype=torch.float32)
        for name, fn in variants(w, b).items():
            try:
                out = fn(x)
                err = float((out.double() - ref).norm() / ref.norm())

                def fwd(fn=fn, x=x):
                    with torch.no_grad():
                        fn(x)

                def fwd_bwd(fn=fn, x=x, w=w, b=b, grad=grad):
                    out = fn(x)
                    torch.autograd.grad(out, (x, w, b), grad.to(out.dtype))

                t_f = triton.testing.do_bench(fwd, warmup=25, rep=100, return_mode="median")
                t_fb = triton.testing.do_bench(fwd_bwd, warmup=25, rep=100, return_mode="median")
                print(f"{label:10s} {name:32s} {t_f:8.3f} {t_fb:10.3f} {err:9.2e}", flush=True)
            except RuntimeError as exc:  # report and go on: a variant PyTorch cannot run here is a result too
                print(f"{label:10s} {name:32s} failed: {str(exc).splitlines()[0][:80]}", flush=True)


if __name__ == "__main__":
    main()
