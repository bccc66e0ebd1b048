"""Images into the training stem's input layout in one pass: NCHW float32 -> NHWC in the compute dtype, channels
zero-padded to 8.

Why: with 3-channel (6-byte bf16) pixels cuDNN runs the first conv's training kernels on a generic NHWC path;
padded to 8 channels (16-byte pixels) the training step measured 0.6-0.9 % faster (docs/perf_notes.md, change 20).
Made with PyTorch ops the padding is a zero fill plus a strided copy; this Triton kernel reads each image plane once
and writes each padded pixel as one 16-byte row, so the cast, the layout change and the padding are a single pass
(SReT-T training step -0.12 ms, run 19). Inference does not pad: there cuDNN's first conv took as long over 8
channels as over 3, so any padding pass is pure cost.

:func:`padded_nhwc` returns None where the kernel does not apply (no Triton, not CUDA and not the interpreter, or
more than 8 channels); callers then use the PyTorch ops. Checked against them through Triton's interpreter in
``tests/test_layernorm.py``.
"""

from __future__ import annotations

from typing import Optional

import torch

from sret.models import layernorm as _ln
from sret.models.kernel_launch import cdiv

triton = _ln.triton
if triton is not None:
    import triton.language as tl

    @triton.jit
    def _nchw_to_nhwc_padded(X, OUT, C, HW, CP: tl.constexpr, BLOCK_P: tl.constexpr):
        b = tl.program_id(1)
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # pixels of image b
        c = tl.arange(0, CP)
        pmask = p < HW
        # (BLOCK_P, CP): channel c of pixel p is X[b, c, p]; zero for the padding channels c >= C
        v = tl.load(X + b.to(tl.int64) * C * HW + c[None, :] * HW + p[:, None], mask=pmask[:, None] & (c < C)[None, :],
                    other=0.0)
        tl.store(OUT + (b.to(tl.int64) * HW + p[:, None]) * CP + c[None, :], v.to(OUT.dtype.element_ty),
                 mask=pmask[:, None])


def padded_nhwc(x: torch.Tensor, channels: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """``x`` (B, C, H, W) as ``dtype`` with ``channels - C`` zero channels appended, channels-last: a (B, channels,
    H, W) view of (B, H, W, channels) memory. ``channels`` must be a power of two up to 8; None where the kernel does
    not apply."""
    B, C, H, W = x.shape
    if not _ln.fused_kernels_enabled(x) or channels > 8 or channels < C or channels & (channels - 1):
        return None
    x = x.contiguous()
    out = torch.empty((B, H, W, channels), device=x.device, dtype=dtype)  # NHWC memory
    block_p = 1024
    _nchw_to_nhwc_padded[(cdiv(H * W, block_p), B)](x, out, C, H * W, CP=channels, BLOCK_P=block_p,
                                                    num_warps=4)
    return out.permute(0, 3, 1, 2)  # (B, channels, H, W) view, channels-last strides
