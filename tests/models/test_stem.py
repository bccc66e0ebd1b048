"""The eval-mode stem with BatchNorm folded into the convs (the CUDA inference path) against the plain layers."""

from __future__ import annotations

import pytest
import torch

from sret.models.sret import ConvStem, _aligned_channels


def _stem_with_statistics(seed: int, dim: int = 64) -> ConvStem:
    """A stem whose BatchNorms have non-trivial affine parameters and running statistics (a trained-looking one)."""
    torch.manual_seed(seed)
    stem = ConvStem(3, dim).double()
    stem.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics from real batches, away from the (0, 1) init
            stem(torch.randn(4, 3, 32, 32, dtype=torch.float64) * 2 + 0.5)
        for bn in (stem.bn1, stem.bn2, stem.bn3):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return stem.eval()


@pytest.mark.parametrize("dim", [64, 126])  # SReT-T's stem, SReT-S's (63 and 126 channels: carried at 64, 128)
def test_folded_stem_equals_conv_bn_relu_in_float64(dim):
    stem = _stem_with_statistics(0, dim)
    x = torch.randn(2, 3, 40, 56, dtype=torch.float64)
    with torch.no_grad():
        ref = stem(x)  # CPU: the plain conv -> BN -> ReLU layers
        out = stem._forward_folded(x, fused_relu=False)
    assert out.shape == ref.shape == (2, dim, 5, 7)
    assert (ref > 0).float().mean() > 0.2  # the ReLU is not trivially all-on or all-off
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_folded_weights_are_the_batchnorm_scale_and_shift():
    stem = _stem_with_statistics(1)
    (w, b, conv), _, _ = stem.folded()
    bn = stem.bn1
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(w, conv.weight * s.view(-1, 1, 1, 1))
    torch.testing.assert_close(b, (conv.bias - bn.running_mean) * s + bn.bias)
    assert not torch.equal(b, conv.bias)  # the statistics really moved


def test_maps_between_folded_convs_are_carried_at_multiples_of_8_channels():
    layers = _aligned_channels(_stem_with_statistics(2, 126).folded())
    assert [tuple(w.shape[:2]) for w, _, _ in layers] == [(64, 3), (128, 64), (126, 128)]
    assert [b.shape[0] for _, b, _ in layers] == [64, 128, 126]
    (w1, b1, _), (w2, b2, _), (w3, _, _) = layers
    assert not w1[63:].any() and not b1[63:].any() and not w2[:, 63:].any()  # the added channels are zeros
    assert not w2[126:].any() and not b2[126:].any() and not w3[:, 126:].any()
    aligned = _aligned_channels(_stem_with_statistics(2, 64).folded())
    assert [tuple(w.shape[:2]) for w, _, _ in aligned] == [(32, 3), (64, 32), (64, 64)]  # nothing to add



def test_zero_output_channels_change_nothing_in_float64():
    """The training stem's convs with zero output channels (zero weights, no bias) and the next conv over them (zero
    input columns): the same maps, zeros in the added channels (SReT-S's 126 carried at 128, change 53)."""
    torch.manual_seed(4)
    conv2, conv3 = torch.nn.Conv2d(63, 126, 3, 2, 1).double(), torch.nn.Conv2d(126, 126, 3, 2, 1).double()
    x = torch.randn(2, 63, 12, 10, dtype=torch.float64)
    y = ConvStem._conv(x, conv2, bias=False, out_channels=128)
    want = torch.nn.functional.conv2d(x, conv2.weight, None, 2, 1)
    assert y.shape == (2, 128, 6, 5) and not y[:, 126:].any()
    torch.testing.assert_close(y[:, :126], want, rtol=1e-12, atol=1e-12)  # another blocking: float64 rounding
    torch.testing.assert_close(ConvStem._conv(y, conv3, bias=False), torch.nn.functional.conv2d(want, conv3.weight,
                               None, 2, 1), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="zero output channels"):
        ConvStem._conv(x, conv2, bias=True, out_channels=128)


def test_padded_input_channels_change_nothing_in_float64(monkeypatch):
    """The first conv over images padded with zero channels (and zero weights there) computes the same function."""
    from sret.models import sret as sret_module

    stem = _stem_with_statistics(3)
    x = torch.randn(2, 3, 24, 40, dtype=torch.float64)
    assert sret_module._stem_pad(3) == 5 and sret_module._stem_pad(8) == 0
    padded = sret_module._padded_input(x, torch.float64)
    assert padded.shape == (2, 8, 24, 40) and padded.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(padded[:, :3], x) and not padded[:, 3:].any()
    torch.testing.assert_close(stem._conv(padded, stem.conv1), stem.conv1(x), rtol=1e-10, atol=1e-12)  # training path
    monkeypatch.setenv("SRET_STEM_PAD", "0")
    assert sret_module._stem_pad(3) == 0


FIRST_CONV_SCRIPT = r"""
import torch, torch.nn.functional as F
from sret.models.stem_conv import first_conv

torch.manual_seed(0)
# SReT-T's (3 -> 32) and SReT-S's (3 -> 63: output channels padded inside) first convs, odd and even map sizes
for c_out, hw in ((32, (9, 14)), (63, (7, 7)), (16, (16, 10))):
    conv = torch.nn.Conv2d(3, c_out, 3, stride=2, padding=1)
    x = torch.randn(2, 3, *hw) * 2
    y = first_conv(x, conv, torch.float16)
    assert y.dtype == torch.float16 and y.is_contiguous(memory_format=torch.channels_last), (y.dtype, y.stride())
    # the reference rounds input and weight to float16 as autocast's conv does, then computes in float64; no bias
    xr, wr = x.half().double(), conv.weight.detach().half().double()
    ref = F.conv2d(xr, wr, None, stride=2, padding=1)
    assert y.shape == ref.shape and rel(y, ref) < 1e-3, (c_out, rel(y, ref))
    g = torch.randn(y.shape).half().contiguous(memory_format=torch.channels_last)
    (dw,) = torch.autograd.grad(y, (conv.weight,), g)
    w64 = wr.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(F.conv2d(xr, w64, None, stride=2, padding=1), (w64,), g.double())
    assert dw.dtype == torch.float32 and dw.shape == conv.weight.shape and rel(dw, want) < 1e-5, rel(dw, want)
# where the kernels do not apply: the caller's cuDNN path
assert first_conv(torch.randn(2, 8, 8, 8), torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.float16) is None
assert first_conv(torch.randn(2, 3, 8, 8), torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.float32) is None
assert first_conv(torch.randn(2, 3, 8, 8, requires_grad=True), torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
                  torch.float16) is None

# Zero output channels (training, change 53: SReT-S's 63 carried at 64): the same conv, zero channels after it, and
# the weight gradient of the conv's own shape
conv = torch.nn.Conv2d(3, 63, 3, stride=2, padding=1)
x = torch.randn(2, 3, 9, 14) * 2
y, y64 = first_conv(x, conv, torch.float16), first_conv(x, conv, torch.float16, out_channels=64)
assert y64.shape == (2, 64, 5, 7) and torch.equal(y64[:, :63], y) and not y64[:, 63].any()
g = torch.randn(y64.shape).half().contiguous(memory_format=torch.channels_last)
(dw64,) = torch.autograd.grad(y64, (conv.weight,), g)
(dw,) = torch.autograd.grad(y, (conv.weight,), g[:, :63].contiguous(memory_format=torch.channels_last))
assert dw64.shape == conv.weight.shape and rel(dw64, dw) < 1e-6, rel(dw64, dw)
assert first_conv(x, conv, torch.float16, out_channels=32) is None  # fewer than the conv's

# Inference (change 53): the same kernel on a folded conv, with the bias and the ReLU, and 64 output channels of
# which the last is zero weights and bias (SReT-S's 63 carried at 64); the reference rounds images, weight and bias
# to float16 as the kernel does
from sret.models.stem_conv import first_conv_folded
conv = torch.nn.Conv2d(3, 63, 3, stride=2, padding=1)
w = F.pad(torch.randn(63, 3, 3, 3), (0, 0, 0, 0, 0, 0, 0, 1))
b = F.pad(torch.randn(63) * 0.5, (0, 1))
x = torch.randn(2, 3, 9, 14) * 2
y = first_conv_folded(x, w, b, conv, torch.float16)
ref = F.relu(F.conv2d(x.half().double(), w.half().double(), b.half().double(), stride=2, padding=1))
assert y.shape == ref.shape == (2, 64, 5, 7) and y.is_contiguous(memory_format=torch.channels_last)
assert rel(y, ref) < 1e-3 and (ref > 0).double().mean() > 0.2, rel(y, ref)
assert not y[:, 63].any()
assert first_conv_folded(x, w[:, :2], b, conv, torch.float16) is None  # weight and images disagree

# The whole folded stem of SReT-S's width under float16 autocast: first conv on the kernel, then the others
import sret.models.stem_conv as stem_conv
from sret.models.sret import ConvStem
torch.manual_seed(1)
stem = ConvStem(3, 126)
with torch.no_grad():
    stem.train()
    for _ in range(2):
        stem(torch.randn(4, 3, 32, 32) * 2 + 0.5)
stem.eval()
calls = []
plain_folded = stem_conv.first_conv_folded
stem_conv.first_conv_folded = lambda *a: calls.append(1) or plain_folded(*a)
x = torch.randn(2, 3, 40, 56)
with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
    out = stem._forward_folded(x)
with torch.no_grad():
    ref = stem.double()(x.double())
assert calls == [1] and out.dtype == torch.float16 and out.shape == ref.shape == (2, 126, 5, 7)
assert rel(out, ref) < 1e-2, rel(out, ref)
print("ok")
"""


def test_first_conv_kernels_match_conv2d_in_float64_in_interpreter():
    """The stem's first conv (``stem_conv.py``): output and weight gradient against ``F.conv2d``; in inference with
    the folded bias and ReLU, alone and inside the folded stem."""
    from ..interpreter import run_in_interpreter

    run_in_interpreter(FIRST_CONV_SCRIPT)


def test_pos_embed_add_on_a_channels_last_map_equals_the_plain_add(monkeypatch):
    """The CUDA stem's channels-last map gets pos_embed through ``_ChannelsLastPosAdd`` (change 50): the same sum and
    input gradient bit for bit, the same pos_embed gradient up to summation order, all in the map's layout."""
    import sret
    from sret.models import sret as sret_module

    torch.manual_seed(0)
    model = sret.create_model("sret_t", img_size=64, num_classes=10)
    x = torch.randn(4, 64, 8, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(model.patch_embed, "forward", lambda images: x_in)  # the map the CUDA stem hands over
    g = torch.randn(4, 64, 64)  # the stage's (B, N, C) token gradient
    results = []
    for fused_add in (True, False):
        if not fused_add:  # the plain add of the other layouts
            monkeypatch.setattr(sret_module._ChannelsLastPosAdd, "apply", lambda a, b: a + b)
        x_in = x.clone().requires_grad_(True)
        model.pos_embed.grad = None
        y = model._embed(torch.zeros(4, 3, 64, 64))
        assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
        y.flatten(2).transpose(1, 2).backward(g)
        results.append((y.detach(), x_in.grad, model.pos_embed.grad.clone()))
    (y1, dx1, dp1), (y2, dx2, dp2) = results
    assert torch.equal(y1, y2) and torch.equal(dx1, dx2) and dx1.is_contiguous(memory_format=torch.channels_last)
    assert dp1.is_contiguous() and torch.allclose(dp1, dp2, rtol=1e-6, atol=1e-6)
    assert torch.allclose(dp1, g.view(4, 8, 8, 64).sum(0).permute(2, 0, 1)[None], rtol=1e-6, atol=1e-6)
