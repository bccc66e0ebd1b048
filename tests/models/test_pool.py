"""The stage-to-stage depthwise pool's Triton backward (``models/pool_kernels.py``, change 46) against ``F.conv2d``
in float64, through Triton's interpreter: the input, weight and bias gradients for channel counts on and off a
multiple of 16 and for odd and even map sizes (the taps that fall on the padding)."""

from __future__ import annotations

import pytest

from ..interpreter import run_in_interpreter

pytest.importorskip("triton")

SCRIPT = r"""
import torch, torch.nn.functional as F
from sret.models.pool_kernels import depthwise_pool_nhwc

torch.manual_seed(0)
for ci, hw in ((4, (7, 7)), (3, (6, 9)), (70, (5, 3)), (32, (5, 6)), (16, (8, 8))):
    conv = torch.nn.Conv2d(ci, 2 * ci, 3, stride=2, padding=1, groups=ci)
    x = torch.randn(2, ci, *hw).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = depthwise_pool_nhwc(x, conv)
    assert out is not None and out.grad_fn is not None and out.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn(out.shape).contiguous(memory_format=torch.channels_last)
    got = torch.autograd.grad(out, (x, conv.weight, conv.bias), g)
    ref_in = [t.detach().double().requires_grad_(True) for t in (x, conv.weight, conv.bias)]
    ref = F.conv2d(ref_in[0], ref_in[1], ref_in[2], stride=2, padding=1, groups=ci)
    want = torch.autograd.grad(ref, ref_in, g.double())
    assert rel(out, ref) < 1e-6, (ci, hw, rel(out, ref))
    for a, b, name in zip(got, want, ("input", "weight", "bias")):
        assert a.shape == b.shape and rel(a, b) < 1e-6, (ci, hw, name, rel(a, b))
    assert got[0].is_contiguous(memory_format=torch.channels_last)  # the previous stage's tokens: no copy
    # only the parameters need gradients (a frozen stage before the pool): the same ones
    x_frozen = x.detach()
    only = torch.autograd.grad(depthwise_pool_nhwc(x_frozen, conv), (conv.weight, conv.bias), g)
    assert torch.equal(only[0], got[1]) and torch.equal(only[1], got[2])
# C_out = C_in with autograd is left to the caller's conv (SReT's pools double the channels)
conv = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_(True)
assert depthwise_pool_nhwc(x, conv) is None
with torch.no_grad():
    assert depthwise_pool_nhwc(x, conv) is not None  # inference takes it
print("ok")
"""


def test_pool_gradients_match_conv2d_in_float64_in_interpreter():
    run_in_interpreter(SCRIPT)
