"""The fused sublayer's parameter gradients finished in one launch (``models/backward_finish.py``, change 48),
through Triton's interpreter: first the kernel against float64 sums of its inputs, for widths on and off its column
block and program counts on and off its chunk; then a whole SReT-T with drop path, whose every sublayer backward takes
the one launch, against the separate launches it replaces."""

from __future__ import annotations

import pytest

from ..interpreter import run_in_interpreter

pytest.importorskip("triton")

KERNEL = r"""
import torch
from sret.models.backward_finish import finish_sublayer

torch.manual_seed(0)
# (C, programs of the LayerNorm backward, projection inputs, its GEMM output's width, lin rows)
for C, P, n_in, gw_width, n_lin in ((64, 264, 64, 64, 192), (20, 7, 33, 40, 61), (128, 100, 460, 480, 480)):
    partial = torch.randn(4, C, P)
    gw = torch.randn(C, gw_width).half()  # the GEMM's output in the compute dtype; columns past n_in are padding
    w, b = torch.randn(C, n_in), torch.randn(C)
    c1, c2 = torch.randn(1), torch.randn(1)
    dwb = torch.randn(n_lin, C + 8).half()  # the lin weight gradient, then its bias gradient in column C
    counter = torch.zeros(1, dtype=torch.int32)  # as the LayerNorm backward leaves it
    got = finish_sublayer(partial, counter, gw, w, b, c1, c2, dwb, torch.float32, torch.float32)
    assert counter.item() == 0  # left as found, for the next launch
    sums = partial.double().sum(-1)  # (4, C)
    g = gw[:, :n_in].double()
    want = (sums[0], sums[1], sums[2].sum().reshape(1), c2.double() * g, c2.double() * sums[3],
            ((w.double() * g).sum() + (b.double() * sums[3]).sum()).reshape(1), dwb[:, :C].double(),
            dwb[:, C].double())
    names = ("ln weight", "ln bias", "c1", "proj weight", "proj bias", "c2", "lin weight", "lin bias")
    for a, e, name in zip(got, want, names):
        assert a.dtype == torch.float32 and a.shape == e.shape, (C, name, a.shape, e.shape)
        assert rel(a, e) < 1e-6, (C, P, name, rel(a, e))
    assert torch.equal(got[6], dwb[:, :C].float()) and torch.equal(got[7], dwb[:, C].float())  # casts: exact
    assert torch.equal(got[3], gw[:, :n_in].float() * c2)  # one float32 multiply, as the PyTorch ops round it
print("ok")
"""

MODEL = r"""
import torch
import sret
from sret.models import fused

calls = []
plain = fused._finish.finish_sublayer
def counted(*args):
    calls.append(1)
    return plain(*args)
fused._finish.finish_sublayer = counted

torch.manual_seed(0)
model = sret.create_model("sret_t", img_size=64, num_classes=10, drop_path_rate=0.1)
x = torch.randn(2, 3, 64, 64)

def step():
    torch.manual_seed(1)  # same permutations and drop-path masks
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(x)
    out.float().square().sum().backward()
    return out.float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

out_one, one = step()
assert len(calls) == 60, len(calls)  # every sublayer: 20 attention, 20 MLP, 20 NLL
fused._FINISH_IN_ONE_LAUNCH = False
out_sep, separate = step()
assert len(calls) == 60 and torch.equal(out_one, out_sep) and one.keys() == separate.keys()
for name, grad in one.items():
    # only sums over tokens are added up in another order: float32 rounding, nothing more
    assert rel(grad, separate[name]) < 1e-4, (name, rel(grad, separate[name]))
    if name.endswith(("qkv.weight", "qkv.bias", "fc1.weight", "fc1.bias")) or ".proj.weight" in name \
            or "fc2.weight" in name:
        assert torch.equal(grad, separate[name]), name  # casts and one multiply: the same bits
print("ok")
"""


def test_kernel_matches_float64_sums_in_interpreter():
    run_in_interpreter(KERNEL, SRET_FUSED_KERNELS="1")


def test_whole_model_takes_one_launch_per_sublayer_in_interpreter():
    run_in_interpreter(MODEL, SRET_FAST_LN="1", SRET_FUSED="1", SRET_FUSED_KERNELS="1")
