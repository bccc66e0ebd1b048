"""Attention, projection and residual of short groups in one launch (``models/attention_sublayer.py``), through
Triton's interpreter.

The fused attention sublayer with that launch is checked against a float64 evaluation of the sublayer's formula
written here (LayerNorm, qkv, attention within groups of consecutive tokens, proj, weighted residual), and against the
same sublayer on the separate launches (``SRET_ATTN_SUBLAYER=0``): its error may not exceed theirs by more than half.
Then a whole SReT-T in inference must give the same logits both ways, and must have used the launch where the groups
fit. In fp16: the interpreter multiplies bf16 dots wrongly (both paths come out as garbage there), so bf16 is checked
on the GPU (``benchmarks/check_attention_sublayer.py``, ``benchmarks/check_inference.py``).
"""

from __future__ import annotations

import pytest

from sret.models import attention_sublayer as AS

from ..interpreter import run_in_interpreter

SCRIPT = r"""
import os
import torch
import torch.nn.functional as F
from sret.models import attention_sublayer as AS
from sret.models import fused as FU

torch.manual_seed(0)

def reference(x, lw, lb, wqkv, bqkv, wp, bp, c1, c2, eps, groups, heads, scale):
    B, N, C = x.shape
    n, D = N // groups, C // heads
    qkv = F.layer_norm(x, (C,), lw, lb, eps) @ wqkv.T + bqkv  # (B, N, 3C)
    q, k, v = qkv.view(B, groups, n, 3, heads, D).permute(3, 0, 1, 4, 2, 5)  # each (B, G, heads, n, D)
    o = torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v
    y = o.permute(0, 1, 3, 2, 4).reshape(B, N, C) @ wp.T + bp
    return (c1 if c1 is not None else 1.0) * x + (c2 if c2 is not None else 1.0) * y

for B, N, C, groups, heads, coefs in [(2, 24, 32, 2, 2, True), (2, 40, 48, 4, 3, True), (1, 16, 64, 1, 4, False)]:
    x = torch.randn(B, N, C) * 2 + 0.5
    lw, lb = torch.rand(C) + 0.5, torch.randn(C) * 0.1
    wqkv, bqkv = torch.randn(3 * C, C) / C**0.5, torch.randn(3 * C) * 0.1
    wp, bp = torch.randn(C, C) / C**0.5, torch.randn(C) * 0.1
    c1, c2 = (torch.tensor([0.7]), torch.tensor([1.3])) if coefs else (None, None)
    scale, eps = (C // heads) ** -0.5, 1e-6
    args = (x, lw, lb, wqkv, bqkv, wp, bp, c1, c2, eps)
    ref = reference(*(t.double() if isinstance(t, torch.Tensor) else t for t in args), groups, heads, scale)
    assert AS.fits(N, C, groups, heads)

    def attend(qkv, p, inv):  # where the Triton attention kernel does not take the groups: sdpa
        q_, k_, v_ = qkv.view(B, groups, N // groups, 3, heads, C // heads).permute(3, 0, 1, 4, 2, 5)
        return F.scaled_dot_product_attention(q_, k_, v_, scale=scale).permute(0, 1, 3, 2, 4).reshape(B, N, C)

    def sublayer(one_launch):
        os.environ["SRET_ATTN_SUBLAYER"] = "1" if one_launch else "0"
        return FU._AttnResidual.forward(FU._NoGraph(), *args[:9], None, eps, torch.float16, attend, None, None,
                                        heads, 0, False, groups, scale, True)

    calls, plain = [], AS.attention_proj_residual
    AS.attention_proj_residual = lambda *a, **k: calls.append(plain(*a, **k)) or calls[-1]
    got = sublayer(True)
    AS.attention_proj_residual = plain
    sep = sublayer(False)
    assert len(calls) == 1 and calls[0] is got  # the one launch ran and its output is the sublayer's
    assert got.dtype == torch.float32 and got.shape == x.shape and torch.isfinite(got).all()
    e_new, e_sep = rel(got, ref), rel(sep, ref)
    print(B, N, C, groups, heads, "one launch", e_new, "separate", e_sep)
    assert e_new < 1e-2 and e_new <= 1.5 * e_sep + 1e-4, (e_new, e_sep)

assert not AS.fits(784, 64, 1, 2)  # sret_t_wo_slice's stage 1: 784 tokens do not fit a program
assert not AS.fits(49, 256, 1, 8)  # stage 3: 64 x 256 past the tile bound
assert not AS.fits(98 * 8, 126, 8, 3)  # sret_s: 42-wide heads
assert AS.fits(784, 64, 8, 2) and AS.fits(196, 128, 4, 4)  # sret_t's first applications in stages 1 and 2
os.environ["SRET_ATTN_SUBLAYER"] = "1"
q16 = torch.randn(1, 16, 96).half()
assert AS.attention_proj_residual(q16.float(), torch.randn(1, 16, 32), torch.randn(32, 32), torch.randn(32), None,
                                  None, 1, 2, 0.25) is None  # float32 compute: the separate launches
assert AS.attention_proj_residual(q16, torch.randn(1, 16, 32), torch.randn(32, 32).half(), torch.randn(32).half(),
                                  None, None, 1, 2, 0.25) is not None

# A whole SReT-T in inference (fp16 autocast on the CPU): the same logits through the one-launch sublayer as through
# the separate launches, and the one-launch sublayer really ran
import sret
model = sret.create_model("sret_t", img_size=64, num_classes=10).eval()
xs = torch.randn(2, 3, 64, 64)
calls, plain = [], AS.attention_proj_residual

def counted(*a, **k):
    out = plain(*a, **k)
    calls.append(out is not None)
    return out

AS.attention_proj_residual = counted
with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
    one = model(xs)
    os.environ["SRET_ATTN_SUBLAYER"] = "0"
    separate = model(xs)
AS.attention_proj_residual = plain
print("one-launch sublayers", sum(calls), "of", len(calls), "logits rel", rel(one, separate))
assert sum(calls) == 18, calls  # 64 px: every application but stage 1's two shuffled ones fits
assert rel(one.float(), separate.float()) < 2e-2
print("ok")
"""


def test_attention_sublayer_matches_float64_and_the_separate_launches_in_interpreter():
    run_in_interpreter(SCRIPT, SRET_FAST_LN="1", SRET_FUSED="1", SRET_FUSED_KERNELS="1", SRET_ATTN_SUBLAYER="1")


@pytest.mark.parametrize("tokens, channels, groups, heads, fits", [
    (784, 64, 8, 2, True), (784, 64, 2, 2, False), (196, 128, 4, 4, True), (196, 128, 1, 4, False),
    (49, 256, 1, 8, False), (784, 126, 8, 3, False), (10, 48, 1, 3, True), (10, 48, 3, 3, False)])
def test_fits_is_the_tile_bound(tokens, channels, groups, heads, fits):
    assert AS.fits(tokens, channels, groups, heads) is fits
