"""The parameter gradients of a fused residual sublayer, finished in one launch at the end of its backward.

Why: the backward of ``c1 * x + c2 * s * proj(f(lin(LN(x))))`` (``fused.py``) leaves its parameter gradients
unfinished: the LayerNorm backward's per-program column sums (d ln weight, d ln bias, d c1, d proj bias), the two
weight-gradient GEMMs' outputs in the compute dtype (the ``lin`` one with its bias gradient as an extra column), and
d c2. Finishing them took six small launches a sublayer (two reductions of the LayerNorm's sums, the projection's
finishing kernel and the reduction of its d c2 partials, two casts of the ``lin`` weight and bias gradients), each
~3 us at SReT-T's sizes: 360 of the ~1,600 launches of a training step (docs/perf_notes.md, change 48). Here one
launch does all of it.

The scalars d c1 and d c2 are sums over the whole launch. Each program writes its partials, and the program that
finishes last (an atomic counter tells it) adds them up in program order: deterministic, no second launch.
"""

from __future__ import annotations

from typing import Optional

import torch

from sret.models import layernorm as _ln
from sret.models.kernel_launch import cdiv, launchable, next_power_of_2

triton = _ln.triton
if triton is not None:
    import triton.language as tl

    @triton.jit
    def _finish_sublayer_bwd(PART, P, C, GW, GW_SR, N_IN, W, B, C2, DWB, DWB_SR, N_LIN, DLW, DLB, DC1, DW, DB, DC2,
                             DWL, DBL, DC_PART, COUNTER, PROGS_A, PROGS_B, A_LW, A_LB, A_C1, A_W, A_B, A_C2, A_WL,
                             A_BL, HAS_ADD: tl.constexpr, BLOCK_A: tl.constexpr, CHUNK_P: tl.constexpr,
                             BLOCK: tl.constexpr, BLOCK_R: tl.constexpr):
        """Three kinds of program, by program id, then the last one to finish sums the scalars.

        - LayerNorm columns (PROGS_A of them, BLOCK_A columns each): PART (4, C, P) holds per-program column sums of
          d ln weight, d ln bias, g * x and g * s; their totals give DLW, DLB, d c1's partial and the projection's
          bias gradient DB = c2 * sum(g * s), with ``<B, sum(g * s)>`` as d c2's partial.
        - The projection's weight (PROGS_B programs of BLOCK elements over C x N_IN): DW = c2 * GW (GW (C, >= N_IN)
          as the GEMM wrote it, row stride GW_SR), with ``<W, GW>`` as d c2's partial.
        - The ``lin`` layer (the rest, over N_LIN x C then N_LIN): DWL = DWB[:, :C] and DBL = DWB[:, C] in DWL's dtype
          (DWB (>= N_LIN, > C), the weight-gradient GEMM against a LayerNorm output with a ones column).

        With HAS_ADD every output also gets the matching A_* tensor added (float32): the gradients a later
        application of the same shared parameters handed over (``shared_weights.hand_over``).
        """
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        c2 = tl.load(C2).to(tl.float32)
        part1 = c2 * 0.0  # this program's share of d c1 (a float32 scalar, as the branches assign)
        part2 = c2 * 0.0  # and of d c2
        if pid < PROGS_A:
            cols = pid * BLOCK_A + tl.arange(0, BLOCK_A)
            cmask = cols < C
            s0 = tl.zeros((BLOCK_A, CHUNK_P), dtype=tl.float32)
            s1 = tl.zeros((BLOCK_A, CHUNK_P), dtype=tl.float32)
            s2 = tl.zeros((BLOCK_A, CHUNK_P), dtype=tl.float32)
            s3 = tl.zeros((BLOCK_A, CHUNK_P), dtype=tl.float32)
            for p0 in range(0, P, CHUNK_P):
                ps = p0 + tl.arange(0, CHUNK_P)
                mask = cmask[:, None] & (ps < P)[None, :]
                offs = cols[:, None] * P + ps[None, :]  # PART[k] is (C, P): row k's block starts at k * C * P
                s0 += tl.load(PART + offs, mask=mask, other=0.0)
                s1 += tl.load(PART + C * P + offs, mask=mask, other=0.0)
                s2 += tl.load(PART + 2 * C * P + offs, mask=mask, other=0.0)
                s3 += tl.load(PART + 3 * C * P + offs, mask=mask, other=0.0)
            gsum = tl.sum(s3, axis=1)  # (BLOCK_A,) the column sums of g * s: the projection's bias gradient / c2
            dlw = tl.sum(s0, axis=1)
            dlb = tl.sum(s1, axis=1)
            db = gsum * c2
            if HAS_ADD:
                dlw += tl.load(A_LW + cols, mask=cmask, other=0.0).to(tl.float32)
                dlb += tl.load(A_LB + cols, mask=cmask, other=0.0).to(tl.float32)
                db += tl.load(A_B + cols, mask=cmask, other=0.0).to(tl.float32)
            tl.store(DLW + cols, dlw.to(DLW.dtype.element_ty), mask=cmask)
            tl.store(DLB + cols, dlb.to(DLB.dtype.element_ty), mask=cmask)
            tl.store(DB + cols, db.to(DB.dtype.element_ty), mask=cmask)
            b = tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)
            part1 = tl.sum(tl.sum(s2, axis=1), axis=0)
            part2 = tl.sum(gsum * b, axis=0)
        elif pid < PROGS_A + PROGS_B:
            offs = (pid - PROGS_A) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < C * N_IN
            r = offs // N_IN
            gw = tl.load(GW + r.to(tl.int64) * GW_SR + (offs - r * N_IN), mask=mask, other=0.0).to(tl.float32)
            w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
            dw = gw * c2
            if HAS_ADD:
                dw += tl.load(A_W + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(DW + offs, dw.to(DW.dtype.element_ty), mask=mask)
            part2 = tl.sum(gw * w, axis=0)
        else:
            offs = (pid - PROGS_A - PROGS_B) * BLOCK + tl.arange(0, BLOCK)
            n_w = N_LIN * C
            wmask = offs < n_w
            r = offs // C
            dw = tl.load(DWB + r.to(tl.int64) * DWB_SR + (offs - r * C), mask=wmask, other=0.0).to(tl.float32)
            if HAS_ADD:
                dw += tl.load(A_WL + offs, mask=wmask, other=0.0).to(tl.float32)
            tl.store(DWL + offs, dw.to(DWL.dtype.element_ty), mask=wmask)
            bo = offs - n_w
            bmask = (bo >= 0) & (bo < N_LIN)
            db = tl.load(DWB + bo.to(tl.int64) * DWB_SR + C, mask=bmask, other=0.0).to(tl.float32)
            if HAS_ADD:
                db += tl.load(A_BL + bo, mask=bmask, other=0.0).to(tl.float32)
            tl.store(DBL + bo, db.to(DBL.dtype.element_ty), mask=bmask)
        tl.store(DC_PART + pid, part1)
        tl.store(DC_PART + nprog + pid, part2)
        tl.debug_barrier()  # every thread's stores issued before the counter moves (acq_rel: and made visible)
        done = tl.atomic_add(COUNTER, 1, sem="acq_rel")
        if done == nprog - 1:  # the last program: every partial is in; sum them in program order
            idx = tl.arange(0, BLOCK_R)
            rmask = idx < nprog
            d1 = tl.load(DC_PART + idx, mask=rmask, other=0.0, volatile=True)
            d2 = tl.load(DC_PART + nprog + idx, mask=rmask, other=0.0, volatile=True)
            dc1 = tl.sum(d1, axis=0)
            dc2 = tl.sum(d2, axis=0)
            if HAS_ADD:
                dc1 += tl.load(A_C1).to(tl.float32)
                dc2 += tl.load(A_C2).to(tl.float32)
            tl.store(DC1, dc1.to(DC1.dtype.element_ty))
            tl.store(DC2, dc2.to(DC2.dtype.element_ty))
            tl.store(COUNTER, 0)  # left as found


def applies(x2: torch.Tensor, gw: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dwb: torch.Tensor) -> bool:
    """Whether :func:`finish_sublayer` takes the sublayer of LayerNorm input ``x2`` (M, C): the kernels on and the
    layouts it reads (see there)."""
    C = x2.shape[-1]
    return (_ln.fused_kernels_enabled(x2) and gw.dim() == 2 and gw.shape[0] >= C == w.shape[0]
            and gw.shape[1] >= w.shape[1] and gw.stride(1) == 1 and w.is_contiguous() and b.is_contiguous()
            and dwb.dim() == 2 and dwb.shape[1] > C and dwb.stride(1) == 1)


# the order of :func:`finish_sublayer`'s results (and of its ``add``)
RESULTS = ("ln_weight", "ln_bias", "c1", "weight", "bias", "c2", "lin_weight", "lin_bias")


def finish_sublayer(partial: torch.Tensor, counter: torch.Tensor, gw: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                    c1: torch.Tensor, c2: torch.Tensor, dwb: torch.Tensor, lin_dtype: torch.dtype,
                    ln_dtype: torch.dtype, lin_rows: Optional[int] = None, add: Optional[tuple] = None):
    """All parameter gradients of a fused sublayer's backward but its ``lin`` layer's input, in one launch.

    Args:
        partial: (4, C, P) float32, the LayerNorm backward's per-program column sums of d ln weight, d ln bias,
            ``g * x`` and ``g * s`` (``layernorm.ln_backward_partials`` with the residual and the gradient sum).
        counter: one int32, zero (that launch zeroes it), where the programs count themselves; left zero.
        gw: (>= C, >= n_in) in the compute dtype, ``g_s^T a``: the projection's weight gradient before c2 (its
            first C rows and n_in columns count, so a zero-padded gradient or activation needs no slicing copy).
        w, b: the projection's weight (C, n_in) and bias (C,).
        c1, c2: the residual's coefficients, one element each.
        dwb: (>= n_lin, > C) in the compute dtype, ``dz^T [LN(x), 1, 0...]``: the ``lin`` layer's weight gradient in
            its first C columns and its bias gradient in column C (``layernorm.ln_forward``'s ones column).
        lin_dtype, ln_dtype: the ``lin`` layer's and the LayerNorm's parameter dtypes.
        lin_rows: n_lin, the ``lin`` layer's outputs (dwb's first rows; more rows are zero padding); all of dwb's
            rows if None.
        add: gradients to add to the results, in the order of :data:`RESULTS` and their shapes, or None.

    Returns:
        The gradients named by :data:`RESULTS`, each rounded as the PyTorch ops of ``fused.py``'s other path round
        it (float32 sums, one multiply by c2, then the add).
    """
    n, C, P = partial.shape
    if n != 4 or not partial.is_contiguous() or partial.dtype != torch.float32:
        raise ValueError(f"finish_sublayer: partial must be contiguous float32 (4, C, P), got {tuple(partial.shape)}")
    n_in, n_lin = w.shape[1], lin_rows or dwb.shape[0]
    dev = partial.device
    # LayerNorm columns: 4 a program, each program's (4, 4, P) partials in one load where P <= 512 (the LayerNorm
    # backward runs 2 programs an SM): 16 columns and 64-wide chunks made that part a chain of dependent loads, ~9 us
    # against ~3 us for the rest (run 82)
    block_a = 4
    chunk_p = min(512, next_power_of_2(P))
    block = 2048
    progs_a = cdiv(C, block_a)
    progs_b = cdiv(C * n_in, block)
    programs = progs_a + progs_b + cdiv(n_lin * C + n_lin, block)
    out = (torch.empty(C, device=dev, dtype=ln_dtype), torch.empty(C, device=dev, dtype=ln_dtype),
           torch.empty(1, device=dev, dtype=c1.dtype), torch.empty_like(w), torch.empty_like(b),
           torch.empty(1, device=dev, dtype=c2.dtype), torch.empty((n_lin, C), device=dev, dtype=lin_dtype),
           torch.empty(n_lin, device=dev, dtype=lin_dtype))
    if add is not None:
        bad = [name for name, a, o in zip(RESULTS, add, out) if a.shape != o.shape or not a.is_contiguous()]
        if len(add) != len(out) or bad:
            raise ValueError(f"finish_sublayer: add must match the results' shapes, contiguous; not: {bad}")
    dlw, dlb, dc1, dw, db, dc2, dwl, dbl = out
    dc_part = torch.empty(2 * programs, device=dev, dtype=torch.float32)
    launchable(_finish_sublayer_bwd)[(programs,)](
        partial, P, C, gw, gw.stride(0), n_in, w, b, c2, dwb, dwb.stride(0), n_lin, dlw, dlb, dc1, dw, db, dc2, dwl,
        dbl, dc_part, counter, progs_a, progs_b, *(add if add is not None else (partial,) * 8), HAS_ADD=add is not None,
        BLOCK_A=block_a, CHUNK_P=chunk_p, BLOCK=block, BLOCK_R=next_power_of_2(programs), num_warps=4)
    return out
