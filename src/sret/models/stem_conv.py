"""The stem's first conv (3x3, stride 2, padding 1, a few input channels) in training as Triton implicit GEMMs that
read the NCHW images as they come.

Why: with 3-channel images the first conv is a GEMM whose reduction is only C_in * 9 = 27 long, over the largest maps
of the model (B x 112 x 112 outputs at 224 px). cuDNN needed the images cast to the compute dtype, made NHWC and
padded to 8 channels first (one pass, ``image_layout.py``), then took 0.48 ms forward and 0.27 ms for the weight
gradient a step at batch 256 on an H100: 0.87 ms of SReT-T's training step with the padding pass, for ~0.4 GB of
traffic (docs/perf_notes.md, change 47). Here the forward gathers each output pixel's 27 inputs from the float32
NCHW images, rounds them to the compute dtype (as autocast's conv does) and multiplies by the (27 -> 32, C_out)
weight in one dot; the weight gradient sums ``dy^T @ patches`` over pixel tiles into per-program partials that are
summed in a fixed order afterwards (deterministic, no atomics). The images never get a gradient here (the caller
checks that they do not need one).

The conv's bias is not applied: in training the stem's BatchNorm cancels it (``ConvStem._conv_bn_relu``).
:func:`first_conv` returns None where the kernels do not apply (no Triton, not CUDA and not the interpreter, more
than 3 input channels, more than 128 output channels, the compute dtype not 16-bit, the images requiring grad).

Inference (:func:`first_conv_folded`) runs the same forward kernel on the conv with its BatchNorm folded in, plus the
bias and the ReLU: cuDNN's generic NHWC kernel for 3-channel inputs took 0.51 ms of SReT-T's 5.7 ms inference step
and 1.48 ms of SReT-S's (63 output channels) at batch 256 on an H100, after a 62-123 us pass that cast the images
(docs/perf_notes.md, change 53). Checked against ``F.conv2d`` in float64 through Triton's interpreter
(``tests/models/test_stem.py``).
"""

from __future__ import annotations

from typing import Optional

import torch

from sret.models import layernorm as _ln
from sret.models.kernel_launch import cdiv, next_power_of_2

triton = _ln.triton
_KP = 32  # the reduction (C_in * 9 <= 27) padded to the dot's minimum

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _patches(X, p, k, M, C, H, Wd, OH, OW):
        """The (BLOCK_M, KP) im2col rows of output pixels ``p`` (flattened over (B, OH, OW)) from NCHW ``X``: column
        k is input channel k // 9, tap (k % 9 // 3, k % 3); zero past C * 9 and over the padding."""
        ow = p % OW
        oh = (p // OW) % OH
        b = p // (OW * OH)
        c = k // 9
        kh = (k % 9) // 3
        kw = k % 3
        ih = oh[:, None] * 2 - 1 + kh[None, :]
        iw = ow[:, None] * 2 - 1 + kw[None, :]
        ok = (p < M)[:, None] & (k < C * 9)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < Wd)
        offs = ((b.to(tl.int64)[:, None] * C + c[None, :]) * H + ih) * Wd + iw
        return tl.load(X + offs, mask=ok, other=0.0)

    @triton.jit
    def _first_conv_fwd(X, WP, BIAS, Y, M, C, H, Wd, OH, OW, CO, KP: tl.constexpr, COP: tl.constexpr,
                        BLOCK_M: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr):
        """y (BLOCK_M output pixels, C_out) = patches @ WP (+ BIAS, then ReLU, with those flags), written NHWC in
        Y's dtype; WP (KP, COP) zero-padded."""
        p = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        k = tl.arange(0, KP)
        co = tl.arange(0, COP)
        a = _patches(X, p, k, M, C, H, Wd, OH, OW).to(WP.dtype.element_ty)  # rounded as autocast rounds the input
        w = tl.load(WP + k[:, None] * COP + co[None, :])
        y = tl.dot(a, w)  # float32 accumulation
        if HAS_BIAS:  # in the compute dtype, added to the float32 sums, as cuDNN's conv-bias-ReLU adds it
            y += tl.load(BIAS + co, mask=co < CO, other=0.0).to(tl.float32)[None, :]
        if RELU:
            y = tl.maximum(y, 0.0)
        tl.store(Y + p[:, None].to(tl.int64) * CO + co[None, :], y.to(Y.dtype.element_ty),
                 mask=(p < M)[:, None] & (co < CO)[None, :])

    @triton.jit
    def _first_conv_wgrad(X, GY, DWP, M, C, H, Wd, OH, OW, CO, num_tiles, KP: tl.constexpr, COP: tl.constexpr,
                          BLOCK_M: tl.constexpr):
        """Program i sums ``dy^T @ patches`` over pixel tiles i, i + n, ... into DWP[i] (COP, KP), float32."""
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        k = tl.arange(0, KP)
        co = tl.arange(0, COP)
        acc = tl.zeros((COP, KP), dtype=tl.float32)
        for tile in range(pid, num_tiles, nprog):
            p = tile * BLOCK_M + tl.arange(0, BLOCK_M)
            a = _patches(X, p, k, M, C, H, Wd, OH, OW).to(GY.dtype.element_ty)  # (BLOCK_M, KP)
            g = tl.load(GY + p[:, None].to(tl.int64) * CO + co[None, :], mask=(p < M)[:, None] & (co < CO)[None, :],
                        other=0.0)  # (BLOCK_M, COP)
            acc += tl.dot(tl.trans(g), a)
        tl.store(DWP + pid * COP * KP + co[:, None] * KP + k[None, :], acc)


def _prepared_weight(weight: torch.Tensor, dtype: torch.dtype, cop: int) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> (KP, COP) in ``dtype``: row c * 9 + tap, zero rows past C_in * 9, zero columns past
    C_out."""
    co, c = weight.shape[:2]
    wp = torch.zeros((_KP, cop), device=weight.device, dtype=dtype)
    wp[:c * 9, :co] = weight.detach().reshape(co, c * 9).t()
    return wp


def _first_conv_forward(x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype,
                        bias: Optional[torch.Tensor] = None, relu: bool = False) -> torch.Tensor:
    B, C, H, Wd = x.shape
    CO = weight.shape[0]
    OH, OW = (H + 1) // 2, (Wd + 1) // 2
    cop = max(16, next_power_of_2(CO))
    y = torch.empty((B, OH, OW, CO), device=x.device, dtype=dtype)  # NHWC memory
    M = B * OH * OW
    block_m = 64  # 95 registers a thread compiled for sm_90 (128 rows: 197)
    wp = _prepared_weight(weight, dtype, cop)
    _first_conv_fwd[(cdiv(M, block_m),)](x, wp, bias.to(dtype) if bias is not None else wp, y, M, C, H, Wd, OH, OW,
                                         CO, KP=_KP, COP=cop, BLOCK_M=block_m, HAS_BIAS=bias is not None, RELU=relu,
                                         num_warps=4)
    return y.permute(0, 3, 1, 2)  # (B, C_out, OH, OW) view, channels-last strides


def _first_conv_weight_grad(x: torch.Tensor, gy: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    B, C, H, Wd = x.shape
    _, CO, OH, OW = gy.shape
    cop = max(16, next_power_of_2(CO))
    M = B * OH * OW
    block_m = 64  # 155 registers a thread compiled for sm_90, no spills (128 rows spilled)
    num_tiles = cdiv(M, block_m)
    programs = min(num_tiles, 4 * _ln._sm_count(x.device))
    partial = torch.empty((programs, cop, _KP), device=x.device, dtype=torch.float32)
    _first_conv_wgrad[(programs,)](x, gy, partial, M, C, H, Wd, OH, OW, CO, num_tiles, KP=_KP, COP=cop,
                                   BLOCK_M=block_m, num_warps=4)
    dw = partial.sum(0)[:CO, :C * 9]  # (C_out, C_in * 9)
    return dw.reshape(CO, C, 3, 3).to(weight.dtype)


class _FirstConv(torch.autograd.Function):
    """The first conv without its bias, differentiable in the weight only (the images need no gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return _first_conv_forward(x, weight, dtype)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, weight = ctx.saved_tensors
        dw = None
        if ctx.needs_input_grad[1]:
            dw = _first_conv_weight_grad(x, gy.contiguous(memory_format=torch.channels_last), weight)
        return None, dw, None


def _applies(x: torch.Tensor, conv: torch.nn.Conv2d, out_channels: int, dtype: torch.dtype) -> bool:
    return (_ln.fused_kernels_enabled(x) and x.dim() == 4 and x.shape[1] * 9 <= _KP and conv.in_channels == x.shape[1]
            and out_channels <= 128 and conv.groups == 1 and conv.kernel_size == (3, 3) and conv.stride == (2, 2)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and dtype in (torch.bfloat16, torch.float16)
            and x.dtype in (torch.float32, torch.bfloat16, torch.float16) and not x.requires_grad)


def first_conv(x: torch.Tensor, conv: torch.nn.Conv2d, dtype: torch.dtype,
               out_channels: Optional[int] = None) -> Optional[torch.Tensor]:
    """``conv(x)`` without its bias, for NCHW images ``x`` (B, C_in <= 3, H, W) and a 3x3 / stride 2 / padding 1
    ``conv``: (B, C_out, ceil(H/2), ceil(W/2)) in ``dtype`` (bf16 or fp16), channels-last memory. Differentiable in
    the weight. ``out_channels`` (>= C_out) appends zero channels. None where the kernels do not apply."""
    out_channels = out_channels or conv.out_channels
    if not _applies(x, conv, out_channels, dtype) or out_channels < conv.out_channels:
        return None
    x = x.contiguous()
    weight = conv.weight
    if out_channels > conv.out_channels:  # zero weight rows: autograd slices their gradient off
        weight = torch.nn.functional.pad(weight, (0, 0, 0, 0, 0, 0, 0, out_channels - conv.out_channels))
    if torch.is_grad_enabled() and conv.weight.requires_grad:
        return _FirstConv.apply(x, weight, dtype)
    return _first_conv_forward(x, weight, dtype)


def first_conv_folded(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, conv: torch.nn.Conv2d,
                      dtype: torch.dtype) -> Optional[torch.Tensor]:
    """``relu(conv2d(x, weight, bias))`` with ``conv``'s geometry, for inference: ``weight`` (C_out, C_in, 3, 3) and
    ``bias`` (C_out,) are the conv's with its BatchNorm folded in (C_out may exceed the conv's: zero channels), both
    rounded to ``dtype`` as the images are. (B, C_out, ceil(H/2), ceil(W/2)) in ``dtype``, channels-last memory; no
    autograd. None where the kernels do not apply (as :func:`first_conv`)."""
    if not _applies(x, conv, weight.shape[0], dtype) or weight.shape[1] != x.shape[1] or bias.shape != weight.shape[:1]:
        return None
    return _first_conv_forward(x.contiguous(), weight, dtype, bias=bias, relu=True)
