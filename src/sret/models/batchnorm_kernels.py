"""BatchNorm (batch statistics) + ReLU of the conv stem in training, on channels-last maps, as Triton kernels.

Why: the stem's three BatchNorm + ReLU layers run over SReT's largest tensors (256 x 112 x 112 x 32 at batch 256
and 224 px), and PyTorch spends six kernels on each in training (statistics, transform, ReLU; the BatchNorm
backward's reduction and elementwise pass, the ReLU backward) at well under the memory bandwidth: ~3.4 ms of a
~38 ms SReT-T training step on an H100 (docs/perf_notes.md, run 20). Here a layer is two passes forward (statistics;
normalise + affine + ReLU) and two backward (the two per-channel sums; the input gradient), each one read of the
map (plus one write). Nothing beyond the conv output is saved: the ReLU mask is recomputed from it.

Statistics: each program folds its row tiles into a running (count, mean, M2) with Chan's parallel update, and the
per-program partials are combined the same way, so the variance never subtracts two large sums (the one-pass
``E[x^2] - E[x]^2`` would). Semantics are ``F.relu(F.batch_norm(x, ..., training=True))``: biased variance for the
normalisation, the unbiased one into ``running_var``, momentum updates, ``num_batches_tracked`` incremented; the
output in x's dtype. :func:`batch_norm_relu` returns None where it does not apply (no Triton, not CUDA and not the
interpreter, not channels-last, more than 256 channels, a BatchNorm without running statistics or with
``momentum=None``); the caller then runs the PyTorch ops. Checked against them through Triton's interpreter in
``tests/test_layernorm.py``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sret.models import layernorm as _ln
from sret.models.kernel_launch import cdiv, next_power_of_2

triton = _ln.triton
if triton is not None:
    import triton.language as tl

    @triton.jit
    def _bn_stats(X, COUNT, MEAN, M2, M, C, num_tiles, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        """Per-program (count, mean, M2) of each channel over the row tiles pid, pid + P, ... of x (M, C)."""
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_C)
        cmask = cols < C
        n = tl.sum(tl.zeros((BLOCK_M,), dtype=tl.float32), axis=0)  # a float32 scalar (loop-carried)
        mean = tl.zeros((BLOCK_C,), dtype=tl.float32)
        m2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for t in range(pid, num_tiles, tl.num_programs(0)):
            rows = t * BLOCK_M + tl.arange(0, BLOCK_M)
            rmask = rows < M
            mask = rmask[:, None] & cmask[None, :]
            x = tl.load(X + rows[:, None].to(tl.int64) * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            nt = tl.sum(rmask.to(tl.float32), axis=0)
            tmean = tl.sum(x, axis=0) / nt
            d = tl.where(mask, x - tmean[None, :], 0.0)
            tm2 = tl.sum(d * d, axis=0)
            delta = tmean - mean
            tot = n + nt
            mean += delta * (nt / tot)
            m2 += tm2 + delta * delta * (n * nt / tot)
            n = tot
        tl.store(COUNT + pid, n)
        tl.store(MEAN + pid * C + cols, mean, mask=cmask)
        tl.store(M2 + pid * C + cols, m2, mask=cmask)

    @triton.jit
    def _bn_relu_fwd(X, Y, MEAN, RSTD, W, B, M, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_C)
        cmask = cols < C
        mask = (rows < M)[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * C + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(RSTD + cols, mask=cmask, other=0.0) * tl.load(W + cols, mask=cmask, other=0.0)
        shift = tl.load(B + cols, mask=cmask, other=0.0) - tl.load(MEAN + cols, mask=cmask, other=0.0) * scale
        y = tl.maximum(x * scale[None, :] + shift[None, :], 0.0)
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _bn_relu_bwd_sums(X, DY, MEAN, RSTD, W, B, SUMS, M, C, num_tiles, BLOCK_M: tl.constexpr,
                          BLOCK_C: tl.constexpr):
        """Per-program partial sums of g and g * xhat, g = dy where the ReLU passed (its input recomputed)."""
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_C)
        cmask = cols < C
        mean = tl.load(MEAN + cols, mask=cmask, other=0.0)
        rstd = tl.load(RSTD + cols, mask=cmask, other=0.0)
        w = tl.load(W + cols, mask=cmask, other=0.0)
        b = tl.load(B + cols, mask=cmask, other=0.0)
        sg = tl.zeros((BLOCK_C,), dtype=tl.float32)
        sgx = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for t in range(pid, num_tiles, tl.num_programs(0)):
            rows = t * BLOCK_M + tl.arange(0, BLOCK_M)
            mask = (rows < M)[:, None] & cmask[None, :]
            offs = rows[:, None].to(tl.int64) * C + cols[None, :]
            xhat = (tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) - mean[None, :]) * rstd[None, :]
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.where(xhat * w[None, :] + b[None, :] > 0.0, dy, 0.0)
            sg += tl.sum(g, axis=0)
            sgx += tl.sum(g * xhat, axis=0)
        tl.store(SUMS + pid * 2 * C + cols, sg, mask=cmask)
        tl.store(SUMS + pid * 2 * C + C + cols, sgx, mask=cmask)

    @triton.jit
    def _bn_relu_bwd_dx(X, DY, DX, MEAN, RSTD, W, B, SG, SGX, M, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        """dx = w * rstd * (g - mean(g) - xhat * mean(g * xhat)), g the ReLU-masked dy."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_C)
        cmask = cols < C
        mask = (rows < M)[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * C + cols[None, :]
        mean = tl.load(MEAN + cols, mask=cmask, other=0.0)
        rstd = tl.load(RSTD + cols, mask=cmask, other=0.0)
        w = tl.load(W + cols, mask=cmask, other=0.0)
        b = tl.load(B + cols, mask=cmask, other=0.0)
        mg = tl.load(SG + cols, mask=cmask, other=0.0) / M
        mgx = tl.load(SGX + cols, mask=cmask, other=0.0) / M
        xhat = (tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) - mean[None, :]) * rstd[None, :]
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.where(xhat * w[None, :] + b[None, :] > 0.0, dy, 0.0)
        dx = (w * rstd)[None, :] * (g - mg[None, :] - xhat * mgx[None, :])
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


def _tiles(C: int) -> tuple[int, int]:
    block_c = max(16, next_power_of_2(C))
    return max(1, 8192 // block_c), block_c


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) channels-last -> the (B*H*W, C) row-major view of its memory."""
    B, C, H, W = t.shape
    return t.permute(0, 2, 3, 1).reshape(B * H * W, C)


class _BatchNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                shift: Optional[torch.Tensor]):
        x2 = _rows(x)  # (M, C), a view: x is channels-last
        M, C = x2.shape
        block_m, block_c = _tiles(C)
        num_tiles = cdiv(M, block_m)
        programs = min(num_tiles, 4 * _ln._sm_count(x.device))
        count = torch.empty(programs, device=x.device, dtype=torch.float32)
        pmean = torch.empty((programs, C), device=x.device, dtype=torch.float32)
        pm2 = torch.empty_like(pmean)
        _bn_stats[(programs,)](x2, count, pmean, pm2, M, C, num_tiles, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=4)
        # Chan's combination of the per-program partials (every program saw at least one row)
        mean = (pmean * count[:, None]).sum(0) / M
        m2 = pm2.sum(0) + ((pmean - mean) ** 2 * count[:, None]).sum(0)
        var = m2 / M
        rstd = torch.rsqrt(var + eps)
        w, b = weight.float().contiguous(), bias.float().contiguous()
        y = torch.empty_like(x)  # channels-last like x
        _bn_relu_fwd[(num_tiles,)](x2, _rows(y), mean, rstd, w, b, M, C, BLOCK_M=block_m, BLOCK_C=block_c,
                                   num_warps=4)
        ctx.save_for_backward(x, mean, rstd, w, b)
        ctx.weight_dtype = weight.dtype
        ctx.shift = None if shift is None else (shift.shape, shift.dtype, shift.device)
        ctx.mark_non_differentiable(mean, var)
        if shift is not None:  # the statistics of x + shift: the mean moves, the variance and the output do not
            mean = mean + shift.float()
        return y, mean, var

    @staticmethod
    def backward(ctx, dy: torch.Tensor, _dmean, _dvar):
        x, mean, rstd, w, b = ctx.saved_tensors
        x2 = _rows(x)
        M, C = x2.shape
        dy = dy.contiguous(memory_format=torch.channels_last)
        dy2 = _rows(dy)
        block_m, block_c = _tiles(C)
        num_tiles = cdiv(M, block_m)
        programs = min(num_tiles, 4 * _ln._sm_count(x.device))
        partial = torch.empty((programs, 2, C), device=x.device, dtype=torch.float32)
        _bn_relu_bwd_sums[(programs,)](x2, dy2, mean, rstd, w, b, partial, M, C, num_tiles, BLOCK_M=block_m,
                                       BLOCK_C=block_c, num_warps=4)
        sums = partial.sum(0)  # (2, C): sum g, sum g * xhat
        dx = torch.empty_like(x)
        _bn_relu_bwd_dx[(num_tiles,)](x2, dy2, _rows(dx), mean, rstd, w, b, sums[0], sums[1], M, C,
                                      BLOCK_M=block_m, BLOCK_C=block_c, num_warps=4)
        dshift = None if ctx.shift is None else torch.zeros(ctx.shift[0], dtype=ctx.shift[1], device=ctx.shift[2])
        return dx, sums[1].to(ctx.weight_dtype), sums[0].to(ctx.weight_dtype), None, dshift


def batch_norm_relu(x: torch.Tensor, bn: nn.BatchNorm2d,
                    shift: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """``F.relu(bn(x + shift))`` for a BatchNorm in training mode on channels-last ``x`` (B, C, H, W), running
    statistics updated; None where the kernels do not apply.

    ``x`` may carry channels past the BatchNorm's, all zeros (a conv's zero-weight channels that keep a map's rows
    16-byte aligned for cuDNN, ``ConvStem``): they come out as zeros, with a zero gradient, and touch no statistics.

    ``shift`` (C,) is a conv bias the caller left out: with batch statistics a per-channel constant in front of
    BatchNorm cancels in the output and its gradient is exactly zero, so it only moves the running mean. Leaving it
    out saves the bias add over the conv output and the bias gradient's reduction over it (each a pass over the
    stem's largest maps). ``shift`` gets a zero gradient (not None: it stays a used parameter, as DDP expects).
    """
    if (not _ln.fused_kernels_enabled(x) or not bn.training or not bn.track_running_stats or bn.momentum is None
            or not bn.affine or x.dim() != 4 or x.shape[1] > 256 or x.shape[0] * x.shape[2] * x.shape[3] < 2
            or not x.is_contiguous(memory_format=torch.channels_last) or x.shape[1] < bn.num_features):
        return None
    C = bn.num_features
    weight, bias = bn.weight, bn.bias
    extra = x.shape[1] - C
    if extra:  # zero channels: weight and bias 0 there (y = relu(0) = 0 and no gradient reaches them)
        weight, bias = F.pad(weight, (0, extra)), F.pad(bias, (0, extra))
        shift = F.pad(shift, (0, extra)) if shift is not None else None
    y, mean, var = _BatchNormReLU.apply(x, weight, bias, bn.eps, shift)
    M = x.numel() // x.shape[1]
    with torch.no_grad():
        bn.running_mean.lerp_(mean[:C].to(bn.running_mean.dtype), bn.momentum)
        bn.running_var.lerp_((var[:C] * (M / (M - 1))).to(bn.running_var.dtype), bn.momentum)
        bn.num_batches_tracked.add_(1)
    return y
