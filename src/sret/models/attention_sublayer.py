"""Attention, projection and residual of short groups in one Triton program per group (inference).

``out = c1 * x + c2 * proj(attend(qkv))`` for groups of at most 128 tokens, given the qkv GEMM's output: the program
attends within its group head by head, multiplies each head's output by its columns of the projection weight straight
away (accumulating the projection in registers), adds the bias and writes the residual's output. The attention
output and the projection's output never cross device memory, and two launches (the proj GEMM and the residual
kernel) go. Run separately, these steps move ~22 bytes per element of x (bf16 q/k/v in, attention output out and in,
projection output out and in, float32 x in and out); here 14.

Why here and not everywhere: a program holds its rows' whole projection accumulator and one head's scores for all of
its group's keys, so only short groups fit. This is what slicing makes possible: SReT-T's first application of each
shared block attends within 8 groups of 98 tokens (stage 1) or 4 of 49 (stage 2); the same sublayer over all 784 or
196 tokens stays on the separate launches (``sret_t_wo_slice``).

Rounding follows the separate launches: probabilities and the attention output in the compute dtype (the GEMMs'
operands), the projection output rounded as ``addmm`` rounds it, the residual in float32.

Why not the qkv GEMM too (LayerNorm and all): a version that also made q/k/v in the program (dots whose second operand
came from registers) computed wrong values and then hit an illegal memory access on the H100 with Triton 3.6 at
SReT-T's shapes (128-row tiles), while it matched float64 at 16-row tiles and in the interpreter (run 64,
docs/perf_notes.md). Here every dot's second operand is loaded from memory, as in the attention and MLP kernels.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch

from sret.models import layernorm as _ln
from sret.models.kernel_launch import launchable

triton = _ln.triton

# Largest (group rows padded to a power of two) x (padded channels) a program holds: the score tile of one head and
# the projection accumulator live in registers together. SReT-T: 128 x 64 (stage 1), 64 x 128 (stage 2).
MAX_TILE = 128 * 64
MIN_DIM = 16  # tl.dot needs every dimension >= 16

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _attention_proj_residual_fwd(QKV, X, WP, BP, C1, K, OUT, GROUP_N, C, qk_scale, HEADS: tl.constexpr,
                                     D: tl.constexpr, HAS_C1: tl.constexpr, BLOCK_N: tl.constexpr,
                                     BLOCK_C: tl.constexpr):
        """Program ``g``: the group of rows g * GROUP_N ... of QKV (B*N, 3C; [q | k | v], head h at columns h*D ...
        of each) and of X / OUT (B*N, C). WP (C, C) and BP (C,) are in the compute dtype (QKV's)."""
        qk_scale = tl.cast(qk_scale, tl.float32)  # fp64 where Inductor launches it
        group = tl.program_id(0).to(tl.int64)
        r = tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_C)
        d = tl.arange(0, D)
        rmask = r < GROUP_N
        cmask = cols < C
        tok = group * GROUP_N + r  # (BLOCK_N,) rows of QKV, X and OUT
        acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        for h in tl.static_range(HEADS):
            base = QKV + tok[:, None] * (3 * C) + h * D + d[None, :]  # (BLOCK_N, D): this head's q
            q = tl.load(base, mask=rmask[:, None], other=0.0)
            k = tl.load(base + C, mask=rmask[:, None], other=0.0)
            v = tl.load(base + 2 * C, mask=rmask[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * qk_scale  # (BLOCK_N, BLOCK_N) float32, log2 units
            s = tl.where(rmask[None, :], s, float("-inf"))  # keys past the group
            m = tl.max(s, axis=1)
            p = tl.exp2(s - m[:, None])
            o = (tl.dot(p.to(q.dtype), v) / tl.sum(p, axis=1)[:, None]).to(q.dtype)  # as the attention kernel stores
            wp = tl.load(WP + cols[:, None] * C + h * D + d[None, :], mask=cmask[:, None], other=0.0)  # (BLOCK_C, D)
            acc += tl.dot(o, tl.trans(wp))
        bp = tl.load(BP + cols, mask=cmask, other=0.0).to(tl.float32)
        y = (acc + bp[None, :]).to(QKV.dtype.element_ty).to(tl.float32)  # the projection's output, as addmm rounds
        mask = rmask[:, None] & cmask[None, :]
        offs = tok[:, None] * C + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_C1:
            x = x * tl.load(C1).to(tl.float32)
        out = x + tl.load(K).to(tl.float32) * y
        tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)


def enabled() -> bool:
    """``SRET_ATTN_SUBLAYER=0`` keeps every attention sublayer on the separate launches (A/B runs, checks)."""
    return os.environ.get("SRET_ATTN_SUBLAYER", "1") != "0"


def _block(size: int) -> int:
    """``size`` padded to a power of two of at least :data:`MIN_DIM`."""
    return max(MIN_DIM, 1 << (size - 1).bit_length())


def fits(tokens: int, channels: int, groups: int, heads: int) -> bool:
    """Whether a sublayer of ``groups`` groups over ``tokens`` tokens of ``channels`` channels fits one program
    per group: power-of-two head dims of at least 16, and padded rows x channels within :data:`MAX_TILE`."""
    if groups < 1 or heads < 1 or tokens % groups or channels % heads:
        return False
    dim = channels // heads
    return dim >= MIN_DIM and dim & (dim - 1) == 0 and _block(tokens // groups) * _block(channels) <= MAX_TILE


def attention_proj_residual(qkv: torch.Tensor, x: torch.Tensor, wp: torch.Tensor, bp: torch.Tensor,
                            c1: Optional[torch.Tensor], c2: Optional[torch.Tensor], groups: int, heads: int,
                            attn_scale: float, warps: Optional[int] = None) -> Optional[torch.Tensor]:
    """``c1 * x + c2 * (attend(qkv) @ wp.T + bp)`` over ``groups`` groups of consecutive tokens, in one launch.

    ``qkv`` (B, N, 3C) in the compute dtype (bf16 / fp16), ``wp`` (C, C) and ``bp`` (C,) in that dtype, x (B, N, C)
    the residual stream (float32 or lower); ``c1`` None means a plain residual (and ``c2`` None a factor of 1).
    ``warps`` overrides the warp count (sweeps). Returns the float32 (or wider) output, or None where this does not
    apply and the caller runs the separate launches: kernels off or unavailable, other dtypes, non-contiguous
    inputs, or a group that does not fit (:func:`fits`).
    """
    if not (enabled() and _ln.fused_kernels_enabled(x)) or qkv.dim() != 3 or x.dim() != 3:
        return None
    B, N, C = x.shape
    if (qkv.dtype not in (torch.bfloat16, torch.float16) or qkv.shape != (B, N, 3 * C) or wp.shape != (C, C)
            or wp.dtype != qkv.dtype or bp.dtype != qkv.dtype or not fits(N, C, groups, heads)
            or not (qkv.is_contiguous() and x.is_contiguous() and wp.is_contiguous() and bp.is_contiguous())):
        return None
    block_n, block_c = _block(N // groups), _block(C)
    k = c2 if c2 is not None else x.new_ones(1, dtype=torch.float32)
    out = torch.empty((B, N, C), device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
    launchable(_attention_proj_residual_fwd)[(B * groups,)](
        qkv, x, wp, bp, c1 if c1 is not None else k, k, out, N // groups, C, attn_scale * math.log2(math.e),
        HEADS=heads, D=C // heads, HAS_C1=c1 is not None, BLOCK_N=block_n, BLOCK_C=block_c,
        num_warps=warps or (8 if block_n * block_c > 4096 else 4))
    return out
