"""The stage-to-stage depthwise pool (3x3, stride 2, padding 1, ``groups = C_in``) on channels-last maps, in one
Triton launch (CUDA inference).

Why: the stages hand over float32 maps whose memory is NHWC (their tokens), and the next stage wants NHWC tokens
again, but cuDNN's grouped NHWC kernels were the slow choice (``DepthwisePool``), so eager mode runs the conv on an
NCHW copy and the next stage copies the NCHW result back into tokens: two copies and a conv per pool. Here each
program reads the 3x3 neighbourhoods of a tile of output pixels straight from the NHWC input (all channels of a
pixel are adjacent) and writes NHWC output, which the next stage takes as tokens without a copy: one pass over the
input and one over the output.

Inference only (no autograd); :func:`depthwise_pool_nhwc` returns None where it does not apply (no Triton, not CUDA
and not the interpreter, not float32, not channels-last, C_out not C_in or 2 C_in). Checked against
``F.conv2d`` through Triton's interpreter in ``tests/test_layernorm.py``.
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
    where the kernel does not apply."""
    B, CI, H, Wd = x.shape
    CO = conv.out_channels
    if (not _ln.fused_kernels_enabled(x) or x.dtype != torch.float32 or CO not in (CI, 2 * CI)
            or not x.is_contiguous(memory_format=torch.channels_last) or conv.groups != CI
            or conv.kernel_size != (3, 3) or conv.stride != (2, 2) or conv.padding != (1, 1) or conv.bias is None
            or conv.weight.dtype != torch.float32):
        return None
    OH, OW = (H + 1) // 2, (Wd + 1) // 2
    out = torch.empty((B, OH, OW, CO), device=x.device, dtype=torch.float32)  # NHWC memory = the next tokens
    P = B * OH * OW
    if CI % 16 or CO > 512:
        block_c = max(16, next_power_of_2(CO))
        block_p = max(1, 4096 // block_c)
        _depthwise_pool_nhwc_by_output[(cdiv(P, block_p),)](
            x, conv.weight, conv.bias, out, P, H, Wd, OH, OW, CI, CO, CO // CI, BLOCK_P=block_p, BLOCK_C=block_c,
            num_warps=4)
        return out.permute(0, 3, 1, 2)
    block_c = min(64, next_power_of_2(CI))
    block_p = 64
    _depthwise_pool_nhwc[(cdiv(P, block_p), cdiv(CI, block_c))](
        x, conv.weight, conv.bias, out, P, H, Wd, OH, OW, CI, BLOCK_P=block_p, BLOCK_C=block_c, DOUBLE=CO == 2 * CI,
        num_warps=4)
    return out.permute(0, 3, 1, 2)  # (B, C_out, OH, OW) view, channels-last strides
