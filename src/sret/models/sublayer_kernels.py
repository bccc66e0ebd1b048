"""Triton kernels for the fused sublayers' forward (CUDA, bf16/fp16 autocast): one launch per MLP/NLL sublayer.

Why: even with one autograd node per sublayer (``fused.py``), the forward of an MLP sublayer is ~10 launches
(LayerNorm, weight casts, two GEMMs, GELU, two residual ops), and SReT-T runs 40 of them per forward at C = 64-256:
eager SReT is bound by that launch count, and the separate ops move the (B*N, hidden) activations through memory
three more times than needed. Here one program takes a tile of rows through

    LN -> fc1 (+b1) -> GELU -> fc2 (+b2) -> c1 * x + k * y

with the hidden layer produced and consumed in chunks of ``BLOCK_H`` columns (it never exists in full) and the
rounding points of the autocast path reproduced: LN output, fc1 output, GELU output and fc2 output are each rounded
to the compute dtype, as ``F.linear`` / ``F.gelu`` under autocast round them. The two weight matrices are first
rounded to the compute dtype and zero-padded in one small launch, so the kernel's weight tiles are aligned, unmasked
and go straight into the dots. In training it also writes what the fused backward keeps (the fc1 output ``h``, at
the padded width, and the LN statistics). Wide sublayers run LayerNorm + two GEMM kernels with fused epilogues
instead (:data:`GEMM_TILES`: SReT-T's last MLP), or LayerNorm + two cuBLAS GEMMs over 16-byte aligned rows
(:data:`CUBLAS_MLP`: SReT-S's stages 1 and 2).

``mlp_residual_forward`` returns None where it does not apply (no Triton, not CUDA and not the interpreter, a
float32/float64 compute dtype, C > 512, a shape in none of the tables); the caller then runs the PyTorch ops. Checked
against the PyTorch path through Triton's CPU interpreter in ``tests/test_layernorm.py``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from sret.models import layernorm as _ln
from sret.models import shared_weights
from sret.models.kernel_launch import cdiv, launchable, next_power_of_2

triton = _ln.triton
if triton is not None:
    import triton.language as tl

_MAX_C = 512
_DTYPES = (torch.bfloat16, torch.float16)


def kernels_available(x: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the fused forward kernels may run on ``x`` with Linears in ``dtype``."""
    return dtype in _DTYPES and x.shape[-1] <= _MAX_C and _ln.fused_kernels_enabled(x)


def forward_applies(x: torch.Tensor, hidden: int, dtype: torch.dtype, save: bool) -> bool:
    """Whether :func:`mlp_residual_forward` (without tile overrides) takes an MLP of ``hidden`` units on ``x``."""
    key = (int(x.shape[-1]), hidden, save)  # int(): pins a symbolic width under torch.compile (compiled_ops.py)
    return kernels_available(x, dtype) and (key in CUBLAS_MLP or key in PW_TILES or key in GEMM_TILES)


if triton is not None:

    @triton.jit
    def _gelu(x):
        """Exact (erf) GELU of a float32 tile, as ``F.gelu`` computes it."""
        return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))

    @triton.jit
    def _gelu_parts(h):
        """``(Phi(h), phi(h))`` of a float32 tile: gelu(h) = h * Phi(h), gelu'(h) = Phi(h) + h * phi(h)."""
        cdf = 0.5 * (1.0 + tl.erf(h * 0.7071067811865476))
        pdf = tl.exp(-0.5 * h * h) * 0.3989422804014327  # the standard normal density
        return cdf, pdf

    @triton.jit
    def _gelu_and_grad(H, DA, A, DH, n, BLOCK: tl.constexpr):
        """``a = gelu(h)`` and ``dh = gelu'(h) * da`` in one pass (the MLP backward needs both, from the same h)."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        h = tl.load(H + offs, mask=m, other=0.0).to(tl.float32)
        da = tl.load(DA + offs, mask=m, other=0.0).to(tl.float32)
        cdf, pdf = _gelu_parts(h)
        tl.store(A + offs, (h * cdf).to(A.dtype.element_ty), mask=m)
        tl.store(DH + offs, (da * (cdf + h * pdf)).to(DH.dtype.element_ty), mask=m)

    @triton.jit
    def _residual_tile(x, y, C1, K, rows, rmask, N_TOK, HAS_C1: tl.constexpr, K_PER_SAMPLE: tl.constexpr):
        """``c1 * x + k * y`` on a float32 tile; k is one scalar or one per sample (row // tokens per sample)."""
        if HAS_C1:
            x = x * tl.load(C1).to(tl.float32)
        if K_PER_SAMPLE:
            k = tl.load(K + rows // N_TOK, mask=rmask, other=0.0).to(tl.float32)
            return x + k[:, None] * y
        return x + tl.load(K).to(tl.float32) * y

    @triton.jit
    def _prep_mlp_weights(W1, W2, W1P, W2P, C, H, CP, HP, BLOCK: tl.constexpr):
        """W1 (H, C) -> W1P (HP, CP) and W2 (C, H) -> W2P (CP, HP) in the compute dtype, zero-padded, in one launch:
        programs below ``cdiv(HP * CP, BLOCK)`` write W1P, the rest W2P."""
        pid = tl.program_id(0)
        n1 = tl.cdiv(HP * CP, BLOCK)
        if pid < n1:
            idx = pid * BLOCK + tl.arange(0, BLOCK)
            r, c = idx // CP, idx % CP
            w = tl.load(W1 + r * C + c, mask=(r < H) & (c < C), other=0.0)
            tl.store(W1P + idx, w.to(W1P.dtype.element_ty), mask=idx < HP * CP)
        else:
            idx = (pid - n1) * BLOCK + tl.arange(0, BLOCK)
            r, c = idx // HP, idx % HP
            w = tl.load(W2 + r * H + c, mask=(r < C) & (c < H), other=0.0)
            tl.store(W2P + idx, w.to(W2P.dtype.element_ty), mask=idx < CP * HP)

    @triton.jit
    def _mlp_residual_fwd_pw(X, LNW, LNB, W1P, B1, W2P, B2, C1, K, OUT, HOUT, MEAN, RSTD, XN, M, C: tl.constexpr, H,
                             HP, N_TOK, eps, HAS_C1: tl.constexpr, K_PER_SAMPLE: tl.constexpr, SAVE: tl.constexpr,
                             XN_W: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                             BLOCK_H: tl.constexpr):
        """The one-launch MLP sublayer over prepared weights: W1P (HP, BLOCK_C) and W2P (BLOCK_C, HP) already in the
        compute dtype and zero-padded (HP a multiple of BLOCK_H), so the weight tiles go from memory straight into the
        two dots (unmasked, 16-byte rows: the compiler can stage them through shared memory ahead of use) instead of
        through registers for a cast. x is read again for the residual rather than kept live across the H loop.
        ``XN_W`` > 0 (with SAVE): the LayerNorm output is also written to XN, rows XN_W wide with a ones column at C
        (``layernorm.ln_forward(ones_column=True)``'s layout), for a backward that keeps it."""
        eps = tl.cast(eps, tl.float32)  # fp64 where Inductor launches it
        pid = tl.program_id(0)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_C)
        rmask = rows < M
        cmask = cols < C
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * C + cols[None, :]
        dt = W1P.dtype.element_ty
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / C
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
        lw = tl.load(LNW + cols, mask=cmask, other=0.0).to(tl.float32)
        lb = tl.load(LNB + cols, mask=cmask, other=0.0).to(tl.float32)
        xn = (xc * rstd[:, None] * lw[None, :] + lb[None, :]).to(dt)  # (BLOCK_M, BLOCK_C), zero past C
        if XN_W > 0:
            tl.store(XN + rows[:, None].to(tl.int64) * XN_W + cols[None, :],
                     tl.where(cols[None, :] == C, 1.0, xn.to(tl.float32)).to(dt),
                     mask=rmask[:, None] & (cols < XN_W)[None, :])
        acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
        hr = tl.arange(0, BLOCK_H)
        w1_ptr = W1P + hr[:, None] * BLOCK_C + cols[None, :]  # (BLOCK_H, BLOCK_C) tile of W1P
        w2_ptr = W2P + cols[:, None] * HP + hr[None, :]  # (BLOCK_C, BLOCK_H) tile of W2P
        for h0 in range(0, HP, BLOCK_H):
            hcols = h0 + hr
            hmask = hcols < H
            b1 = tl.load(B1 + hcols, mask=hmask, other=0.0).to(dt).to(tl.float32)
            h = (tl.dot(xn, tl.trans(tl.load(w1_ptr))) + b1[None, :]).to(dt)  # fc1 output, rounded as addmm's
            if SAVE:  # h is (M, HP): its padding columns are exact zeros (zero weight rows, masked bias)
                tl.store(HOUT + rows[:, None].to(tl.int64) * HP + hcols[None, :], h, mask=rmask[:, None])
            a = _gelu(h.to(tl.float32)).to(dt)  # exact GELU, rounded; padding columns: gelu(0) = 0
            acc += tl.dot(a, tl.trans(tl.load(w2_ptr)))
            w1_ptr += BLOCK_H * BLOCK_C
            w2_ptr += BLOCK_H
        b2 = tl.load(B2 + cols, mask=cmask, other=0.0).to(dt).to(tl.float32)
        y = (acc + b2[None, :]).to(dt).to(tl.float32)  # fc2 output, rounded as addmm's
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        out = _residual_tile(x, y, C1, K, rows, rmask, N_TOK, HAS_C1, K_PER_SAMPLE)
        tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)
        if SAVE:
            tl.store(MEAN + rows, mean, mask=rmask)
            tl.store(RSTD + rows, rstd, mask=rmask)

    @triton.jit
    def _residual_fwd(X, Y, C1, K, OUT, IDX, M, C: tl.constexpr, N_TOK, Y_STRIDE, HAS_C1: tl.constexpr,
                      K_PER_SAMPLE: tl.constexpr, HAS_IDX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        # y's rows are Y_STRIDE apart (>= C: the GEMM that makes y may write zero-padded, 16-byte aligned rows)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_C)
        rmask = rows < M
        mask = rmask[:, None] & (cols < C)[None, :]
        offs = rows[:, None].to(tl.int64) * C + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        yrows = rows.to(tl.int64)
        if HAS_IDX:  # y row of token r: (r // N) * N + IDX[r % N] (y is in another token order)
            yrows = (yrows // N_TOK) * N_TOK + tl.load(IDX + rows % N_TOK, mask=rmask, other=0).to(tl.int64)
        y = tl.load(Y + yrows[:, None] * Y_STRIDE + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        out = _residual_tile(x, y, C1, K, rows, rmask, N_TOK, HAS_C1, K_PER_SAMPLE)
        tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)


if triton is not None:

    @triton.jit
    def _matmul_nt(A, W, rows, cols, rmask, nmask, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GELU_A: tl.constexpr):
        """float32 ``A[rows] @ W[cols]^T`` over all of K: A and W row-major with row stride K, a multiple of BLOCK_K
        (zero padding), so the K loop is unmasked; W tiles are loaded row-major and transposed in the dot. GELU_A:
        ``gelu(A)`` instead of A, each tile rounded back to A's dtype as ``F.gelu`` of it would be (gelu(0) = 0: the
        padding stays zero)."""
        ks = tl.arange(0, BLOCK_K)
        a_ptr = A + rows[:, None].to(tl.int64) * K + ks[None, :]
        w_ptr = W + cols[:, None] * K + ks[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for _ in range(0, K, BLOCK_K):
            a = tl.load(a_ptr, mask=rmask[:, None], other=0.0)
            if GELU_A:
                a = _gelu(a.to(tl.float32)).to(A.dtype.element_ty)
            w = tl.load(w_ptr, mask=nmask[:, None], other=0.0)
            acc += tl.dot(a, tl.trans(w))
            a_ptr += BLOCK_K
            w_ptr += BLOCK_K
        return acc

    @triton.jit
    def _fc1_gelu_fwd(XN, W1, B1, A, HOUT, M, H, CP, HP, SAVE: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """``a = gelu(xn @ W1^T + b1)`` (and ``h`` = the fc1 output with SAVE) for a (BLOCK_M, BLOCK_N) tile.

        xn (M, CP) and W1 (HP, CP) are in the compute dtype with zero padding, CP a multiple of BLOCK_K, so the
        K loop needs no mask; a and h are (M, HP) (padding columns come out as zeros).
        """
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        hcols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < M
        nmask = hcols < HP
        acc = _matmul_nt(XN, W1, rows, hcols, rmask, nmask, CP, BLOCK_M, BLOCK_N, BLOCK_K, False)
        dt = A.dtype.element_ty
        b1 = tl.load(B1 + hcols, mask=hcols < H, other=0.0).to(dt).to(tl.float32)
        h = (acc + b1[None, :]).to(dt)  # fc1 output, rounded as addmm's
        if SAVE:  # h is (M, HP) like a: zeros in the padding columns
            tl.store(HOUT + rows[:, None].to(tl.int64) * HP + hcols[None, :], h, mask=rmask[:, None] & nmask[None, :])
        hf = h.to(tl.float32)
        tl.store(A + rows[:, None].to(tl.int64) * HP + hcols[None, :], _gelu(hf).to(dt),
                 mask=rmask[:, None] & nmask[None, :])

    @triton.jit
    def _fc2_residual_fwd(A, W2, B2, X, C1, K, OUT, M, C: tl.constexpr, HP, N_TOK, HAS_C1: tl.constexpr,
                          K_PER_SAMPLE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, GELU_A: tl.constexpr):
        """``c1 * x + k * (a @ W2^T + b2)`` for a (BLOCK_M, BLOCK_N) tile of the (M, C) output; GELU_A: A holds the
        fc1 output h and ``a = gelu(h)`` is made as its tiles are loaded (no pass of its own over the hidden layer).

        a (M, HP) and W2 (C, HP) are in the compute dtype with zero padding, HP a multiple of BLOCK_K.
        """
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < M
        cmask = cols < C
        acc = _matmul_nt(A, W2, rows, cols, rmask, cmask, HP, BLOCK_M, BLOCK_N, BLOCK_K, GELU_A)
        dt = A.dtype.element_ty
        b2 = tl.load(B2 + cols, mask=cmask, other=0.0).to(dt).to(tl.float32)
        y = (acc + b2[None, :]).to(dt).to(tl.float32)  # fc2 output, rounded as addmm's
        offs = rows[:, None].to(tl.int64) * C + cols[None, :]
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        out = _residual_tile(x, y, C1, K, rows, rmask, N_TOK, HAS_C1, K_PER_SAMPLE)
        tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)


    @triton.jit
    def _da_gelu_bwd(G, W, H, A, DH, M, C, HW, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr):
        """The MLP backward's ``da = g @ W`` (g (M, C), W (C, HW) row-major, both in the compute dtype) for a
        (BLOCK_M, BLOCK_N) tile, with the GELU pass as its epilogue: ``a = gelu(h)`` and ``dh = gelu'(h) * da``
        written, da itself never stored. da is rounded to the compute dtype first, as the unfused mm returns it."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < M
        nmask = cols < HW
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, C, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < C
            g = tl.load(G + rows[:, None].to(tl.int64) * C + ks[None, :], mask=rmask[:, None] & kmask[None, :],
                        other=0.0)
            w = tl.load(W + ks[:, None] * HW + cols[None, :], mask=kmask[:, None] & nmask[None, :], other=0.0)
            acc += tl.dot(g, w)
        dt = A.dtype.element_ty
        da = acc.to(dt).to(tl.float32)
        offs = rows[:, None].to(tl.int64) * HW + cols[None, :]
        mask = rmask[:, None] & nmask[None, :]
        h = tl.load(H + offs, mask=mask, other=0.0).to(tl.float32)
        cdf, pdf = _gelu_parts(h)
        tl.store(A + offs, (h * cdf).to(dt), mask=mask)
        tl.store(DH + offs, (da * (cdf + h * pdf)).to(DH.dtype.element_ty), mask=mask)


    @triton.jit
    def _finish_projection_bwd(GW, GB, W, B, C2, DW, DB, PART, N_OUT, N_IN, GW_SR, GW_SC, BLOCK: tl.constexpr):
        """Parameter gradients of ``out += c2 * (a @ W.T + B)`` from ``GW = g^T a`` (N_OUT, N_IN; any strides and
        dtype) and ``GB = sum g`` (N_OUT,): ``DW = c2 * GW`` and ``DB = c2 * GB`` in W's dtype, and per program the
        partial sum of ``<W, GW> + <B, GB>`` (d c2) for the caller to add up. The flat index runs over W's
        N_OUT * N_IN elements, then B's N_OUT."""
        pid = tl.program_id(0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        n_w = N_OUT * N_IN
        c2 = tl.load(C2).to(tl.float32)
        wmask = offs < n_w
        r = offs // N_IN
        gw = tl.load(GW + r.to(tl.int64) * GW_SR + (offs - r * N_IN) * GW_SC, mask=wmask, other=0.0).to(tl.float32)
        w = tl.load(W + offs, mask=wmask, other=0.0).to(tl.float32)
        tl.store(DW + offs, (gw * c2).to(DW.dtype.element_ty), mask=wmask)
        bo = offs - n_w
        bmask = (bo >= 0) & (bo < N_OUT)
        gb = tl.load(GB + bo, mask=bmask, other=0.0).to(tl.float32)
        b = tl.load(B + bo, mask=bmask, other=0.0).to(tl.float32)
        tl.store(DB + bo, (gb * c2).to(DB.dtype.element_ty), mask=bmask)
        tl.store(PART + pid, tl.sum(gw * w, axis=0) + tl.sum(gb * b, axis=0))


    @triton.jit
    def _scaled_cast(W, C2, OUT, ROWS_IN, N_IN, N_OUT, n, HAS_C2: tl.constexpr, BLOCK: tl.constexpr):
        """``OUT = (C2 * W)`` rounded to OUT's dtype, W (ROWS_IN, N_IN) float32 contiguous, OUT (rows >= ROWS_IN,
        N_OUT >= N_IN) with zeros past W; ``n`` = rows * N_OUT."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        r = offs // N_OUT
        col = offs - r * N_OUT
        w = tl.load(W + r.to(tl.int64) * N_IN + col, mask=mask & (col < N_IN) & (r < ROWS_IN), other=0.0)
        if HAS_C2:
            w = w * tl.load(C2)
        tl.store(OUT + offs, w.to(OUT.dtype.element_ty), mask=mask)

    @triton.jit
    def _cast4(A, B, C, D, OA, OB, OC, OD, NA, NB, NC, ND, BLOCK: tl.constexpr):
        """Four contiguous tensors cast to their outputs' dtype in one launch: the flat index runs over A, then B, C,
        D."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < NA
        tl.store(OA + offs, tl.load(A + offs, mask=m).to(OA.dtype.element_ty), mask=m)
        o = offs - NA
        m = (o >= 0) & (o < NB)
        tl.store(OB + o, tl.load(B + o, mask=m).to(OB.dtype.element_ty), mask=m)
        o = o - NB
        m = (o >= 0) & (o < NC)
        tl.store(OC + o, tl.load(C + o, mask=m).to(OC.dtype.element_ty), mask=m)
        o = o - NC
        m = (o >= 0) & (o < ND)
        tl.store(OD + o, tl.load(D + o, mask=m).to(OD.dtype.element_ty), mask=m)


_GEMM_PAD = 64  # K dimensions (C, H) are padded to a multiple of this: every BLOCK_K used divides it


def _padded(w: torch.Tensor, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """``w`` in ``dtype``, zero-padded to (rows, cols): one launch where :func:`scaled_cast` applies; made once per
    stage forward for a shared block's weights (``shared_weights``)."""
    return shared_weights.memoized(lambda: _padded_now(w, rows, cols, dtype), (w,), "padded", rows, cols, dtype)


def _padded_now(w: torch.Tensor, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    fused = scaled_cast(w, None, dtype, cols, rows)
    if fused is not None:
        return fused
    if w.shape == (rows, cols):
        return w.to(dtype).contiguous()
    out = w.new_zeros((rows, cols), dtype=dtype)
    out[: w.shape[0], : w.shape[1]] = w
    return out


def _mlp_two_launches(x, ln_w, ln_b, w1, b1, w2, b2, c1, k, per_sample, eps, dtype, save, config):
    """The MLP sublayer as LayerNorm + two GEMM kernels with fused epilogues (fc1 + bias + GELU; fc2 + bias +
    residual): for wide sublayers, where one program streaming both weight matrices per row tile loses to tiled
    GEMMs, at the price of writing and reading the (M, H) hidden layer once. The weights are rounded to the compute
    dtype and zero-padded once per call (C, H to multiples of 64: 16-byte aligned rows, no masks in the K loops)."""
    B, N, C = x.shape
    M, H = B * N, w1.shape[0]
    (bm1, bn1, bk1, warps1, stages1), (bm2, bn2, bk2, warps2, stages2) = config
    if _GEMM_PAD % bk1 or _GEMM_PAD % bk2:
        raise ValueError(f"GEMM tiles {config}: BLOCK_K must divide {_GEMM_PAD}")
    cp, hp = cdiv(C, _GEMM_PAD) * _GEMM_PAD, cdiv(H, _GEMM_PAD) * _GEMM_PAD
    if cp - C > 8:  # the LayerNorm kernel pads rows by at most 8 columns
        return None
    xn, mean, rstd = _ln.ln_forward(x.view(M, C), ln_w, ln_b, eps, dtype, width=cp)  # (M, cp)
    a = torch.empty((M, hp), device=x.device, dtype=dtype)
    h = torch.empty((M, hp) if save else (1, 1), device=x.device, dtype=dtype)
    w1p = _padded(w1, hp, cp, dtype)
    launchable(_fc1_gelu_fwd)[(cdiv(M, bm1), cdiv(hp, bn1))](
        xn, w1p, b1, a, h, M, H, cp, hp, SAVE=save, BLOCK_M=bm1, BLOCK_N=bn1, BLOCK_K=bk1,
        num_warps=warps1, num_stages=stages1)
    out = torch.empty((B, N, C), device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
    launchable(_fc2_residual_fwd)[(cdiv(M, bm2), cdiv(C, bn2))](
        a, _padded(w2, C, hp, dtype), b2, x, c1 if c1 is not None else k, k, out, M, int(C), hp, N,
        HAS_C1=c1 is not None, K_PER_SAMPLE=per_sample, BLOCK_M=bm2, BLOCK_N=bn2, BLOCK_K=bk2, GELU_A=False,
        num_warps=warps2, num_stages=stages2)
    return out, (h if save else None), mean, rstd, w1p


def _cublas_operands(w1, b1, w2, b2, hp: int, cp: int, dtype: torch.dtype):
    """``(W1 (hp, cp), b1 (hp,), W2 (cp, hp), b2 (cp,))`` in ``dtype`` with zero padding: the operands of
    :func:`_mlp_cublas`, made once per stage forward for a shared block's (``shared_weights``)."""
    def make():
        H, C = w1.shape
        return (_padded_now(w1, hp, cp, dtype), _padded_now(b1.view(1, H), 1, hp, dtype).view(hp),
                _padded_now(w2, cp, hp, dtype), _padded_now(b2.view(1, C), 1, cp, dtype).view(cp))
    return shared_weights.memoized(make, (w1, b1, w2, b2), "cublas", hp, cp, dtype)


def _mlp_cublas(x, ln_w, ln_b, w1, b1, w2, b2, c1, c2, scale, eps, dtype, save, keep_xn=False, fc2_config=None):
    """The MLP sublayer as LayerNorm kernel -> cuBLAS fc1 -> GELU -> cuBLAS fc2 -> residual kernel, every GEMM
    operand and output on 16-byte aligned rows (C to a multiple of 8 with zero columns, H to a multiple of
    :data:`_GEMM_PAD`). For wide, long sublayers (SReT-S's stage 1: C = 252, 50k rows), where the one-launch kernel
    streams both weight matrices from L2 once per 32-row tile (~1.2 GB a call) and the Triton GEMMs' short K loops
    stay far from the bandwidth floor. The rounding points are the autocast path's: addmm adds its bf16 bias in
    float32 and rounds once, as the kernels do; the padding adds exact zeros. Returns ``(out, h, mean, rstd, w1p,
    xn)``; with ``save`` and ``keep_xn`` xn is the LayerNorm output with a ones column at C (the layout of
    ``layernorm.ln_forward(ones_column=True)``, which fc1 reads as its first cp columns: W1's are zero from C on),
    else None. ``fc2_config`` (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): the GELU, fc2 and the residual as one
    launch of :func:`_fc2_residual_fwd` reading h (:data:`CUBLAS_GELU_FC2`), instead of ``F.gelu`` -> cuBLAS ->
    the residual kernel: the activation is never written and read back, nor is fc2's output."""
    B, N, C = x.shape
    M, H = B * N, w1.shape[0]
    cp, hp = C + (-C % 8), cdiv(H, _GEMM_PAD) * _GEMM_PAD  # cp: fused.aligned_width(C) (fused imports this module)
    w1p, b1p, w2p, b2p = _cublas_operands(w1, b1, w2, b2, hp, cp, dtype)
    keep_xn = keep_xn and save
    # (M, cp), zeros past C; kept: (M, ones_column_width(C) >= cp), its ones column past fc1's operand or times zeros
    xn, mean, rstd = _ln.ln_forward(x.view(M, C), ln_w, ln_b, eps, dtype, ones_column=keep_xn,
                                    width=None if keep_xn else cp)
    h = torch.addmm(b1p, xn[:, :cp], w1p.t())  # (M, hp) fc1 output: zero columns past H (zero weight rows and bias)
    if fc2_config is not None:
        bm, bn, bk, warps, stages = fc2_config
        k, per_sample = _branch_factor(x, c2, scale)
        out = torch.empty((B, N, C), device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
        # W2 (C, hp): the rows of w2p (cp, hp) that hold weights; b2 as the parameter (the kernel rounds it)
        launchable(_fc2_residual_fwd)[(cdiv(M, bm), cdiv(C, bn))](
            h, w2p, b2, x, c1 if c1 is not None else k, k, out, M, int(C), hp, N, HAS_C1=c1 is not None,
            K_PER_SAMPLE=per_sample, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GELU_A=True, num_warps=warps,
            num_stages=stages)
    else:
        y = torch.addmm(b2p, F.gelu(h), w2p.t())  # (M, cp): zero columns past C
        out = residual_forward(x, y.view(B, N, cp)[..., :C], c1, c2, scale)
    return out, (h if save else None), mean, rstd, w1p, (xn if keep_xn else None)


def prepared_weights(w1: torch.Tensor, w2: torch.Tensor, block_c: int, block_h: int, dtype: torch.dtype):
    """``(W1P, W2P, HP)``: fc1's (H, C) and fc2's (C, H) weights in ``dtype``, zero-padded to (HP, block_c) and
    (block_c, HP), HP = H rounded up to ``block_h``, in one launch. Not cached across calls: a cache would go stale
    under CUDA-graph replays that update the weights in place (training steps, EMA copies), which no version counter
    would see. Within one stage forward a shared block's are made once (``shared_weights``)."""
    return shared_weights.memoized(lambda: _prepared_weights_now(w1, w2, block_c, block_h, dtype), (w1, w2),
                                   "mlp", block_c, block_h, dtype)


def _prepared_weights_now(w1: torch.Tensor, w2: torch.Tensor, block_c: int, block_h: int, dtype: torch.dtype):
    H, C = w1.shape
    hp = cdiv(H, block_h) * block_h
    w1p = torch.empty((hp, block_c), device=w1.device, dtype=dtype)
    w2p = torch.empty((block_c, hp), device=w1.device, dtype=dtype)
    block = 1024
    grid = (cdiv(hp * block_c, block) + cdiv(block_c * hp, block),)
    launchable(_prep_mlp_weights)[grid](w1, w2, w1p, w2p, C, H, block_c, hp, BLOCK=block, num_warps=4)
    return w1p, w2p, hp


def mlp_residual_prepared(x, ln_w, ln_b, w1p, b1, w2p, b2, c1, k, per_sample, eps, H, hp, save, config,
                          keep_xn: bool = False):
    """Launch :func:`_mlp_residual_fwd_pw` on weights from :func:`prepared_weights`; ``config`` =
    (BLOCK_M, BLOCK_H, num_warps, num_stages). Returns ``(out, h, mean, rstd, xn)`` (the middle three None unless
    ``save``; ``xn``, the LayerNorm output with its ones column, None unless ``save`` and ``keep_xn`` and its row
    fits the kernel's tile)."""
    B, N, C = x.shape
    M = B * N
    block_m, block_h, warps, stages = config
    dtype = w1p.dtype
    out = torch.empty((B, N, C), device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
    xn_w = _ln.ones_column_width(C) if save and keep_xn and _ln.ones_column_width(C) <= w1p.shape[1] else 0
    if save:
        h = torch.empty((M, hp), device=x.device, dtype=dtype)
        mean = torch.empty(M, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
    else:  # never written without SAVE: no allocations (each is host time in eager inference); a read-only input,
        h = mean = rstd = x  # not the output: see group_attention()
    xn = torch.empty((M, xn_w), device=x.device, dtype=dtype) if xn_w else x
    launchable(_mlp_residual_fwd_pw)[(cdiv(M, block_m),)](
        x, ln_w, ln_b, w1p, b1, w2p, b2, c1 if c1 is not None else k, k, out, h, mean, rstd, xn, M, int(C), H, hp,
        N, eps, HAS_C1=c1 is not None, K_PER_SAMPLE=per_sample, SAVE=save, XN_W=xn_w, BLOCK_M=block_m,
        BLOCK_C=w1p.shape[1], BLOCK_H=block_h, num_warps=warps, num_stages=stages)
    return (out, h, mean, rstd, xn if xn_w else None) if save else (out, None, None, None, None)


def _branch_factor(x: torch.Tensor, c2: Optional[torch.Tensor], scale: Optional[torch.Tensor]):
    """``(K, per_sample)``: the branch's factor as a 1-element tensor, or per sample (B,) with drop path."""
    if scale is None:
        return (c2 if c2 is not None else x.new_ones(1, dtype=torch.float32)), False
    return (scale * c2 if c2 is not None else scale).contiguous(), True


def mlp_residual_forward(x: torch.Tensor, ln_w, ln_b, w1, b1, w2, b2, c1, c2, scale, eps: float,
                         dtype: torch.dtype, save: bool,
                         gemm_tile: Optional[tuple[tuple[int, ...], tuple[int, ...]]] = None,
                         pw_tile: Optional[tuple[int, int, int, int]] = None, return_w1: bool = False,
                         cublas: Optional[bool] = None, keep_xn: bool = False,
                         fc2_tile: Optional[tuple[int, int, int, int, int]] = None):
    """``c1 * x + c2 * s * fc2(gelu(fc1(LN(x))))`` for contiguous x (B, N, C): LayerNorm + two cuBLAS GEMMs over
    aligned rows for the shapes in :data:`CUBLAS_MLP`, one launch over prepared weights for those in
    :data:`PW_TILES`, LayerNorm + two GEMM launches for those in :data:`GEMM_TILES`.

    Returns ``(out, h, mean, rstd)`` (the last three None unless ``save``), or None where the kernels do not apply
    (the caller runs the PyTorch ops). ``h`` is the fc1 output (M, H') in the compute dtype, H' >= H: its columns
    past H are zeros (the hidden layer carried to an aligned width, see :func:`prepared_weights`). ``pw_tile`` =
    (BLOCK_M, BLOCK_H, num_warps, num_stages) overrides :data:`PW_TILES`, ``gemm_tile`` = two (BLOCK_M, BLOCK_N,
    BLOCK_K, num_warps, num_stages) overrides :data:`GEMM_TILES` and selects that path, ``cublas`` True / False
    takes or skips the cuBLAS path whatever :data:`CUBLAS_MLP` says (tests, tuning), and on it ``fc2_tile``
    (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) overrides :data:`CUBLAS_GELU_FC2` (``()``: the launches
    without it).

    ``return_w1``: also return, fifth, fc1's weight as the kernels used it (compute dtype, zero-padded to (H', C')
    with C' >= C): the backward's ``dh @ W1`` reads its first C columns instead of casting and padding W1 again.
    ``keep_xn`` (with ``save``): also return, last, the LayerNorm output as the backward's weight gradient takes it
    (``layernorm.ln_forward(ones_column=True)``'s layout), so that the backward need not recompute it; None where
    the path cannot write it (the two-launch path, rows wider than the one-launch kernel's tile).
    """
    if not kernels_available(x, dtype):
        return None
    C, H = int(x.shape[-1]), int(w1.shape[0])  # int(): see forward_applies
    if cublas is None:
        cublas = not (pw_tile or gemm_tile) and (C, H, save) in CUBLAS_MLP

    def extra(result, w1p, xn):  # what the flags ask for, after (out, h, mean, rstd)
        return (*result, *((w1p,) if return_w1 else ()), *((xn,) if keep_xn else ()))

    if cublas:
        fc2 = CUBLAS_GELU_FC2.get((C, H, save)) if fc2_tile is None else (fc2_tile or None)
        *result, w1p, xn = _mlp_cublas(x, ln_w, ln_b, w1, b1, w2, b2, c1, c2, scale, eps, dtype, save, keep_xn, fc2)
        return extra(result, w1p, xn)
    pw_config = pw_tile or (None if gemm_tile else PW_TILES.get((C, H, save)))
    gemm_config = gemm_tile or (None if pw_config else GEMM_TILES.get((C, H, save)))
    if pw_config is None and gemm_config is None:  # a shape where neither path beat the PyTorch ops, or unmeasured
        return None
    k, per_sample = _branch_factor(x, c2, scale)
    try:
        if gemm_config is not None:
            *result, w1p = _mlp_two_launches(x, ln_w, ln_b, w1, b1, w2, b2, c1, k, per_sample, eps, dtype, save,
                                             gemm_config)
            xn = None
        else:
            w1p, w2p, hp = prepared_weights(w1, w2, max(16, next_power_of_2(C)), pw_config[1], dtype)
            *result, xn = mlp_residual_prepared(x, ln_w, ln_b, w1p, b1, w2p, b2, c1, k, per_sample, eps, H, hp,
                                                save, pw_config, keep_xn)
    except triton.runtime.errors.OutOfResources:  # tiles too large for this GPU: the PyTorch ops do it
        return None
    return extra(result, w1p, xn)


# (C, H, save) of the MLP/NLL sublayers that take :func:`_mlp_cublas`, looked up before the tables below: shapes where
# it beat the path the tables chose by >= 3 % (``benchmarks/mlp_paths.py``, H100, bf16, batch 256, CUDA-graph
# replays, run 105, ``benchmarks/results/session_runs105_/run105_mlp_paths/``). ms in the comments: cuBLAS path, the
# tables' path. It lost everywhere else: SReT-S's stage 0 (0.48 vs 0.27 ms for the MLP at inference: 200k rows of 126
# channels, where the one-launch kernel never writes the hidden layer), its stage-1 NLL at inference (0.216 vs
# 0.198), and every SReT-T shape but the last MLP in training (0.073 vs 0.075: not taken).
CUBLAS_MLP: set[tuple[int, int, bool]] = {
    (252, 756, False),   # S stage 1 MLP: 0.256 vs 0.265
    (252, 756, True),    # 0.255 vs 0.356
    (252, 504, True),    # S stage 1 NLL, training: 0.214 vs 0.261
    (504, 1512, False),  # S stage 2 MLP: 0.155 vs 0.181
    (504, 1512, True),   # 0.155 vs 0.197 (the PyTorch ops: in no table)
    (504, 1008, False),  # S stage 2 NLL: 0.123 vs 0.142
    (504, 1008, True),   # 0.123 vs 0.155
}

# (C, H, save) -> (BLOCK_M, BLOCK_H, num_warps, num_stages) of the one-launch kernel over prepared weights
# (``_mlp_residual_fwd_pw``), looked up first: the fastest of 36 configs per shape where it beat both the path the
# other tables choose and the PyTorch ops by 3 % (``benchmarks/sweep_mlp_kernel.py``, H100, CUDA-graph replays,
# batch 256, weight preparation included; ``benchmarks/results/sweep_mlp_run16/``). Times (ms) in the comments:
# this kernel against the better alternative.
# (C, H, save) of the CUBLAS_MLP shapes whose GELU, fc2 and residual run as one launch (``_fc2_residual_fwd`` with
# GELU_A) -> its (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): where it beat F.gelu + cuBLAS + the residual
# kernel by >= 3 % (``benchmarks/sweep_gelu_fc2.py``, H100, bf16, batch 256, CUDA-graph replays of the sublayer
# forward, run 118, ``benchmarks/results/session_runs113_/run118_sweep_gelu_fc2/``; us in the comments: one launch,
# the launches). SReT-S's stage 2 (504 channels) lost: two column blocks make the GELU twice (155 vs 121 us).
CUBLAS_GELU_FC2: dict[tuple[int, int, bool], tuple[int, int, int, int, int]] = {
    (252, 756, False): (128, 256, 32, 8, 3),  # S stage 1 MLP: 213.3 vs 231.1
    (252, 756, True): (128, 256, 32, 8, 3),   # 213.3 vs 231.1
    (252, 504, True): (128, 256, 32, 8, 3),   # S stage 1 NLL, training: 171.9 vs 189.1
}

PW_TILES: dict[tuple[int, int, bool], tuple[int, int, int, int]] = {
    (64, 230, False): (64, 64, 4, 3),    # T stage 0 MLP: 0.119 vs 0.218
    (64, 230, True): (32, 32, 4, 3),     # 0.164 vs 0.263
    (64, 64, False): (64, 64, 4, 3),     # T stage 0 NLL: 0.056 vs 0.066
    (64, 64, True): (32, 32, 4, 2),      # 0.062 vs 0.075
    (128, 460, False): (64, 64, 4, 3),   # T stage 1 MLP: 0.083 vs 0.204
    (128, 460, True): (32, 32, 4, 3),    # 0.111 vs 0.157
    (128, 128, False): (64, 64, 4, 2),   # T stage 1 NLL: 0.041 vs 0.053
    (128, 128, True): (32, 32, 4, 2),    # 0.046 vs 0.060
    (256, 256, False): (32, 128, 8, 2),  # T stage 2 NLL: 0.036 vs 0.063
    (256, 256, True): (32, 128, 8, 2),   # 0.038 vs 0.062
    (126, 378, False): (64, 64, 4, 3),   # S stage 0 MLP: 0.273 vs 0.425 (run 18, sweep_mlp_run18_s/)
    (126, 378, True): (32, 32, 4, 3),    # 0.422 vs 0.534
    (126, 252, False): (64, 64, 4, 3),   # S stage 0 NLL: 0.222 vs 0.348
    (126, 252, True): (32, 32, 4, 3),    # 0.308 vs 0.414
    (252, 756, False): (32, 64, 4, 2),   # S stage 1 MLP: 0.261 vs 0.285
    (252, 756, True): (32, 64, 4, 2),    # 0.336 vs 0.347
    (252, 504, False): (32, 64, 4, 2),   # S stage 1 NLL: 0.198 vs 0.232
    (252, 504, True): (32, 64, 4, 2),    # 0.250 vs 0.268
}

# (C, H, save) -> ((BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) of fc1, the same of fc2): shapes where LayerNorm + two
# GEMM launches measured at least 5 % faster than both the one-launch kernel and the PyTorch ops (``benchmarks/
# tune_sublayer_kernel.py --gemm``, then ``benchmarks/ab_gemm_tiles.py``). Looked up after :data:`PW_TILES`.
# Measured on an H100 at batch 256 (``benchmarks/results/gemm_path_run8/``; time of the sublayer forward against the
# better of the one-launch kernel and the PyTorch ops in the comments). Where absent, LN + 2 GEMMs lost or tied.
GEMM_TILES: dict[tuple[int, int, bool], tuple[tuple[int, int, int, int, int], tuple[int, int, int, int, int]]] = {
    (128, 460, True): ((64, 128, 64, 4, 3), (64, 128, 64, 4, 3)),     # T stage 1 MLP, training: 0.169 vs 0.244 ms
    (256, 921, False): ((64, 64, 64, 4, 3), (64, 128, 64, 4, 3)),     # T stage 2 MLP: 0.103 vs 0.236
    (256, 921, True): ((64, 64, 64, 4, 3), (64, 128, 64, 4, 3)),      # 0.100 vs 0.237
    (126, 378, False): ((64, 128, 64, 4, 3), (64, 128, 64, 4, 3)),    # S stage 0 MLP: 0.436 vs 0.726
    (126, 378, True): ((64, 128, 64, 4, 3), (64, 128, 64, 4, 3)),     # 0.541 vs 0.725
    (126, 252, False): ((64, 128, 64, 4, 3), (64, 128, 64, 4, 3)),    # S stage 0 NLL: 0.359 vs 0.602
    (126, 252, True): ((64, 128, 64, 4, 3), (64, 128, 64, 4, 3)),     # 0.426 vs 0.605
    (252, 756, False): ((64, 128, 64, 4, 3), (64, 128, 64, 4, 3)),    # S stage 1 MLP: 0.297 vs 0.439
    (252, 756, True): ((64, 128, 64, 4, 3), (64, 128, 64, 4, 3)),     # 0.358 vs 0.441
    (252, 504, False): ((64, 128, 64, 4, 3), (64, 256, 32, 8, 3)),    # S stage 1 NLL: 0.241 vs 0.350
    (252, 504, True): ((64, 128, 64, 4, 3), (64, 256, 32, 8, 3)),     # 0.278 vs 0.353
    (504, 1512, False): ((64, 128, 64, 4, 3), (128, 64, 64, 4, 3)),   # S stage 2 MLP: 0.201 vs 0.212
    (504, 1008, False): ((128, 256, 64, 8, 3), (128, 64, 64, 4, 3)),  # S stage 2 NLL: 0.306 vs 0.479
    (504, 1008, True): ((128, 256, 64, 8, 3), (128, 64, 64, 4, 3)),   # 0.263 vs 0.454
}


def gelu_and_grad(h: torch.Tensor, da: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """``(gelu(h), gelu'(h) * da)`` in one pass over contiguous ``h`` and ``da`` of one shape: the MLP backward's
    recomputed activation and its gradient read h once instead of twice (``F.gelu`` then ``gelu_backward``). None
    where the kernels do not apply (the caller runs the PyTorch ops)."""
    if not _ln.fused_kernels_enabled(h) or h.shape != da.shape or not (h.is_contiguous() and da.is_contiguous()):
        return None
    a, dh = torch.empty_like(h), torch.empty_like(da)
    n, block = h.numel(), 4096
    launchable(_gelu_and_grad)[(cdiv(n, block),)](h, da, a, dh, n, BLOCK=block, num_warps=8)
    return a, dh


# (C, hidden width of the saved h) -> (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) of ``_da_gelu_bwd``: shapes
# where the GEMM with the GELU pass as its epilogue beat cuBLAS's mm followed by :func:`gelu_and_grad` by >= 3 %
# (``benchmarks/sweep_da_gelu.py``, H100, bf16, batch 256, CUDA-graph replays, run 39,
# ``benchmarks/results/sweep_da_gelu_run39/``). Microseconds in the comments: this config, mm + gelu_and_grad. Shapes
# not listed take the two launches (SReT-S's last stage lost: 91 vs 70 and 240 vs 103 us; SReT-T's stage-1 MLP, whose
# h is 480 wide, lost too: 100.9 vs 98.1 us, run 40, ``benchmarks/results/ab_run40_da_gelu_t1/``). The (128, 512)
# entry was swept as SReT-T's by mistake (run 39); that shape is SReT-LT's, whose whole step was not measured.
DA_GELU_TILES: dict[tuple[int, int], tuple[int, int, int, int, int]] = {
    (64, 256): (64, 64, 64, 8, 2),    # T stage 0 MLP: 161.6 vs 193.6
    (64, 64): (64, 64, 64, 8, 2),     # T stage 0 NLL: 44.2 vs 61.5
    (128, 512): (64, 64, 64, 8, 2),   # LT stage 1 MLP (ratio 4, the PyTorch forward: h 512 wide): 92.7 vs 104.0
    (128, 128): (64, 64, 64, 8, 2),   # T stage 1 NLL: 28.4 vs 32.6
    (256, 960): (64, 64, 64, 4, 3),   # T stage 2 MLP: 51.2 vs 57.3
    (126, 384): (64, 128, 64, 8, 2),  # S stage 0 MLP: 310.8 vs 368.8
    (126, 256): (64, 128, 64, 8, 2),  # S stage 0 NLL: 206.7 vs 246.5
    (252, 512): (64, 128, 64, 8, 2),  # S stage 1 NLL: 143.1 vs 148.9
}


def saved_hidden_width(C: int, H: int) -> int:
    """The width of the fc1 output ``h`` that a training forward (``save``) of an MLP sublayer with C channels and
    H hidden units keeps: H rounded up to the tile of the path :func:`mlp_residual_forward` takes (H itself on the
    PyTorch path). The backward's kernels are tuned for (C, this width)."""
    if (C, H, True) in CUBLAS_MLP:
        return -(-H // _GEMM_PAD) * _GEMM_PAD
    pw_config = PW_TILES.get((C, H, True))
    if pw_config is not None:
        return -(-H // pw_config[1]) * pw_config[1]
    if (C, H, True) in GEMM_TILES:
        return -(-H // _GEMM_PAD) * _GEMM_PAD
    return H


def da_gelu_and_grad(g16: torch.Tensor, w2: torch.Tensor, c2: Optional[torch.Tensor], h: torch.Tensor,
                     config: Optional[tuple[int, int, int, int, int]] = None, cast=None):
    """``(gelu(h), gelu'(h) * (g16 @ (c2 * w2)))`` in one launch for g16 (M, C') in the compute dtype, fc2's weight
    w2 (C <= C', H <= HW; zero rows up to C' and columns up to HW implied: g16 may carry zero columns past C) and h
    (M, HW): the MLP backward's d fc2-input GEMM with the activation pass as its epilogue, so the (M, HW) gradient of
    the activation is never written and read back. ``config`` overrides :data:`DA_GELU_TILES` (keyed on C);
    ``cast`` (called as :func:`scaled_cast`, the default) makes W2's operand. None where the kernels do not apply or
    the shape is not in the table (the caller runs mm + :func:`gelu_and_grad`)."""
    M, CP = g16.shape
    HW = h.shape[1]
    config = config or DA_GELU_TILES.get((w2.shape[0], HW))
    if (config is None or not _ln.fused_kernels_enabled(h) or g16.dtype != h.dtype or w2.shape[0] > CP
            or w2.shape[1] > HW or h.shape[0] != M or not (g16.is_contiguous() and h.is_contiguous())):
        return None
    w = (cast or scaled_cast)(w2, c2, h.dtype, HW, CP)  # as the unfused mm's operand, zeros up to (CP, HW)
    if w is None:
        w = F.pad((w2 * c2 if c2 is not None else w2).to(h.dtype),
                  (0, HW - w2.shape[1], 0, CP - w2.shape[0])).contiguous()
    block_m, block_n, block_k, warps, stages = config
    a, dh = torch.empty_like(h), torch.empty_like(h)
    launchable(_da_gelu_bwd)[(cdiv(M, block_m), cdiv(HW, block_n))](
        g16, w, h, a, dh, M, CP, HW, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
        num_stages=stages)
    return a, dh


def residual_forward(x: torch.Tensor, y: torch.Tensor, c1, c2, scale,
                     y_rows: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """``c1 * x + c2 * s * y`` (x float32 or lower, y in the compute dtype) in one pass, or None off CUDA.

    ``y_rows`` (N,) int64: y holds each sample's tokens in another order, token ``i`` of x pairs with row
    ``y_rows[i]`` of y (the inverse of the permutation that made y's order). y's rows may lie further apart than C
    (a view of the first C columns of zero-padded rows).
    """
    if not _ln.fused_kernels_enabled(x):
        return None
    B, N, C = x.shape
    if y.shape != x.shape or y.stride(2) != 1 or y.stride(1) < C or y.stride(0) != N * y.stride(1):
        raise ValueError(f"residual_forward: y must be rows of {tuple(x.shape)} tokens, got {tuple(y.shape)} with "
                         f"strides {y.stride()}")
    if y_rows is not None and (y_rows.numel() != N or y_rows.dtype != torch.int64):
        raise ValueError(f"residual_forward: y_rows must be an int64 permutation of the {N} tokens")
    out = torch.empty((B, N, C), device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
    k, per_sample = _branch_factor(x, c2, scale)
    block_c = next_power_of_2(C)
    block_m = max(1, 4096 // block_c)
    M = B * N
    launchable(_residual_fwd)[(cdiv(M, block_m),)](
        x, y, c1 if c1 is not None else k, k, out, y_rows if y_rows is not None else k, M, int(C), N, y.stride(1),
        HAS_C1=c1 is not None, K_PER_SAMPLE=per_sample, HAS_IDX=y_rows is not None, BLOCK_M=block_m,
        BLOCK_C=block_c, num_warps=4)
    return out


def finish_projection(gw: torch.Tensor, gb: torch.Tensor, w: torch.Tensor, b: torch.Tensor, c2: torch.Tensor):
    """``(dw, db, dc2)`` of ``out += c2 * (a @ w.T + b)`` in two launches, from the weight-gradient GEMM's output
    ``gw`` (>= n_out, >= n_in) as it came out (compute dtype, any strides: only its first n_out = w.shape[0] rows and
    n_in = w.shape[1] columns are read, so zero padding needs no slicing copy) and ``gb`` = sum of d out (n_out,).
    Replaces a cast, two dot products, an add and a multiply (five launches a sublayer, each a few microseconds of a
    ~28 ms training step at SReT-T's sizes). ``dc2`` is summed over per-program partials in a fixed order:
    deterministic. None where the kernels do not apply (the caller runs the PyTorch ops)."""
    n_out, n_in = w.shape
    if not _ln.fused_kernels_enabled(gw) or gw.dim() != 2 or gw.shape[0] < n_out or gw.shape[1] < n_in \
            or not (w.is_contiguous() and b.is_contiguous() and gb.is_contiguous()):
        return None
    block = 2048
    programs = cdiv(n_out * n_in + n_out, block)
    dw = torch.empty((n_out, n_in), device=w.device, dtype=w.dtype)
    db = torch.empty_like(b)
    part = torch.empty(programs, device=w.device, dtype=torch.float32)
    launchable(_finish_projection_bwd)[(programs,)](
        gw, gb, w, b, c2, dw, db, part, n_out, n_in, gw.stride(0), gw.stride(1), BLOCK=block, num_warps=4)
    return dw, db, part.sum().reshape(1).to(c2.dtype)


def scaled_cast(w: torch.Tensor, c2: Optional[torch.Tensor], dtype: torch.dtype, width: Optional[int] = None,
                rows: Optional[int] = None) -> Optional[torch.Tensor]:
    """``(c2 * w).to(dtype)`` (``w.to(dtype)`` without c2), zero-padded to ``rows`` x ``width``, in one launch: the
    backward's operand of ``g @ (c2 * w)``, which took a multiply, a cast and, for a padded MLP, a pad before; and the
    padded weights of :func:`_mlp_two_launches`. The values are those of the PyTorch ops (float32 product, then one
    rounding). None where the kernels do not apply."""
    rows_in, n_in = w.shape
    width, rows = width or n_in, rows or rows_in
    if not _ln.fused_kernels_enabled(w) or not w.is_contiguous() or w.dtype != torch.float32 or width < n_in \
            or rows < rows_in or (c2 is None and dtype == w.dtype and (rows, width) == w.shape):  # the last: a no-op
        return None
    out = torch.empty((rows, width), device=w.device, dtype=dtype)
    block = 1024
    launchable(_scaled_cast)[(cdiv(out.numel(), block),)](
        w, c2 if c2 is not None else w, out, rows_in, n_in, width, out.numel(), HAS_C2=c2 is not None, BLOCK=block,
        num_warps=4)
    return out


def cast_parameters(tensors: tuple[torch.Tensor, ...], dtype: torch.dtype) -> Optional[list[torch.Tensor]]:
    """Up to four contiguous parameters cast to ``dtype`` in one launch (a sublayer's weights and biases for its
    GEMMs: one launch where each cast took its own), once per stage forward for a shared block's
    (``shared_weights``). None where the kernels do not apply."""
    return shared_weights.memoized(lambda: _cast_parameters_now(tensors, dtype), tensors, "cast", dtype)


def _cast_parameters_now(tensors: tuple[torch.Tensor, ...], dtype: torch.dtype) -> Optional[list[torch.Tensor]]:
    if not 0 < len(tensors) <= 4 or not all(t.is_contiguous() for t in tensors) \
            or all(t.dtype == dtype for t in tensors) or not _ln.fused_kernels_enabled(tensors[0]):
        return None  # (all in dtype already: the PyTorch casts are no-ops)
    outs = [torch.empty(t.shape, device=t.device, dtype=dtype) for t in tensors]
    spare = 4 - len(tensors)  # unused slots: a read-only input, an empty output (no output passed twice)
    ins = list(tensors) + [tensors[0]] * spare
    spare_outs = [torch.empty(0, device=tensors[0].device, dtype=dtype) for _ in range(spare)]
    sizes = [t.numel() for t in tensors] + [0] * spare
    block = 1024
    launchable(_cast4)[(cdiv(sum(sizes), block),)](*ins, *outs, *spare_outs, *sizes, BLOCK=block, num_warps=4)
    return outs
