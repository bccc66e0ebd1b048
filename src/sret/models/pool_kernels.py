"""The stage-to-stage depthwise pool (3x3, stride 2, padding 1, ``groups = C_in``) on channels-last maps, in one
Triton launch forward and two backward (CUDA).

Why: the stages hand over float32 maps whose memory is NHWC (their tokens), and the next stage wants NHWC tokens
again, but cuDNN's grouped NHWC kernels were the slow choice (``DepthwisePool``), so eager mode runs the conv on an
NCHW copy and the next stage copies the NCHW result back into tokens: two copies and a conv per pool. Here each
program reads the 3x3 neighbourhoods of a tile of output pixels straight from the NHWC input (all channels of a
pixel are adjacent) and writes NHWC output, which the next stage takes as tokens without a copy: one pass over the
input and one over the output.

In training the same holds for the gradients. The NCHW path cost SReT-T ~1.3 ms of its training step at batch 256 on
an H100: four layout copies per pool (the input, the output, and both again for the gradients) and PyTorch's
depthwise backward kernels, 0.21 ms (input) and 0.13 ms (weights) a call for tensors that stream in ~0.03 ms
(docs/perf_notes.md, change 46). Here the input gradient is one launch that gathers, for each input pixel, the
output pixels it fed (stride 2: one or two taps a dimension), and the weight and bias gradients one launch of
per-program partial sums, summed in a fixed order afterwards (deterministic, no atomics).

:func:`depthwise_pool_nhwc` returns None where it does not apply (no Triton, not CUDA and not the interpreter, not
float32, not channels-last, C_out not C_in or 2 C_in; with autograd, C_out not 2 C_in). Checked against
``F.conv2d`` in float64 through Triton's interpreter (``tests/test_layernorm.py``, ``tests/models/test_pool.py``).
"""

from __future__ import annotations

from typing import Optional

import torch

from sret.models import layernorm as _ln
from sret.models.kernel_launch import cdiv, next_power_of_2

triton = _ln.triton
if triton is not None:
    import triton.language as tl

    @triton.jit
    def _depthwise_pool_nhwc(X, W, B_, OUT, P, H, Wd, OH, OW, CI, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                             DOUBLE: tl.constexpr):
        """A (BLOCK_P pixels, BLOCK_C input channels) tile; with DOUBLE, input channel c feeds output channels 2c and
        2c + 1 (C_out = 2 C_in, SReT's pools), written interleaved so that every load and store is a contiguous run
        of channels."""
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # output pixels, flattened over (B, OH, OW)
        ci = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        pmask = p < P
        cmask = ci < CI
        ow = p % OW
        oh = (p // OW) % OH
        b = p // (OW * OH)
        co0 = ci * 2 if DOUBLE else ci  # first output channel fed by input channel ci
        acc0 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for kh in tl.static_range(3):
            ih = oh * 2 - 1 + kh
            for kw in tl.static_range(3):
                iw = ow * 2 - 1 + kw
                ok = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < Wd)
                row = ((b.to(tl.int64) * H + ih) * Wd + iw) * CI  # start of input pixel (b, ih, iw)
                v = tl.load(X + row[:, None] + ci[None, :], mask=ok[:, None] & cmask[None, :], other=0.0)
                w0 = tl.load(W + co0 * 9 + kh * 3 + kw, mask=cmask, other=0.0)  # weight (C_out, 1, 3, 3)
                acc0 += v * w0[None, :]
                if DOUBLE:
                    w1 = tl.load(W + (co0 + 1) * 9 + kh * 3 + kw, mask=cmask, other=0.0)
                    acc1 += v * w1[None, :]
        acc0 += tl.load(B_ + co0, mask=cmask, other=0.0)[None, :]
        if DOUBLE:
            acc1 += tl.load(B_ + co0 + 1, mask=cmask, other=0.0)[None, :]
            co = tl.program_id(1) * 2 * BLOCK_C + tl.arange(0, 2 * BLOCK_C)
            tl.store(OUT + p[:, None].to(tl.int64) * (2 * CI) + co[None, :], tl.interleave(acc0, acc1),
                     mask=pmask[:, None] & (co < 2 * CI)[None, :])
        else:
            tl.store(OUT + p[:, None].to(tl.int64) * CI + ci[None, :], acc0, mask=pmask[:, None] & cmask[None, :])


    @triton.jit
    def _depthwise_pool_nhwc_by_output(X, W, B_, OUT, P, H, Wd, OH, OW, CI, CO, MULT, BLOCK_P: tl.constexpr,
                                       BLOCK_C: tl.constexpr):
        """A (BLOCK_P pixels, all output channels) tile, output channel co reading input channel co // MULT: for
        channel counts that are not a multiple of 16 (SReT-S: 126, 252), where it measured faster than the
        input-channel tiles above (run 22: SReT-S inference 20.80 against 21.41 ms)."""
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        co = tl.arange(0, BLOCK_C)
        pmask = p < P
        cmask = co < CO
        ow = p % OW
        oh = (p // OW) % OH
        b = p // (OW * OH)
        ci = co // MULT
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for kh in tl.static_range(3):
            ih = oh * 2 - 1 + kh
            for kw in tl.static_range(3):
                iw = ow * 2 - 1 + kw
                ok = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < Wd)
                row = ((b.to(tl.int64) * H + ih) * Wd + iw) * CI
                v = tl.load(X + row[:, None] + ci[None, :], mask=ok[:, None] & cmask[None, :], other=0.0)
                w = tl.load(W + co * 9 + kh * 3 + kw, mask=cmask, other=0.0)
                acc += v * w[None, :]
        acc += tl.load(B_ + co, mask=cmask, other=0.0)[None, :]
        tl.store(OUT + p[:, None].to(tl.int64) * CO + co[None, :], acc, mask=pmask[:, None] & cmask[None, :])


def depthwise_pool_nhwc(x: torch.Tensor, conv: torch.nn.Conv2d) -> Optional[torch.Tensor]:
    """``conv(x)`` for a 3x3 / stride 2 / padding 1 depthwise ``conv`` (C_out a multiple of C_in) on ``x``
    (B, C_in, H, W) float32 with channels-last memory: (B, C_out, ceil(H/2), ceil(W/2)), channels-last memory. None
    where the kernels do not apply. Differentiable (x, weight, bias) where grad mode is on and C_out = 2 C_in."""
    B, CI, H, Wd = x.shape
    CO = conv.out_channels
    if (not _ln.fused_kernels_enabled(x) or x.dtype != torch.float32 or CO not in (CI, 2 * CI)
            or not x.is_contiguous(memory_format=torch.channels_last) or conv.groups != CI
            or conv.kernel_size != (3, 3) or conv.stride != (2, 2) or conv.padding != (1, 1) or conv.bias is None
            or conv.weight.dtype != torch.float32 or conv.bias.dtype != torch.float32):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, conv.weight, conv.bias)):
        return _DepthwisePool.apply(x, conv.weight, conv.bias) if CO == 2 * CI else None
    return _pool_forward(x, conv.weight, conv.bias)


def _pool_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The forward launch of :func:`depthwise_pool_nhwc`, its checks done."""
    B, CI, H, Wd = x.shape
    CO = weight.shape[0]
    OH, OW = (H + 1) // 2, (Wd + 1) // 2
    out = torch.empty((B, OH, OW, CO), device=x.device, dtype=torch.float32)  # NHWC memory = the next tokens
    P = B * OH * OW
    if CI % 16 or CO > 512:
        block_c = max(16, next_power_of_2(CO))
        block_p = max(1, 4096 // block_c)
        _depthwise_pool_nhwc_by_output[(cdiv(P, block_p),)](
            x, weight, bias, out, P, H, Wd, OH, OW, CI, CO, CO // CI, BLOCK_P=block_p, BLOCK_C=block_c,
            num_warps=4)
        return out.permute(0, 3, 1, 2)
    block_c = min(64, next_power_of_2(CI))
    block_p = 64
    _depthwise_pool_nhwc[(cdiv(P, block_p), cdiv(CI, block_c))](
        x, weight, bias, out, P, H, Wd, OH, OW, CI, BLOCK_P=block_p, BLOCK_C=block_c, DOUBLE=CO == 2 * CI,
        num_warps=4)
    return out.permute(0, 3, 1, 2)  # (B, C_out, OH, OW) view, channels-last strides


if triton is not None:

    @triton.jit
    def _pool_bwd_input(GO, W, DX, P, H, Wd, OH, OW, CI, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """d input for a (BLOCK_P input pixels, BLOCK_C input channels) tile of a pool with C_out = 2 C_in.

        Input row ih fed output row oh through tap kh where ih = 2 oh - 1 + kh: for each tap, oh = (ih + 1 - kh) / 2
        where that is a whole number in range (one tap for an even ih, two for an odd one; the same along w). Input
        channel c fed output channels 2c and 2c + 1, adjacent in memory: the gradient is read as contiguous runs of
        2 BLOCK_C channels, weighted per output channel, and each pair summed once at the end. (Strided loads of the
        two channels, or splitting each load in registers, compiled to thousands of bytes of spills a thread.)
        """
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # input pixels, flattened over (B, H, W)
        ci = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        co = tl.program_id(1) * 2 * BLOCK_C + tl.arange(0, 2 * BLOCK_C)  # output channels 2 ci, 2 ci + 1
        pmask = p < P
        comask = co < 2 * CI
        iw = p % Wd
        ih = (p // Wd) % H
        b = p // (Wd * H)
        acc = tl.zeros((BLOCK_P, 2 * BLOCK_C), dtype=tl.float32)  # per output channel
        # a loop, not unrolled: unrolled, the compiler hoisted all nine taps' loads and their addresses (spills)
        for tap in range(9):
            kh = tap // 3
            kw = tap % 3
            th = ih + 1 - kh  # 2 oh
            tw = iw + 1 - kw
            oh = th >> 1
            ow = tw >> 1
            ok = pmask & (th >= 0) & ((th & 1) == 0) & (oh < OH) & (tw >= 0) & ((tw & 1) == 0) & (ow < OW)
            row = ((b.to(tl.int64) * OH + oh) * OW + ow) * (2 * CI)  # start of output pixel (b, oh, ow)
            g = tl.load(GO + row[:, None] + co[None, :], mask=ok[:, None] & comask[None, :], other=0.0)
            w = tl.load(W + co * 9 + tap, mask=comask, other=0.0)  # weight (C_out, 1, 3, 3)
            acc += g * w[None, :]
        dx = tl.sum(tl.reshape(acc, (BLOCK_P, BLOCK_C, 2)), axis=2)  # output channels 2 ci + 2 ci + 1
        tl.store(DX + p[:, None].to(tl.int64) * CI + ci[None, :], dx, mask=pmask[:, None] & (ci < CI)[None, :])

    @triton.jit
    def _tap_product(X, g, b, oh, ow, pmask, ci, cmask, H, Wd, CI, KH: tl.constexpr, KW: tl.constexpr):
        """``g`` (BLOCK_P output pixels, 2 BLOCK_C output channels) times the input each pixel's tap (KH, KW)
        read: output channel 2c and 2c + 1 read input channel c."""
        ih = oh * 2 - 1 + KH
        iw = ow * 2 - 1 + KW
        ok = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < Wd)
        row = ((b.to(tl.int64) * H + ih) * Wd + iw) * CI
        v = tl.load(X + row[:, None] + ci[None, :], mask=ok[:, None] & cmask[None, :], other=0.0)
        return g * tl.interleave(v, v)

    @triton.jit
    def _pool_bwd_params(X, GO, DWP, DBP, P, H, Wd, OH, OW, CI, num_tiles, BLOCK_P: tl.constexpr,
                         BLOCK_C: tl.constexpr):
        """Partial weight and bias gradients of a pool with C_out = 2 C_in: program (i, j) sums over the output-pixel
        tiles i, i + n, ... (n programs along axis 0) for input-channel tile j, into DWP (n, 9 taps, C_out) and DBP
        (n, C_out), every element written. The caller sums over programs in a fixed order. The sums stay per
        element, one (BLOCK_P, 2 BLOCK_C) accumulator a tap, and are reduced over pixels once at the end."""
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        ci = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        co = tl.program_id(1) * 2 * BLOCK_C + tl.arange(0, 2 * BLOCK_C)
        cmask = ci < CI
        comask = co < 2 * CI
        a00 = tl.zeros((BLOCK_P, 2 * BLOCK_C), dtype=tl.float32)
        a01 = tl.zeros((BLOCK_P, 2 * BLOCK_C), dtype=tl.float32)
        a02 = tl.zeros((BLOCK_P, 2 * BLOCK_C), dtype=tl.float32)
        a10 = tl.zeros((BLOCK_P, 2 * BLOCK_C), dtype=tl.float32)
        a11 = tl.zeros((BLOCK_P, 2 * BLOCK_C), dtype=tl.float32)
        a12 = tl.zeros((BLOCK_P, 2 * BLOCK_C), dtype=tl.float32)
        a20 = tl.zeros((BLOCK_P, 2 * BLOCK_C), dtype=tl.float32)
        a21 = tl.zeros((BLOCK_P, 2 * BLOCK_C), dtype=tl.float32)
        a22 = tl.zeros((BLOCK_P, 2 * BLOCK_C), dtype=tl.float32)
        gb = tl.zeros((BLOCK_P, 2 * BLOCK_C), dtype=tl.float32)
        for tile in range(pid, num_tiles, nprog):
            p = tile * BLOCK_P + tl.arange(0, BLOCK_P)  # output pixels, flattened over (B, OH, OW)
            pmask = p < P
            ow = p % OW
            oh = (p // OW) % OH
            b = p // (OW * OH)
            g = tl.load(GO + p[:, None].to(tl.int64) * (2 * CI) + co[None, :], mask=pmask[:, None] & comask[None, :],
                        other=0.0)
            gb += g
            a00 += _tap_product(X, g, b, oh, ow, pmask, ci, cmask, H, Wd, CI, 0, 0)
            a01 += _tap_product(X, g, b, oh, ow, pmask, ci, cmask, H, Wd, CI, 0, 1)
            a02 += _tap_product(X, g, b, oh, ow, pmask, ci, cmask, H, Wd, CI, 0, 2)
            a10 += _tap_product(X, g, b, oh, ow, pmask, ci, cmask, H, Wd, CI, 1, 0)
            a11 += _tap_product(X, g, b, oh, ow, pmask, ci, cmask, H, Wd, CI, 1, 1)
            a12 += _tap_product(X, g, b, oh, ow, pmask, ci, cmask, H, Wd, CI, 1, 2)
            a20 += _tap_product(X, g, b, oh, ow, pmask, ci, cmask, H, Wd, CI, 2, 0)
            a21 += _tap_product(X, g, b, oh, ow, pmask, ci, cmask, H, Wd, CI, 2, 1)
            a22 += _tap_product(X, g, b, oh, ow, pmask, ci, cmask, H, Wd, CI, 2, 2)
        out = DWP + pid * 9 * (2 * CI) + co
        tl.store(out + 0 * (2 * CI), tl.sum(a00, axis=0), mask=comask)
        tl.store(out + 1 * (2 * CI), tl.sum(a01, axis=0), mask=comask)
        tl.store(out + 2 * (2 * CI), tl.sum(a02, axis=0), mask=comask)
        tl.store(out + 3 * (2 * CI), tl.sum(a10, axis=0), mask=comask)
        tl.store(out + 4 * (2 * CI), tl.sum(a11, axis=0), mask=comask)
        tl.store(out + 5 * (2 * CI), tl.sum(a12, axis=0), mask=comask)
        tl.store(out + 6 * (2 * CI), tl.sum(a20, axis=0), mask=comask)
        tl.store(out + 7 * (2 * CI), tl.sum(a21, axis=0), mask=comask)
        tl.store(out + 8 * (2 * CI), tl.sum(a22, axis=0), mask=comask)
        tl.store(DBP + pid * (2 * CI) + co, tl.sum(gb, axis=0), mask=comask)


def _input_grad(g: torch.Tensor, weight: torch.Tensor, H: int, Wd: int) -> torch.Tensor:
    """d x (B, C_in, H, W), channels-last memory, of a C_out = 2 C_in pool for its output's gradient ``g``
    (channels-last)."""
    B, CO, OH, OW = g.shape
    CI = CO // 2
    dx = torch.empty((B, H, Wd, CI), device=g.device, dtype=torch.float32)  # NHWC: the previous stage's tokens
    P = B * H * Wd
    # 32 x 32 tiles: 113 registers a thread and no spills when compiled for sm_90 (64-pixel or 64-channel tiles
    # spilled)
    block_c = min(32, max(16, next_power_of_2(CI)))
    block_p = 32
    _pool_bwd_input[(cdiv(P, block_p), cdiv(CI, block_c))](
        g, weight, dx, P, H, Wd, OH, OW, CI, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)
    return dx.permute(0, 3, 1, 2)


def _param_grads(x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d weight (C_out, 1, 3, 3), d bias (C_out,)) of a C_out = 2 C_in pool, from its input ``x`` and its output's
    gradient ``g`` (both channels-last)."""
    B, CO, OH, OW = g.shape
    _, CI, H, Wd = x.shape
    P = B * OH * OW
    block_c = min(32, max(16, next_power_of_2(CI)))  # nine (8, 64) accumulators: 109 registers on sm_90, no spills
    block_p = 8
    ctiles, num_tiles = cdiv(CI, block_c), cdiv(P, block_p)
    programs = min(num_tiles, max(1, 4 * _ln._sm_count(g.device) // ctiles))
    dwp = torch.empty((programs, 9, CO), device=g.device, dtype=torch.float32)  # every element written
    dbp = torch.empty((programs, CO), device=g.device, dtype=torch.float32)
    _pool_bwd_params[(programs, ctiles)](
        x, g, dwp, dbp, P, H, Wd, OH, OW, CI, num_tiles, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)
    dw = dwp.sum(0).t().reshape(CO, 1, 3, 3)  # (taps, C_out) -> (C_out, 1, 3, 3)
    return dw, dbp.sum(0)


class _DepthwisePool(torch.autograd.Function):
    """The pool with C_out = 2 C_in on channels-last float32 maps, forward and backward on the Triton kernels."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return _pool_forward(x, weight, bias)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = g.contiguous(memory_format=torch.channels_last)  # a no-op for the next stage's tokens
        dx = _input_grad(g, weight, x.shape[2], x.shape[3]) if ctx.needs_input_grad[0] else None
        dw = db = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dw, db = _param_grads(x, g)
        return dx, dw, db
