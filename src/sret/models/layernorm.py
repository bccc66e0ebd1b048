"""LayerNorm for narrow tokens (C = 64 ... 504) as one Triton kernel per direction, for eager mode on CUDA.

Why: PyTorch's CUDA LayerNorm launches one thread block per row. SReT's rows are short (64 channels in stage 0)
and there are B * N of them (200k at batch 256), so most threads idle: on an H100 a stage-0 LayerNorm took
~105 us for a tensor it could stream in ~35 us, and LayerNorm (forward and backward) was a quarter of SReT-T's
eager step time. Here one program normalises a tile of rows at once.

Semantics: exactly ``F.layer_norm`` over the last dim, computed in float32. One deliberate difference: under
autocast the output is already in the autocast dtype. Every LayerNorm of a block feeds a Linear, which casts its
input to that dtype anyway, so the values are the same and the separate cast pass disappears.

The fast path is used only where it is safe: CUDA tensors, Triton importable, not under ``torch.compile``
(Inductor fuses the native op with its neighbours already) or a dispatch mode (the MAC counter must see the aten
op), ``SRET_FAST_LN`` not ``0``. Measured on an H100 (``docs/perf_notes.md``): SReT-T eager inference 22.5 ->
20.6 ms a batch of 256; the training step moved by less than its run-to-run spread.
Everywhere else (the CPU, compiled graphs) :class:`TokenLayerNorm` is the plain ``nn.LayerNorm``; its parameters
and state-dict names are unchanged.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from sret.models.kernel_launch import cdiv, launchable, next_power_of_2

try:  # Triton ships with CUDA builds of PyTorch; CPU-only installs may lack it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

_MAX_C = 1024


def fused_kernels_enabled(x: torch.Tensor) -> bool:
    """Whether the fused Triton kernels (sublayers, stem, pools) may run on ``x``: Triton importable, not switched off
    (``SRET_FUSED_KERNELS=0``), ``x`` on CUDA or on the CPU under Triton's interpreter (how the CPU tests run them)."""
    if triton is None or os.environ.get("SRET_FUSED_KERNELS", "1") == "0":
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def fast_layer_norm_available(x: torch.Tensor) -> bool:
    """Whether :func:`fast_layer_norm` may run on ``x`` (else use ``F.layer_norm``)."""
    if triton is None or os.environ.get("SRET_FAST_LN", "1") == "0":
        return False
    interpret = os.environ.get("TRITON_INTERPRET") == "1"  # CPU tests run the kernels through Triton's interpreter
    return (x.is_cuda or interpret) and x.shape[-1] <= _MAX_C and x.dtype in (torch.float32, torch.bfloat16,
                                                                                torch.float16)


if triton is not None:

    @triton.jit
    def _ln_fwd(X, Y, W, B, Mean, Rstd, IDX, M, C: tl.constexpr, Y_STRIDE, N_TOK, eps, PAD: tl.constexpr,
                ONES: tl.constexpr, HAS_IDX: tl.constexpr, STATS_AT_SRC: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_C: tl.constexpr):
        eps = tl.cast(eps, tl.float32)  # fp64 where Inductor launches it
        # With PAD > 0 each output row is followed by PAD (<= 8) extra columns, zero, or with ONES (1, 0, ..., 0): a
        # weight-gradient GEMM against that matrix then yields the bias gradient as its extra column (no separate
        # reduction pass); zero padding gives 16-byte aligned rows for the GEMM kernels.
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_C)
        rmask = rows < M
        cmask = cols < C
        mask = rmask[:, None] & cmask[None, :]
        src = rows.to(tl.int64)
        if HAS_IDX:  # output row r is input row (r // N) * N + IDX[r % N]: tokens reordered within each sample
            src = (src // N_TOK) * N_TOK + tl.load(IDX + rows % N_TOK, mask=rmask, other=0).to(tl.int64)
        offs = src[:, None] * C + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / C
        xc = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / C
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
        b = tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)
        y = xc * rstd[:, None] * w[None, :] + b[None, :]
        yrow = rows[:, None].to(tl.int64) * Y_STRIDE
        tl.store(Y + yrow + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
        if PAD > 0:
            pcols = tl.arange(0, 8)
            ones = tl.where((pcols == 0) & ONES, 1.0, 0.0)[None, :] + tl.zeros((BLOCK_M, 8), dtype=tl.float32)
            tl.store(Y + yrow + C + pcols[None, :], ones.to(Y.dtype.element_ty),
                     mask=rmask[:, None] & (pcols < PAD)[None, :])
        if STATS_AT_SRC:  # the statistics in the input's row order
            tl.store(Mean + src, mean, mask=rmask)
            tl.store(Rstd + src, rstd, mask=rmask)
        else:
            tl.store(Mean + rows, mean, mask=rmask)
            tl.store(Rstd + rows, rstd, mask=rmask)

    # C is a compile-time constant (one compilation per model width): Triton then knows how the rows of SReT-S's 126
    # and 252 channels align and vectorises their loads (the LayerNorm forward: 5.66 -> 2.99 ms a SReT-S training
    # step, run 107). The strides of dy and of the low copy are plain arguments, not specialised, except where
    # _CONSTANT_STRIDES makes them constants too (STRIDES_K): run 110 measured that per width. See
    # docs/perf_notes.md, changes 54-57.
    @triton.jit(do_not_specialize=["DY_STRIDE", "LOW_W"])
    def _ln_bwd(X, DY, DX, DX_LOW, S_LOW, W, Mean, Rstd, DW, DB, G, C1, GX, GS, S, ZERO, IDX, M, C: tl.constexpr,
                N_TOK, DY_STRIDE, LOW_W, num_tiles, DY_STRIDE_K: tl.constexpr, LOW_W_K: tl.constexpr,
                STRIDES_K: tl.constexpr, HAS_RES: tl.constexpr, HAS_GSUM: tl.constexpr, HAS_SCALE: tl.constexpr,
                HAS_LOW: tl.constexpr, LOW_SCALE: tl.constexpr, DY_IDX: tl.constexpr, LOW_IDX: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, ACC2D: tl.constexpr):
        # Each program walks tiles pid, pid + P, ... and keeps its own dW/dB partial sums (reduced by the caller),
        # so the weight gradients need no atomics and stay deterministic. With HAS_RES the same pass also finishes
        # a scaled residual ``out = c1 * x + f(LN(x))``: DX += c1 * G and a partial sum(G * X) (the gradient of c1)
        # per program, so the residual's backward costs no extra pass over the tokens. With HAS_GSUM it also keeps
        # partial column sums of G (times a per-sample scale S with HAS_SCALE): the bias gradient of the Linear
        # that produced the branch, again without a pass of its own. With HAS_LOW DX is also stored rounded to
        # DX_LOW's dtype (times a per-sample scale S_LOW with LOW_SCALE): the operand the backward of the sublayer
        # before this one feeds its GEMMs, without a pass of its own. Program 0 also sets the int32 at ZERO to 0:
        # the counter of the launch that may finish the sums (``backward_finish.py``), zeroed without a launch.
        # DY_IDX / LOW_IDX: DY is read, DX_LOW written, with each sample's tokens in another order: the row of token
        # j is (row // N_TOK) * N_TOK + IDX[j] there (the sliced attention's shuffle, gathered inside the pass).
        # DY's rows are DY_STRIDE apart (>= C: the GEMM that makes dy may write zero-padded, 16-byte aligned rows);
        # DX_LOW's rows are LOW_W wide (C <= LOW_W <= BLOCK_C), zeros past C: the GEMMs that read it get aligned rows.
        if STRIDES_K:  # the same strides as compile-time constants (see _CONSTANT_STRIDES)
            dy_stride = DY_STRIDE_K
            low_w = LOW_W_K
        else:
            dy_stride = DY_STRIDE
            low_w = LOW_W
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        if pid == 0:
            tl.store(ZERO, 0)
        cols = tl.arange(0, BLOCK_C)
        cmask = cols < C
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
        # ACC2D: the column sums accumulate per element of the tile, (BLOCK_M, BLOCK_C), and are reduced over rows
        # once at the end; else each tile's rows are summed as it is done (a reduction across warps a tile, each
        # through shared memory with a barrier).
        acc_rows: tl.constexpr = BLOCK_M if ACC2D else 1
        dw_acc = tl.zeros((acc_rows, BLOCK_C), dtype=tl.float32)
        db_acc = tl.zeros((acc_rows, BLOCK_C), dtype=tl.float32)
        gx_acc = tl.zeros((acc_rows, BLOCK_C), dtype=tl.float32)
        gs_acc = tl.zeros((acc_rows, BLOCK_C), dtype=tl.float32)
        if HAS_RES:
            c1 = tl.load(C1).to(tl.float32)
        for tile in range(pid, num_tiles, nprog):
            rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
            rmask = rows < M
            mask = rmask[:, None] & cmask[None, :]
            offs = rows[:, None].to(tl.int64) * C + cols[None, :]
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            if DY_IDX or LOW_IDX:  # the rows of this tile's tokens in the other order
                prow = (rows // N_TOK) * N_TOK + tl.load(IDX + rows % N_TOK, mask=rmask, other=0)
            if DY_IDX:
                dy = tl.load(DY + prow[:, None].to(tl.int64) * dy_stride + cols[None, :], mask=mask, other=0.0)
            else:
                dy = tl.load(DY + rows[:, None].to(tl.int64) * dy_stride + cols[None, :], mask=mask, other=0.0)
            dy = dy.to(tl.float32)
            mean = tl.load(Mean + rows, mask=rmask, other=0.0)
            rstd = tl.load(Rstd + rows, mask=rmask, other=0.0)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
            wdy = dy * w[None, :]
            k1 = tl.sum(xhat * wdy, axis=1) / C
            k2 = tl.sum(wdy, axis=1) / C
            dx = (wdy - (xhat * k1[:, None] + k2[:, None])) * rstd[:, None]
            if HAS_RES:
                g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
                dx += c1 * g
                if ACC2D:
                    gx_acc += g * x
                else:
                    gx_acc += tl.sum(g * x, axis=0)[None, :]
                if HAS_GSUM:
                    if HAS_SCALE:
                        g = g * tl.load(S + rows // N_TOK, mask=rmask, other=0.0).to(tl.float32)[:, None]
                    if ACC2D:
                        gs_acc += g
                    else:
                        gs_acc += tl.sum(g, axis=0)[None, :]
            tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
            if HAS_LOW:
                low = dx.to(DX.dtype.element_ty)
                if LOW_SCALE:
                    low = low * tl.load(S_LOW + rows // N_TOK, mask=rmask, other=0.0).to(DX.dtype.element_ty)[:, None]
                low = tl.where(cmask[None, :], low, 0.0).to(DX_LOW.dtype.element_ty)  # zeros from C to LOW_W
                lmask = rmask[:, None] & (cols < low_w)[None, :]
                if LOW_IDX:
                    tl.store(DX_LOW + prow[:, None].to(tl.int64) * low_w + cols[None, :], low, mask=lmask)
                else:
                    tl.store(DX_LOW + rows[:, None].to(tl.int64) * low_w + cols[None, :], low, mask=lmask)
            if ACC2D:
                dw_acc += dy * xhat
                db_acc += dy
            else:
                dw_acc += tl.sum(dy * xhat, axis=0)[None, :]
                db_acc += tl.sum(dy, axis=0)[None, :]
        tl.store(DW + cols * nprog + pid, tl.sum(dw_acc, axis=0), mask=cmask)
        tl.store(DB + cols * nprog + pid, tl.sum(db_acc, axis=0), mask=cmask)
        if HAS_RES:
            tl.store(GX + cols * nprog + pid, tl.sum(gx_acc, axis=0), mask=cmask)
            if HAS_GSUM:
                tl.store(GS + cols * nprog + pid, tl.sum(gs_acc, axis=0), mask=cmask)


def _tiling(C: int) -> tuple[int, int]:
    block_c = next_power_of_2(C)
    block_m = max(1, 4096 // block_c)  # ~4k elements a program: enough rows in flight, no register spills
    return block_m, block_c


# Widths whose LayerNorm backward gets dy's row stride and the low copy's width as compile-time constants: run 110
# (benchmarks/ln_backward_stride.py, H100, batch 256, dy in padded rows) measured 126 channels at 166 / 152 us a call
# (MLP / sliced-attention form) against 179 / 250 with the strides as arguments, but 252 channels at 147 / 149 us
# against 82 / 99, and SReT-T's 64 the same either way.
_CONSTANT_STRIDES = frozenset({126})

# The backward's launch: (rows a tile, warps, programs per SM (0: one program per tile), column sums per element).
BackwardConfig = tuple[int, int, int, bool]

# The fastest launch per SReT width at batch 256 (``benchmarks/sweep_ln_backward.py``, H100; the rows of one width
# differ only with the batch). Run 54: the per-element column sums (ACC2D) cut SReT-T's three shapes from 85 / 65 /
# 52 us to 71 / 43 / 34 us; SReT-S's 252 and 504 wide rows keep the per-tile sums, which won there. Run 78, with the
# bf16 copy of dx the fused sublayers now ask for (``--low``, 16 bytes a channel instead of 14): three widths moved,
# T's 64 (106.6 -> 100.6 us), S's 126 (240.0 -> 227.5) and 252 (123.2 -> 114.0). Eight warps (width 64) sum each
# row in another order than four, so dx differs from the four-warp launches in its last bits.
_BACKWARD_TABLE: dict[int, BackwardConfig] = {
    64: (32, 8, 2, True), 128: (16, 4, 2, True), 256: (8, 4, 2, True),
    126: (16, 4, 2, True), 252: (16, 4, 2, False), 504: (8, 4, 2, False),
}


def backward_config(M: int, C: int) -> BackwardConfig:
    """The LayerNorm backward's launch for M rows of C channels: the measured table, else ~4k-element tiles with the
    sums per tile, four programs per SM."""
    if C in _BACKWARD_TABLE:
        return _BACKWARD_TABLE[C]
    block_m, _ = _tiling(C)
    return block_m, 4, 4, False


def ones_column_width(C: int) -> int:
    """Row width of a LayerNorm output with a ones column appended: C + 1 rounded up to a multiple of 8 (so that
    bf16 rows stay 16-byte aligned for cuBLAS)."""
    return (C + 1 + 7) // 8 * 8


def ln_forward(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
               out_dtype: torch.dtype, ones_column: bool = False, width: Optional[int] = None,
               rows: Optional[torch.Tensor] = None, stats_in_input_order: bool = False,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm of contiguous rows ``x2`` (M, C): ``(y in out_dtype, mean (M,), rstd (M,))``, float32 statistics.

    With ``ones_column`` y is (M, :func:`ones_column_width`) with column C all ones and the rest of the padding zero:
    ``dz.T @ y`` then holds the weight gradient in its first C columns and the bias gradient in column C. Otherwise
    ``width`` (C to C + 8) gives rows of that many columns, the extra ones zero.

    ``rows`` (a permutation of the N tokens of each sample, int64, M divisible by N) reorders the tokens on the way
    in: output row ``b * N + j`` is the LayerNorm of input row ``b * N + rows[j]``. The sliced attention's shuffle
    then costs no pass of its own. The statistics follow the output order, or with ``stats_in_input_order`` the
    input's (what a backward in the input's order needs: no gather of its own).
    """
    M, C = x2.shape
    tokens = rows.numel() if rows is not None else 1
    if rows is not None and (M % tokens or rows.dtype != torch.int64):
        raise ValueError(f"ln_forward: rows must be an int64 permutation of each sample's tokens ({M} rows in all)")
    width = ones_column_width(C) if ones_column else (width or C)
    if not C <= width <= C + 8:
        raise ValueError(f"ln_forward: width {width} must be within C = {C} and C + 8")
    y = torch.empty((M, width), device=x2.device, dtype=out_dtype)
    mean = torch.empty(M, device=x2.device, dtype=torch.float32)
    rstd = torch.empty(M, device=x2.device, dtype=torch.float32)
    block_m, block_c = _tiling(C)
    launchable(_ln_fwd)[(cdiv(M, block_m),)](
        x2, y, weight, bias, mean, rstd, rows if rows is not None else weight, M, int(C), width, tokens, eps,
        PAD=width - C, ONES=ones_column, HAS_IDX=rows is not None,
        STATS_AT_SRC=stats_in_input_order and rows is not None, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=4)
    return y, mean, rstd


def ln_backward(dy2: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                residual_grad: Optional[torch.Tensor] = None, c1: Optional[torch.Tensor] = None,
                grad_sum: bool = False, scale: Optional[torch.Tensor] = None, tokens: int = 1,
                config: Optional[BackwardConfig] = None, dx_low: Optional[torch.Tensor] = None,
                dx_low_scale: Optional[torch.Tensor] = None, dy_rows: Optional[torch.Tensor] = None,
                dx_low_rows: Optional[torch.Tensor] = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of :func:`ln_forward` for the incoming ``dy2`` (M, C): ``(dx, dweight, dbias, dc1, gsum)``.

    With ``residual_grad`` (the gradient ``g`` of ``out = c1 * x + f(LN(x))``, float32, (M, C)) and the one-element
    ``c1``, ``dx`` also carries ``c1 * g`` and ``dc1 = sum(g * x)``; otherwise ``dc1`` is None. With ``grad_sum``
    (needs ``residual_grad``) ``gsum`` is the column sum of ``g``, each row times ``scale[row // tokens]`` if
    ``scale`` (B,) is given; otherwise None. ``config`` overrides :func:`backward_config` (for the tile sweep,
    ``benchmarks/sweep_ln_backward.py``). ``dy2`` may have rows further apart than C (a view of the first C columns
    of zero-padded rows). ``dx_low`` (M, C'), contiguous, in a lower-precision dtype: also gets ``dx``,
    rounded to its dtype, in the same pass: exactly ``dx.to(dx_low.dtype)``, or with ``dx_low_scale`` (B,) exactly
    ``(dx * dx_low_scale[row // tokens]).to(dx_low.dtype)``, in its first C columns; C' may exceed C up to the next
    power of 2, and the columns past C get zeros (16-byte aligned rows for the GEMMs that read the copy).

    ``dy_rows`` and ``dx_low_rows`` (int64, a position for each of the ``tokens`` tokens of a sample) put ``dy2``'s
    rows, and those written to ``dx_low``, in another order: token j of sample b is row ``b * tokens + idx[j]``
    there. Both, if given, must be the same tensor (one index is loaded per tile).
    """
    dx, partial = ln_backward_partials(dy2, x2, weight, mean, rstd, residual_grad, c1, grad_sum, scale, tokens,
                                       config, dx_low, dx_low_scale, dy_rows, dx_low_rows)[:2]
    has_res = residual_grad is not None
    sums = partial.sum(-1)  # (n, C)
    dc1 = sums[2].sum().reshape(1) if has_res else None
    gsum = sums[3] if grad_sum else None
    return dx, sums[0].to(weight.dtype), sums[1].to(weight.dtype), dc1, gsum


def ln_backward_partials(dy2: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                         rstd: torch.Tensor, residual_grad: Optional[torch.Tensor] = None,
                         c1: Optional[torch.Tensor] = None, grad_sum: bool = False,
                         scale: Optional[torch.Tensor] = None, tokens: int = 1,
                         config: Optional[BackwardConfig] = None, dx_low: Optional[torch.Tensor] = None,
                         dx_low_scale: Optional[torch.Tensor] = None, dy_rows: Optional[torch.Tensor] = None,
                         dx_low_rows: Optional[torch.Tensor] = None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`ln_backward`'s one launch: ``(dx, partial, counter)`` with the column sums left per program, ``partial``
    (n, C, programs) float32, rows d weight, d bias, then ``g * x`` with ``residual_grad`` and ``g * s`` with
    ``grad_sum``, and ``counter`` one int32 the launch sets to 0. A caller that finishes the sums in a launch of its
    own (``backward_finish.py``, which counts its programs in ``counter``) saves the two reductions
    :func:`ln_backward` adds, and zeroing the counter costs no launch either."""
    M, C = x2.shape
    if dy2.shape != (M, C) or dy2.stride(1) != 1 or dy2.stride(0) < C:
        raise ValueError(f"ln_backward: dy must be ({M}, {C}) with unit column stride, got {tuple(dy2.shape)} with "
                         f"strides {dy2.stride()}")
    if dx_low is not None and (dx_low.dim() != 2 or dx_low.shape[0] != M
                               or not C <= dx_low.shape[1] <= next_power_of_2(C) or not dx_low.is_contiguous()):
        raise ValueError(f"ln_backward: dx_low must be a contiguous ({M}, C') tensor, {C} <= C' <= "
                         f"{next_power_of_2(C)}, got {tuple(dx_low.shape)}")
    if dx_low_rows is not None and dx_low is None:
        raise ValueError("ln_backward: dx_low_rows needs dx_low")
    idx = dy_rows if dy_rows is not None else dx_low_rows
    if idx is not None and (dx_low_rows is not None and dx_low_rows is not idx or idx.dtype != torch.int64
                            or idx.shape != (tokens,) or M % tokens):
        raise ValueError(f"ln_backward: dy_rows / dx_low_rows must be one int64 index of the {tokens} tokens of a "
                         f"sample ({M} rows in all)")
    dx = torch.empty((M, C), device=x2.device, dtype=x2.dtype)
    block_m, warps, per_sm, acc2d = config or backward_config(M, C)
    block_c = next_power_of_2(C)
    num_tiles = cdiv(M, block_m)
    programs = min(num_tiles, per_sm * _sm_count(x2.device)) if per_sm else num_tiles
    has_res = residual_grad is not None
    if has_res and c1 is None:
        raise ValueError("ln_backward: residual_grad needs its coefficient c1")
    if grad_sum and not has_res:
        raise ValueError("ln_backward: grad_sum needs residual_grad")
    # One buffer for the per-program partial sums of dW, dB (and sum(g * x), sum(g)): one reduction launch for all.
    # Programs run along the last, contiguous dim, so that reduction runs over contiguous memory: reduced over a
    # leading dim instead, PyTorch gave each of the n * C outputs one thread walking all programs (~15 us a call on
    # an H100, docs/perf_notes.md, change 32).
    n = 2 + has_res + grad_sum
    partial = torch.empty((n, C, programs), device=x2.device, dtype=torch.float32)
    counter = torch.empty(1, device=x2.device, dtype=torch.int32)
    dw, db = partial[0], partial[1]
    gx = partial[2] if has_res else dw
    gs = partial[3] if grad_sum else dw
    dy_stride, low_w = int(dy2.stride(0)), int(dx_low.shape[1]) if dx_low is not None else int(C)
    constant = int(C) in _CONSTANT_STRIDES
    launchable(_ln_bwd)[(programs,)](
        x2, dy2, dx, dx_low if dx_low is not None else dx, dx_low_scale if dx_low_scale is not None else weight,
        weight, mean, rstd, dw, db, residual_grad if has_res else x2, c1 if has_res else weight, gx, gs,
        scale if scale is not None else weight, counter, idx if idx is not None else counter, M, int(C), tokens,
        dy_stride, low_w, num_tiles, dy_stride if constant else 0, low_w if constant else 0, constant,
        HAS_RES=has_res, HAS_GSUM=grad_sum, HAS_SCALE=scale is not None, HAS_LOW=dx_low is not None,
        LOW_SCALE=dx_low_scale is not None,
        DY_IDX=dy_rows is not None, LOW_IDX=dx_low_rows is not None, BLOCK_M=block_m, BLOCK_C=block_c, ACC2D=acc2d,
        num_warps=warps)
    return dx, partial, counter


_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached: the query is a host call); 1 off CUDA (interpreter)."""
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


class _FastLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                out_dtype: torch.dtype) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        y, mean, rstd = ln_forward(x2, weight, bias, eps, out_dtype)
        ctx.save_for_backward(x2, weight, mean, rstd)
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db, _, _ = ln_backward(dy.reshape(x2.shape).contiguous(), x2, weight, mean, rstd)
        return dx.reshape(dy.shape), dw, db, None, None


def fast_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                    out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``F.layer_norm(x, (C,), weight, bias, eps)`` through the Triton kernels, output in ``out_dtype``."""
    return _FastLayerNorm.apply(x, weight, bias, eps, out_dtype or x.dtype)


class TokenLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the channels of ``(..., C)`` tokens, with the Triton path on CUDA in eager mode.

    Same parameters and state-dict names as ``nn.LayerNorm`` (published checkpoints load unchanged).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Native op under compile (Inductor fuses it) and under any dispatch mode (the MAC counter, fake tensors):
        # those must see ``aten.native_layer_norm``, which an opaque Triton launch would hide.
        if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None or not self.elementwise_affine \
                or self.bias is None or not fast_layer_norm_available(x):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            out_dtype = torch.get_autocast_dtype(device_type)
        else:
            out_dtype = x.dtype
        return fast_layer_norm(x, self.weight, self.bias, self.eps, out_dtype)
