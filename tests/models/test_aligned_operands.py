"""Token GEMM operands carried at 16-byte aligned widths on the kernel paths (``models/fused.py``, change 54).

SReT-S's 126 and 252 channels give bf16 rows that are not 16-byte aligned, and cuBLAS runs such GEMMs on slower
kernels. The fused sublayers carry every (tokens, C) operand and output of their GEMMs ``aligned_width(C)`` wide with
zero columns: the LayerNorm output, the projection's output, the branch gradient's copy, the LayerNorm backward's
incoming gradient. Checked here: the kernels that read or write those padded rows give the same bits as with
contiguous rows, and a whole SReT-S training step through Triton's interpreter runs every GEMM on aligned rows (the
old path did not) and is as close to float64 as the old path.
"""

from __future__ import annotations

import torch

from sret.models import fused

from ..interpreter import run_in_interpreter


def test_aligned_width():
    assert [fused.aligned_width(c) for c in (64, 126, 128, 252, 504, 3)] == [64, 128, 128, 256, 504, 8]
    assert [fused.low_copy_width(c) for c in (126, 252, 3)] == [128, 256, 3]  # C < 8: the tile would not cover it


def test_branch_gradient_at_a_padded_width():
    g = torch.randn(2, 3, 6)
    scale = torch.tensor([0.5, 2.0])
    padded = fused._branch_grad(g, scale, torch.float16, width=8)
    assert padded.shape == (2, 3, 8) and not padded[..., 6:].any()
    assert torch.equal(padded[..., :6], (g * scale.view(2, 1, 1)).half())
    order = torch.tensor([2, 0, 1])
    assert torch.equal(fused._branch_grad(g, scale, torch.float16, order, 8), padded[:, order])
    low = torch.zeros(2, 3, 8, dtype=torch.float16)
    fused._keep_low_copy(g, low, None)
    assert fused._branch_grad(g, None, torch.float16, width=8) is low  # the copy at the width asked for
    assert fused._branch_grad(g, None, torch.float16).shape == (2, 3, 6)  # another width: computed


KERNELS = r"""
import torch
from sret.models import layernorm as L
from sret.models import sublayer_kernels as K

torch.manual_seed(0)
for C, N in ((126, 6), (12, 4)):
    B = 3
    M, cp = B * N, C + (-C % 8)
    x = torch.randn(M, C)
    w = torch.randn(C)
    mean, rstd = x.mean(1), x.var(1, unbiased=False).add(1e-6).rsqrt()
    res, c1, scale = torch.randn(M, C), torch.tensor([0.9]), torch.tensor([0.5, 1.5, 2.0])
    padded = torch.zeros(M, cp, dtype=torch.float16)
    padded[:, :C] = torch.randn(M, C)
    idx = torch.randperm(N)
    for order in (None, idx):
        dense_low = torch.empty(M, C, dtype=torch.float16)
        wide_low = torch.full((M, cp), 7.0, dtype=torch.float16)  # what the kernel must overwrite with zeros
        args = (x, w, mean, rstd, res, c1, True, None, N)
        dx0, part0, _ = L.ln_backward_partials(padded[:, :C].contiguous(), *args, dx_low=dense_low,
                                               dx_low_scale=scale, dy_rows=order, dx_low_rows=order)
        dx1, part1, _ = L.ln_backward_partials(padded[:, :C], *args, dx_low=wide_low, dx_low_scale=scale,
                                               dy_rows=order, dx_low_rows=order)
        assert torch.equal(dx0, dx1) and torch.equal(part0, part1)
        assert torch.equal(wide_low[:, :C], dense_low) and not wide_low[:, C:].any()
        # the other form of the launch (the strides as constants where they were arguments, and the reverse: 126 is
        # in _CONSTANT_STRIDES, 12 is not) gives the same bits
        constant, other_low = L._CONSTANT_STRIDES, torch.full((M, cp), 7.0, dtype=torch.float16)
        L._CONSTANT_STRIDES = constant ^ {C}
        try:
            dx2, part2, _ = L.ln_backward_partials(padded[:, :C], *args, dx_low=other_low, dx_low_scale=scale,
                                                   dy_rows=order, dx_low_rows=order)
        finally:
            L._CONSTANT_STRIDES = constant
        assert torch.equal(dx2, dx1) and torch.equal(part2, part1) and torch.equal(other_low, wide_low)
    # the residual reading the branch from padded rows
    xr = torch.randn(B, N, C)
    y = torch.zeros(B, N, cp, dtype=torch.float16)
    y[..., :C] = torch.randn(B, N, C)
    inv = torch.argsort(idx)
    for rows in (None, inv):
        a = K.residual_forward(xr, y[..., :C].contiguous(), c1, torch.tensor([1.1]), scale, y_rows=rows)
        b = K.residual_forward(xr, y[..., :C], c1, torch.tensor([1.1]), scale, y_rows=rows)
        assert torch.equal(a, b)
print("ok")
"""


def test_kernels_read_and_write_padded_rows_in_interpreter():
    run_in_interpreter(KERNELS)


WHOLE_STEP = r"""
import os
import torch
import sret
from sret.models import fused

torch.manual_seed(0)
model = sret.create_model("sret_s", img_size=64, num_classes=10, drop_path_rate=0.2).train()
x = torch.randn(2, 3, 64, 64)
weights = None
gemms = []
real_mm, real_addmm, real_aligned = torch.mm, torch.addmm, fused.aligned_width

def leading(t):
    return t.stride(0) if t.stride(1) == 1 else t.stride(1)

def recorded(fn):
    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        gemms.append([leading(t) for t in (out, *args) if isinstance(t, torch.Tensor) and t.dim() == 2])
        return out
    return call

def step(aligned):
    fused.aligned_width = real_aligned if aligned else (lambda C: C)  # the old path: rows C wide
    gemms.clear()
    torch.manual_seed(3)  # the same permutations and drop-path masks
    model.zero_grad(set_to_none=True)
    torch.mm, torch.addmm = recorded(real_mm), recorded(real_addmm)
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    finally:
        torch.mm, torch.addmm = real_mm, real_addmm
    unaligned = sum(any(ld % 8 for ld in g) for g in gemms)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and "conv" not in n}
    return out.detach(), grads, len(gemms), unaligned

out_new, grads_new, n_new, bad_new = step(True)
out_old, grads_old, n_old, bad_old = step(False)
assert n_new == n_old > 200, (n_new, n_old)
assert bad_new == 0 and bad_old > 100, (bad_new, bad_old)  # every token GEMM on aligned rows; before, half were not
fused.aligned_width = real_aligned
os.environ["SRET_FUSED"] = "0"  # the reference: the plain modules in float64
ref = model.double()
torch.manual_seed(3)
ref.zero_grad(set_to_none=True)
out_ref = ref(x.double())
(out_ref * torch.linspace(-1, 1, out_ref.numel(), dtype=torch.float64).view_as(out_ref)).sum().backward()
grads_ref = {n: p.grad for n, p in ref.named_parameters() if n in grads_new}
assert grads_ref.keys() == grads_new.keys()
median = lambda g: sorted(rel(g[n], grads_ref[n]) for n in grads_ref)[len(grads_ref) // 2]
print(rel(out_new, out_ref), rel(out_old, out_ref), median(grads_new), median(grads_old))
assert rel(out_new, out_ref) < 1.5 * rel(out_old, out_ref) + 1e-4
assert median(grads_new) < 1.5 * median(grads_old) + 1e-4
print("ok")
"""


def test_whole_sret_s_step_runs_every_gemm_on_aligned_rows_in_interpreter():
    run_in_interpreter(WHOLE_STEP, timeout=900, SRET_FAST_LN="1", SRET_FUSED="1", SRET_FUSED_KERNELS="1")
