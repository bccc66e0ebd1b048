"""A whole attention sublayer of short groups in one Triton program per group (inference).

``out = c1 * x + c2 * proj(attend(qkv(LN(x))))`` for a group of at most a few dozen tokens: the program loads the
group's rows of x once, normalises them, makes each head's q/k/v with three small dots against the qkv weight,
attends within the group, accumulates the projection head by head and writes the residual's output. Nothing but x
and the output crosses device memory. Run as separate launches (LayerNorm, qkv GEMM, attention, proj GEMM,
residual) the same sublayer moves ~36 bytes per element of x (float32 x) instead of 8.

Why here and not everywhere: only short groups fit a program. This is what slicing makes possible. SReT-T's first
application of each shared block attends within 8 groups of 98 tokens (stage 1) or 4 of 49 (stage 2); the same
sublayer over all 784 or 196 tokens does not fit, so in ``sret_t_wo_slice`` it stays on the separate launches.

Rounding follows the separate launches: LN output, q/k/v, probabilities and the attention output in the compute
dtype (the GEMMs' operands), the projection output rounded as ``addmm`` rounds it, the residual in float32.
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
    def _attention_sublayer_fwd(X, LNW, LNB, WQKV, BQKV, WP, BP, C1, K, OUT, GROUP_N, C, eps, qk_scale,
                                HEADS: tl.constexpr, D: tl.constexpr, HAS_C1: tl.constexpr, FP16: tl.constexpr,
                                BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        """Program ``g``: the group of rows g * GROUP_N ... of X (B*N, C). WQKV (3C, C) is [q | k | v] rows, head h
        at rows h*D ... of each; WP (C, C). Weights and biases are read in their own dtype and rounded to the compute
        dtype (bf16, or fp16 with FP16) here, as the separate path's one-launch cast rounds them."""
        eps = tl.cast(eps, tl.float32)
        qk_scale = tl.cast(qk_scale, tl.float32)
        group = tl.program_id(0).to(tl.int64)
        r = tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_C)
        d = tl.arange(0, D)
        rmask = r < GROUP_N
        cmask = cols < C
        mask = rmask[:, None] & cmask[None, :]
        offs = (group * GROUP_N + r)[:, None] * C + cols[None, :]
        if FP16:
            dt = tl.float16
        else:
            dt = tl.bfloat16
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / C
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
        lw = tl.load(LNW + cols, mask=cmask, other=0.0).to(tl.float32)
        lb = tl.load(LNB + cols, mask=cmask, other=0.0).to(tl.float32)
        xn = (xc * rstd[:, None] * lw[None, :] + lb[None, :]).to(dt)  # (BLOCK_N, BLOCK_C), zero past C
        kvalid = rmask  # keys are the group's rows too
        acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        for h in tl.static_range(HEADS):
            wrow = h * D + d  # this head's rows of the q block of WQKV
            w_t = WQKV + wrow[None, :] * C + cols[:, None]  # (BLOCK_C, D): W_q[h]^T
            wmask = cmask[:, None]
            q = tl.dot(xn, tl.load(w_t, mask=wmask, other=0.0).to(dt))
            q = (q + tl.load(BQKV + wrow).to(dt).to(tl.float32)[None, :]).to(dt)  # (BLOCK_N, D), as addmm's
            k = tl.dot(xn, tl.load(w_t + C * C, mask=wmask, other=0.0).to(dt))
            k = (k + tl.load(BQKV + C + wrow).to(dt).to(tl.float32)[None, :]).to(dt)
            v = tl.dot(xn, tl.load(w_t + 2 * C * C, mask=wmask, other=0.0).to(dt))
            v = (v + tl.load(BQKV + 2 * C + wrow).to(dt).to(tl.float32)[None, :]).to(dt)
            s = tl.dot(q, tl.trans(k)) * qk_scale  # (BLOCK_N, BLOCK_N) float32, log2 units
            s = tl.where(kvalid[None, :], s, float("-inf"))
            m = tl.max(s, axis=1)
            p = tl.exp2(s - m[:, None])
            o = (tl.dot(p.to(dt), v) / tl.sum(p, axis=1)[:, None]).to(dt)  # (BLOCK_N, D), as the kernel stores it
            wp_t = WP + cols[None, :] * C + wrow[:, None]  # (D, BLOCK_C): WP[:, h*D ...]^T
            acc += tl.dot(o, tl.load(wp_t, mask=cmask[None, :], other=0.0).to(dt))
        bp = tl.load(BP + cols, mask=cmask, other=0.0).to(dt).to(tl.float32)
        y = (acc + bp[None, :]).to(dt).to(tl.float32)  # the projection's output, rounded as addmm's
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)  # read again (cache) rather than kept live
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


def attention_sublayer(x: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor, wqkv: torch.Tensor,
                       bqkv: torch.Tensor, wp: torch.Tensor, bp: torch.Tensor, c1: Optional[torch.Tensor],
                       c2: Optional[torch.Tensor], eps: float, dtype: torch.dtype, groups: int, heads: int,
                       attn_scale: float, warps: Optional[int] = None) -> Optional[torch.Tensor]:
    """``c1 * x + c2 * proj(attend(qkv(LN(x))))`` over ``groups`` groups of consecutive tokens of x (B, N, C), in
    one launch; None where it does not apply (the caller runs the separate launches): kernels off or unavailable,
    x not contiguous, a compute dtype other than bf16 / fp16, or a group that does not fit (:func:`fits`).

    ``c1`` None means a plain residual (and ``c2`` None a factor of 1). ``warps`` overrides the launch's warp
    count (sweeps).
    """
    if not (enabled() and _ln.fused_kernels_enabled(x)) or x.dim() != 3 or not x.is_contiguous() \
            or dtype not in (torch.bfloat16, torch.float16):
        return None
    B, N, C = x.shape
    if wqkv.shape != (3 * C, C) or wp.shape != (C, C) or not fits(N, C, groups, heads):
        return None
    n, dim = N // groups, C // heads
    block_n, block_c = _block(n), _block(C)
    k = c2 if c2 is not None else x.new_ones(1, dtype=torch.float32)
    out = torch.empty((B, N, C), device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
    launchable(_attention_sublayer_fwd)[(B * groups,)](
        x, ln_w, ln_b, wqkv.contiguous(), bqkv, wp.contiguous(), bp, c1 if c1 is not None else k, k, out, n, C, eps,
        attn_scale * math.log2(math.e), HEADS=heads, D=dim, HAS_C1=c1 is not None, FP16=dtype == torch.float16,
        BLOCK_N=block_n, BLOCK_C=block_c, num_warps=warps or (8 if block_n * block_c > 4096 else 4))
    return out
