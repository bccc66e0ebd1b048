"""Fused residual sublayers for eager mode: one autograd node per sublayer instead of a dozen.

Why: SReT-T applies 60 narrow residual sublayers (attention, MLP, NLL at C = 64 / 128 / 256) per forward. In eager
PyTorch each one is ~12 small ops forward and ~30 backward, each recorded by autograd and launched separately, and
at batch 256 on an H100 the step is as much bound by that dispatch work as by the GPU (docs/perf_notes.md). Here a
whole sublayer

    out = c1 * x + c2 * s * f(LayerNorm(x))      f = MLP, or attention + projection; s = drop-path keep scale

is one ``torch.autograd.Function`` whose backward is written out: the coefficient gradients come from the weight
gradients already computed (``dc2 = <W, G^T A> + <b, sum G>``, no pass over the tokens), the LayerNorm backward
finishes the residual in the same pass (``dx += c1 * g``, ``dc1 = sum(g * x)``, in the Triton kernel on CUDA), and
what is saved is chosen for memory: the residual input (shared with the previous sublayer's output), the
LayerNorm statistics and the MLP's pre-activation (or the attention core's output and log-sum-exp). The LayerNorm
output, the GELU and q/k/v are recomputed in backward, where the attention kernel's own backward runs: the Triton
one of ``group_attention.py`` for the groups it covers, else cuDNN's or flash attention's (where sdpa would run
neither, q/k/v are kept instead and the core is re-run under autograd).
Measured on an H100 (docs/perf_notes.md): SReT-T's training peak at batch 256 falls from 8.24 to 4.52 GiB.
The forward of the MLP/NLL sublayers is one Triton launch where that was measured to pay (``sublayer_kernels.py``).

Semantics are exactly the unfused modules' (``RecursiveBlock`` / ``NonLinearProjection`` in ``blocks.py``), under
autocast too: LayerNorm in float32 with its output cast to the autocast dtype, Linear/GELU in that dtype, the
residual sum in float32. ``tests/models/test_fused.py`` checks values and every gradient against the unfused path
in float64 and under bf16 autocast. Where the fused path does not apply (``torch.compile`` traces the plain modules
and fuses them itself; dispatch modes such as the MAC counter; active dropout; ``SRET_FUSED=0``) the modules run
unfused.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend
from torch.utils._python_dispatch import _get_current_dispatch_mode

from sret.models import backward_finish as _finish
from sret.models import layernorm as _ln
from sret.models import shared_weights
from sret.models.attention import invert_permutation, split_qkv
from sret.models.group_attention import backward_applies, group_attention, group_attention_backward
from sret.models import sublayer_kernels as _kernels


def fused_enabled() -> bool:
    """Whether the fused sublayers may run here (eager, no dispatch mode, not switched off)."""
    if os.environ.get("SRET_FUSED", "1") == "0":
        return False
    return not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the Linears run in: the autocast dtype when autocast is on for ``x``'s device, else ``x``'s."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


# ---------------------------------------------------------------------------------------------- LayerNorm pieces
def _layer_norm(x2: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float, dtype: torch.dtype, triton: bool,
                ones_column: bool = False, width: Optional[int] = None):
    """``(LN(x2) in dtype, mean, rstd)``; Triton kernel on CUDA, the native op elsewhere.

    ``ones_column`` (Triton only) appends a column of ones (and zero padding), ``width`` zero columns up to that
    width: see ``layernorm.ln_forward``.
    """
    if triton:
        return _ln.ln_forward(x2, w, b, eps, dtype, ones_column=ones_column, width=width)
    y, mean, rstd = torch.native_layer_norm(x2, (x2.shape[-1],), w, b, eps)
    return y.to(dtype), mean, rstd


def _layer_norm_backward(gy: torch.Tensor, x2: torch.Tensor, w: torch.Tensor, b: torch.Tensor, mean: torch.Tensor,
                         rstd: torch.Tensor, g: torch.Tensor, c1: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                         tokens: int, triton: bool, low: Optional[tuple] = None,
                         dy_rows: Optional[torch.Tensor] = None):
    """Gradient of ``out = c1 * x + s * f(LN(x))`` w.r.t. x, the LN affine and c1, given ``gy = d f / d LN(x)``.

    ``c1`` None means a plain residual (``out = x + f``). Also returns ``gsum``, the column sum of ``g * s`` (the bias
    gradient of the Linear whose output is the branch), computed in the same pass on the Triton path. There, with
    ``low`` = ``(dtype, scale, order)``, dx comes with ``(dx * scale).to(dtype)`` made in the same pass (its rows in
    ``order``'s token order if that is not None, see :func:`_mark_output`), for the backward of
    the sublayer before (see :func:`_keep_low_copy`). ``dy_rows``: gy holds each sample's tokens in another order,
    token j at position ``dy_rows[j]`` (the sliced attention's shuffle; see ``layernorm.ln_backward``).
    """
    coef = c1 if c1 is not None else torch.ones(1, device=x2.device, dtype=x2.dtype)
    if triton:
        dx, dw, db, dc1, gsum = _triton_ln_backward(_ln.ln_backward, gy, x2, w, mean, rstd, g, coef, scale, tokens,
                                                    low, dy_rows)
        dc1 = dc1.to(coef.dtype)
    else:
        if dy_rows is not None:  # back to grid order
            gy = gy.view(-1, tokens, gy.shape[-1]).index_select(1, dy_rows).view(gy.shape)
        dx, dw, db = torch.ops.aten.native_layer_norm_backward(
            gy.to(x2.dtype), x2, (x2.shape[-1],), mean, rstd, w, b, [True, True, True])
        dc1 = torch.dot(g.reshape(-1), x2.reshape(-1).to(g.dtype)).reshape(1).to(coef.dtype) if c1 is not None else None
        g_s = g if scale is None else g * scale.repeat_interleave(tokens)[:, None]
        gsum = g_s.sum(0)
        dx = torch.addcmul(dx, g, coef) if c1 is not None else dx + g
    return dx, dw, db, (dc1 if c1 is not None else None), gsum


def _triton_ln_backward(launch, gy: torch.Tensor, x2: torch.Tensor, w: torch.Tensor, mean: torch.Tensor,
                        rstd: torch.Tensor, g: torch.Tensor, coef: torch.Tensor, scale: Optional[torch.Tensor],
                        tokens: int, low: Optional[tuple], dy_rows: Optional[torch.Tensor] = None):
    """``launch`` (``layernorm.ln_backward`` or ``ln_backward_partials``) with the residual, the gradient sum and,
    with ``low``, dx's low-precision copy, which is then kept on dx (:func:`_keep_low_copy`): in the token order
    ``low`` names, if it names one. ``dy_rows``: see :func:`_layer_norm_backward`."""
    copy = torch.empty((x2.shape[0], low_copy_width(x2.shape[1])), device=x2.device, dtype=low[0]) \
        if low is not None else None
    order = low[2] if low is not None else None  # (perm, inv_perm): the copy in perm's order
    out = launch(gy, x2, w, mean, rstd, g, coef, grad_sum=True, scale=scale, tokens=tokens, dx_low=copy,
                 dx_low_scale=low[1] if low else None, dy_rows=dy_rows,
                 dx_low_rows=order[1] if order is not None else None)
    if copy is not None:
        _keep_low_copy(out[0], copy, low[1], order[0] if order is not None else None)
    return out


def _use_triton(x: torch.Tensor) -> bool:
    return _ln.triton is not None and _ln.fast_layer_norm_available(x) and x.shape[-1] <= _ln._MAX_C


def aligned_width(C: int) -> int:
    """``C`` rounded up to a multiple of 8: the row width the kernel paths give a (tokens, C) GEMM operand or output
    in the compute dtype, zero columns past C. cuBLAS runs GEMMs over rows that are not 16-byte aligned (SReT-S's 126
    and 252 channels) on its sm_80 kernels at a fraction of the speed of the aligned ones (docs/perf_notes.md,
    change 54)."""
    return C + (-C % 8)


def low_copy_width(C: int) -> int:
    """The row width of the branch gradient's copy (:func:`_branch_grad`) on the kernel paths: :func:`aligned_width`
    where the LayerNorm backward's tile covers it (C >= 8), else C."""
    return aligned_width(C) if C >= 8 else C


def _recompute_ln(x: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor, eps: float, dtype: torch.dtype,
                  triton: bool, perm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The LayerNorm output of ``x`` (B, N, C) again, (B*N, C) in ``dtype``, for a backward. On the Triton path it
    carries a ones column (see :func:`_ln_linear_backward`), and ``perm`` puts each sample's rows in that order."""
    B, N, C = x.shape
    x2 = x.view(B * N, C)
    if perm is not None:
        return _ln.ln_forward(x2, ln_w, ln_b, eps, dtype, ones_column=True, rows=perm)[0]  # rows in perm order
    return _layer_norm(x2, ln_w, ln_b, eps, dtype, triton, ones_column=triton)[0]


_FINISH_IN_ONE_LAUNCH = True  # tests switch it off to compare with the separate launches
_GATHER_IN_KERNELS = True  # tests switch it off: the sliced attention's backward gathers with index_select instead


def _ln_linear_backward(dz: torch.Tensor, x: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor, w: torch.Tensor,
                        mean: torch.Tensor, rstd: torch.Tensor, g: torch.Tensor, c1: Optional[torch.Tensor],
                        scale: Optional[torch.Tensor], eps: float, dtype: torch.dtype, triton: bool,
                        perm: Optional[torch.Tensor] = None, inv_perm: Optional[torch.Tensor] = None,
                        xn: Optional[torch.Tensor] = None, w16: Optional[torch.Tensor] = None,
                        low: Optional[tuple] = None, proj: Optional[tuple] = None, lin_rows: Optional[int] = None,
                        add: Optional[tuple] = None):
    """Backward of ``c1 * x + ... z`` with ``z = LN(x) @ w.T + b``, given ``dz`` (M, out) and ``g = d out`` (B, N, C).

    The LN output is recomputed from the saved statistics. Returns ``(dx, dln_w, dln_b, dw, db, dc1, gsum, added)``,
    with ``gsum`` the column sum of ``g * s`` (see :func:`_layer_norm_backward`) and ``added`` (see ``add``).

    ``proj = (gw, w_p, b_p, c2)``: the branch ends in ``c2 * (a @ w_p.T + b_p)`` and ``gw = g_s^T a``
    (:func:`_projection_grads`). Its gradients are finished here too: the last item returned is ``(dw_p, db_p,
    dc2)`` instead of ``gsum``. On the Triton path with both coefficients every parameter gradient is finished in
    one launch (``backward_finish.py``); otherwise by :func:`_finish_projection`. There ``lin_rows`` (the ``lin``
    layer's outputs where ``dz`` is wider, zero-padded) gives dw and db their parameters' rows, and ``add`` (the
    gradients of ``(ln_w, ln_b, w, b, w_p, b_p, c1, c2)`` handed over by a later application,
    ``shared_weights.hand_over``) is added in the same launch where the shapes match; ``added`` says whether it was
    (else the caller adds it).

    On the Triton path the recomputed LN output carries a ones column, so the weight-gradient GEMM also yields
    ``db = sum(dz)`` (rounded to the compute dtype, as autograd's bias gradient of a bf16 ``addmm`` is): no
    separate reduction over the (M, out) gradient.

    ``perm`` (Triton path only): the rows of ``dz`` hold each sample's tokens in the order ``perm`` (the sliced
    attention's shuffle). The LN output is recomputed in that order (the weight gradients are sums over rows, so any
    common order gives them), and only ``dz @ w``, (M, C), goes back to grid order: the LayerNorm backward reads
    its rows through ``inv_perm`` (on the Triton path; else a gather).
    ``xn``: the LayerNorm output from :func:`_recompute_ln` where the caller already has it; ``w16``: ``w`` in the
    compute dtype where the forward kept it (its first ``w``-width columns are used, so it may be zero-padded; all
    of them where they are :func:`aligned_width` columns, and dz @ w16 then has aligned rows).
    ``low``: the copy of dx to make for the sublayer before (:func:`_low_copy_request`), or None.
    """
    B, N, C = x.shape
    x2 = x.view(B * N, C)
    if xn is None:
        xn = _recompute_ln(x, ln_w, ln_b, eps, dtype, triton, perm)
    dwb = torch.mm(dz.t(), xn)  # (out, C) or, with the ones column, (out, C + pad)
    if w16 is not None and w16.shape[1] == aligned_width(C) > C:  # zero columns past C: dxn's rows 16-byte aligned
        dxn = torch.mm(dz, w16)[:, :C]  # (M, C) view of (M, aligned_width(C)); the LayerNorm backward reads it so
    else:
        dxn = torch.mm(dz, w.to(dtype) if w16 is None else w16[:, :C])
    dy_rows = None
    if perm is not None and _GATHER_IN_KERNELS:  # dxn's rows in perm's order: the LayerNorm backward reads them so
        dy_rows = inv_perm
    elif perm is not None:
        dxn = dxn.view(B, N, C).index_select(1, inv_perm).view(B * N, C)  # back to grid order
    if (_FINISH_IN_ONE_LAUNCH and proj is not None and triton and c1 is not None and proj[3] is not None
            and _finish.applies(x2, proj[0], proj[1], proj[2], dwb)):
        dx, partial, counter = _triton_ln_backward(_ln.ln_backward_partials, dxn, x2, ln_w, mean, rstd,
                                                   g.view(B * N, C), c1, scale, N, low, dy_rows)
        n_lin = lin_rows or dwb.shape[0]
        # ``add`` reordered as finish_sublayer's results: (ln_w, ln_b, c1, w_p, b_p, c2, w, b)
        ordered = None if add is None else (add[0], add[1], add[6], add[4], add[5], add[7], add[2], add[3])
        fits = ordered is not None and all(
            a is not None and a.is_contiguous() and tuple(a.shape) == shape for a, shape in zip(ordered, (
                (C,), (C,), (1,), tuple(proj[1].shape), tuple(proj[2].shape), (1,), (n_lin, C), (n_lin,))))
        dlw, dlb, dc1, dw_p, db_p, dc2, dw, db = _finish.finish_sublayer(
            partial, counter, *proj[:3], c1, proj[3], dwb, w.dtype, ln_w.dtype, lin_rows=n_lin,
            add=ordered if fits else None)
        return _reshape_with_low_copy(dx, (B, N, C)), dlw, dlb, dw, db, dc1, (dw_p, db_p, dc2), fits
    dw = dwb[:, :C].to(w.dtype)
    db = dwb[:, C].to(w.dtype) if triton else dz.sum(0, dtype=w.dtype)
    dx, dlw, dlb, dc1, gsum = _layer_norm_backward(dxn, x2, ln_w, ln_b, mean, rstd, g.view(B * N, C), c1, scale, N,
                                                   triton, low=low if triton else None, dy_rows=dy_rows)
    last = _finish_projection(proj[0], gsum, *proj[1:]) if proj is not None else gsum
    return _reshape_with_low_copy(dx, (B, N, C)), dlw, dlb, dw, db, dc1, last, False


# ------------------------------------------------------------------------- the residual gradient's low-precision copy
# Every sublayer's backward starts by turning its incoming float32 gradient g into its branch's, ``(g * s)`` rounded
# to the compute dtype (s the per-sample drop-path scale), for the GEMMs of its output projection. g is the dx of the
# sublayer after it, which the LayerNorm backward kernel writes; that kernel now also writes the branch's operand in
# the same pass, and it travels on the gradient tensor itself (an attribute, with the version counter it was made
# at). The separate cast took ~0.75 ms of SReT-T's training step at batch 256, 58 launches (docs/perf_notes.md,
# change 45). The forward links the two: a fused sublayer's output carries its drop-path scale
# (:func:`_mark_output`), and the sublayer that takes it as input asks its LayerNorm backward for the copy
# (:func:`_low_copy_request`). If autograd hands the backward another tensor (a sum of gradients, a cast) or changed
# this one in place, the attribute is missing or stale and the backward computes the operand as before: the values
# are the same bits either way. A sliced attention sublayer's backward works in its shuffled token order: it marks
# its output with its permutation, and the copy is written in that order (the gather costs no pass of its own).
_KEEP_LOW_COPY = True  # tests switch it off to compare
_LOW_COPY = "_sret_low_copy"  # on a gradient: (copy, version counter, scale, token order or None)
_OUTPUT_SCALE = "_sret_branch_scale"  # on a fused sublayer's output: (its drop-path scale or None, order or None)


def _mark_output(out: torch.Tensor, scale: Optional[torch.Tensor], order: Optional[tuple] = None) -> torch.Tensor:
    """Note on a fused sublayer's output that its gradient is wanted as ``(g * scale).to(dtype)`` in backward;
    ``order`` = ``(perm, inv_perm)``: with each sample's tokens in perm's order, ``[:, perm]``."""
    setattr(out, _OUTPUT_SCALE, (scale, order))
    return out


def _low_copy_request(x: torch.Tensor, dtype: torch.dtype) -> Optional[tuple]:
    """``(dtype, scale, order)`` when ``x`` came out of a fused sublayer (whose backward will want its gradient that
    way) and ``dtype`` is narrower than x's; else None, and the LayerNorm backward writes no copy."""
    mark = getattr(x, _OUTPUT_SCALE, None)
    if not _KEEP_LOW_COPY or mark is None or dtype.itemsize >= x.dtype.itemsize:
        return None
    return dtype, mark[0], (mark[1] if _GATHER_IN_KERNELS else None)


def _keep_low_copy(grad: torch.Tensor, low: torch.Tensor, scale: Optional[torch.Tensor],
                   order: Optional[torch.Tensor] = None) -> None:
    """Record on ``grad`` that ``low`` is ``(grad * scale)`` rounded to ``low``'s dtype, for :func:`_branch_grad`;
    with ``order`` (a permutation of each sample's tokens), ``(grad * scale)[:, order]`` rounded."""
    setattr(grad, _LOW_COPY, (low, grad._version, scale, order))


def _reshape_with_low_copy(grad: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``grad.view(shape)``, the low-precision copy (if any) carried over to the view."""
    out = grad.view(shape)
    kept = getattr(grad, _LOW_COPY, None)
    if kept is not None and kept[1] == grad._version:  # the copy's rows may be wider (zero columns past C)
        _keep_low_copy(out, kept[0].view(*shape[:-1], kept[0].shape[-1]), kept[2], kept[3])
    return out


def _same_scale(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> bool:
    """Whether ``a`` and ``b`` are both None or the same unchanged tensor."""
    if a is None or b is None:
        return a is b
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a._version == b._version


def _branch_grad(g: torch.Tensor, scale: Optional[torch.Tensor], dtype: torch.dtype,
                 order: Optional[torch.Tensor] = None, width: Optional[int] = None) -> torch.Tensor:
    """``(g * scale).to(dtype)`` for g (B, N, C) and the per-sample ``scale`` (B,) or None, with each sample's tokens
    in ``order`` if given, ``width`` (>= C) columns wide with zeros past C: the copy the LayerNorm backward made where
    it is still valid for ``g`` and made with this scale, order and width, else computed here."""
    B, N, C = g.shape
    width = width or C
    kept = getattr(g, _LOW_COPY, None)
    if kept is not None:
        low, version, low_scale, low_order = kept
        if (version == g._version and low.dtype == dtype and low.shape == (B, N, width)
                and _same_scale(low_scale, scale)):
            if _same_scale(low_order, order):
                return low
            if low_order is None:  # made in grid order: gathered here
                return low.index_select(1, order)
    g_s = g if scale is None else g * scale.view(B, 1, 1)
    g_s = g_s.to(dtype)
    if width > C:
        g_s = F.pad(g_s, (0, width - C))
    return g_s if order is None else g_s.index_select(1, order)  # cast first: half the bytes to gather


# ----------------------------------------------------------------------------------------------- residual pieces
def _branch_scale(c2: Optional[torch.Tensor], scale: Optional[torch.Tensor], batch: int) -> Optional[torch.Tensor]:
    """The factor on the branch: ``c2`` (1,), times the per-sample drop-path scale as (B, 1, 1); None if neither."""
    if scale is None:
        return c2
    scale = scale.view(batch, 1, 1)
    return scale if c2 is None else scale * c2


def _residual(x: torch.Tensor, y: torch.Tensor, c1: Optional[torch.Tensor], k: Optional[torch.Tensor]) -> torch.Tensor:
    """``c1 * x + k * y`` in float32 (y may be bf16); ``c1`` None means 1, ``k`` None means 1."""
    base = x * c1 if c1 is not None else x
    if k is None:
        return base + y
    return torch.addcmul(base, y, k)


def _projection_grads(g_s: torch.Tensor, a: torch.Tensor, w: torch.Tensor, c2: Optional[torch.Tensor],
                      dtype: torch.dtype, share: Optional[tuple] = None):
    """Backward of ``out += c2 * (a @ w.T + b)`` where ``g_s`` is d out (drop-path scale applied), 2-D.

    Returns ``(da, gw)`` with ``gw = g_s^T a`` in the compute dtype; :func:`_finish_projection` turns it and the
    column sum of ``g_s`` (which the LayerNorm backward computes in its pass) into the parameter gradients.
    ``share``: the sublayer's gradient hand-over (see :func:`_operand_cast`).
    """
    g16 = g_s.to(dtype)
    return _projection_input_grad(g16, w, c2, dtype, share), _projection_weight_grad(g16, a)


def _operand_cast(share: Optional[tuple]):
    """:func:`sublayer_kernels.scaled_cast`, made once a backward pass for all applications of shared parameters
    (``share``, their gradient hand-over): ``c2 * w`` is the same for each, and the later applications' backwards run
    first (change 51: 20 of SReT-T's 66 launches of it a training step)."""
    if share is None:
        return _kernels.scaled_cast

    def cast(*args):
        return shared_weights.backward_memo(share, "operand", lambda: _kernels.scaled_cast(*args))
    return cast


def _projection_input_grad(g16: torch.Tensor, w: torch.Tensor, c2: Optional[torch.Tensor], dtype: torch.dtype,
                           share: Optional[tuple] = None, width: Optional[int] = None):
    """``da = g_s @ (c2 * w)`` for ``g16``, d out in the compute dtype (the first half of :func:`_projection_grads`);
    ``width``: w zero-padded to that many columns first (a padded activation's); w gets zero rows where g16 is
    wider than w's outputs (a zero-padded gradient, :func:`_branch_grad`)."""
    rows = g16.shape[1]
    ws = _operand_cast(share)(w, c2, dtype, width, rows)  # one launch on CUDA, the padding included
    if ws is None:
        w = F.pad(w, (0, max(0, (width or 0) - w.shape[1]), 0, rows - w.shape[0]))
        ws = (w * c2 if c2 is not None else w).to(dtype)
    return torch.mm(g16, ws)


def _projection_weight_grad(g16: torch.Tensor, a: torch.Tensor):
    """``gw = g_s^T a`` (C_out, C_in) in the compute dtype, as the GEMM returns it (the second half);
    :func:`_finish_projection` brings it to the parameter's dtype."""
    return torch.mm(g16.t(), a)


def _finish_projection(gw: torch.Tensor, gb: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                       c2: Optional[torch.Tensor]):
    """``(dw, db, dc2)`` of ``out += c2 * (a @ w.T + b)`` from ``gw = g_s^T a`` and ``gb = sum g_s``.

    ``gw`` may be larger than ``w`` (zero padding columns of a padded activation, zero rows of a padded gradient):
    its first ``w.shape[0]`` rows and ``w.shape[1]`` columns count. ``dc2 = sum(g_s * (a w^T + b)) = <w, gw> +
    <b, gb>`` reuses the weight gradient's product instead of saving the branch output and reducing over every token.
    On CUDA one Triton kernel does it all (``sublayer_kernels.finish_projection``).
    """
    if c2 is not None:
        fused = _kernels.finish_projection(gw, gb, w, b, c2)
        if fused is not None:
            return fused
    gw = gw[:w.shape[0], :w.shape[1]].to(w.dtype)
    if c2 is None:
        return gw.contiguous(), gb, None
    dc2 = (torch.dot(w.reshape(-1), gw.reshape(-1)) + torch.dot(b, gb)).reshape(1)
    dw, db = torch._foreach_mul([gw, gb], c2.view(()))  # one launch for both
    return dw, db, dc2


# ---------------------------------------------------------------------------------------------- the MLP sublayer
class _MlpResidual(torch.autograd.Function):
    """``c1 * x + c2 * s * fc2(gelu(fc1(LN(x))))`` for x (B, N, C) float32 (or float64)."""

    @staticmethod
    def forward(ctx, x, ln_w, ln_b, w1, b1, w2, b2, c1, c2, scale, eps: float, dtype: torch.dtype, training: bool,
                low: Optional[tuple] = None, share: Optional[tuple] = None, keep: bool = False):
        B, N, C = x.shape
        triton = _use_triton(x)
        keep = keep and training  # the LayerNorm output kept for the backward instead of recomputed there
        fused = _kernels.mlp_residual_forward(x, ln_w, ln_b, w1, b1, w2, b2, c1, c2, scale, eps, dtype,
                                              save=training, return_w1=True, keep_xn=keep)
        w1_16 = xn = None
        if fused is not None:  # the kernel paths (CUDA, bf16/fp16); xn None where the path does not keep it
            out, h, mean, rstd, w1_16, *kept = fused  # w1_16: fc1's weight as the kernel read it, kept for backward
            xn = kept[0] if kept else None
            triton = True
        else:
            x2 = x.reshape(B * N, C)
            with torch.autocast(x.device.type, enabled=False):
                # (B*N, C) in dtype; kept on the Triton LayerNorm: with the ones column the backward's GEMM takes
                xn, mean, rstd = _layer_norm(x2, ln_w, ln_b, eps, dtype, triton, ones_column=keep and triton)
                h = torch.addmm(b1.to(dtype), xn[:, :C], w1.to(dtype).t())  # (B*N, hidden)
                y = torch.addmm(b2.to(dtype), F.gelu(h), w2.to(dtype).t())  # (B*N, C)
                out = _residual(x, y.view(B, N, C), c1, _branch_scale(c2, scale, B))
            xn = xn if keep else None
        ctx.save_for_backward(x, ln_w, ln_b, w1, w2, b2, c1, c2, scale, h, mean, rstd, w1_16, xn)
        ctx.eps, ctx.dtype, ctx.triton, ctx.low, ctx.share = eps, dtype, triton, low, share
        return out

    @staticmethod
    def backward(ctx, g):
        x, ln_w, ln_b, w1, w2, b2, c1, c2, scale, h, mean, rstd, w1_16, xn = ctx.saved_tensors
        dtype, triton = ctx.dtype, ctx.triton
        B, N, C = x.shape
        g = g.contiguous()
        hidden, width = w1.shape[0], h.shape[1]
        # the kernels may have saved h at an aligned width (zero columns past hidden): W1 padded to match where the
        # kernels' padded copy of it (see _ln_linear_backward's w16) is not kept; W2 is padded where it is used
        if width > hidden and w1_16 is None:
            w1 = F.pad(w1, (0, 0, 0, width - hidden))
        # gelu(h) is recomputed (saving it would double the MLP's saved bytes); d fc2-input first, then the
        # activation and its gradient in one pass over h where the kernels run
        # d out / d (c2 * branch), aligned rows on the kernel paths (zero columns past C)
        g16 = _branch_grad(g, scale, dtype, width=low_copy_width(C) if triton else C).view(B * N, -1)
        # the d fc2-input GEMM with the activation pass as its epilogue (tuned shapes), else the two launches
        share = getattr(ctx, "share", None)
        # pads W2 in its operand's cast (made once for all applications of a shared block)
        fused = _kernels.da_gelu_and_grad(g16, w2, c2, h, cast=_operand_cast(share)) if triton else None
        if fused is None:
            da = _projection_input_grad(g16, w2, c2, dtype, share, width)
            fused = _kernels.gelu_and_grad(h, da)
        if fused is not None:
            a, dh = fused
        else:
            a, dh = F.gelu(h), torch.ops.aten.gelu_backward(da, h)  # (B*N, width), zeros in the padding columns
        gw2 = _projection_weight_grad(g16, a)  # (C, width)
        handed = shared_weights.handed_to(share)
        # dw2 (C, hidden): gw2's padding columns dropped
        dx, dlw, dlb, dw1, db1, dc1, (dw2, db2, dc2), added = _ln_linear_backward(
            dh, x, ln_w, ln_b, w1, mean, rstd, g, c1, scale, ctx.eps, dtype, triton, xn=xn, w16=w1_16, low=ctx.low,
            proj=(gw2, w2, b2, c2), lin_rows=hidden, add=handed)
        if dw1.shape[0] > hidden:  # back to the parameters' shapes
            dw1, db1 = dw1[:hidden].contiguous(), db1[:hidden].contiguous()
        grads = _add_handed((dlw, dlb, dw1, db1, dw2, db2, dc1, dc2), None if added else handed)
        return (dx, *shared_weights.pass_on(share, grads)) + (None,) * 7


# ----------------------------------------------------------------------------------------- the attention sublayer
def _attention_operands(wqkv: torch.Tensor, bqkv: torch.Tensor, wp: torch.Tensor, bp: torch.Tensor, heads: int,
                        width: int, cp: int, dtype: torch.dtype):
    """``(wqkv_e, wp_e, wqkv16, bqkv16, wp16, bp16)``: the qkv and proj parameters with every head carried ``width``
    wide (:func:`_pad_heads`; as they are with ``width`` 0), then in the compute dtype, the GEMMs' operands. With
    ``cp`` > C (:func:`aligned_width`) wqkv16 gets zero columns and wp16, bp16 zero rows up to cp: the GEMMs read and
    write tokens cp wide. Made once per stage forward for a shared block (``shared_weights``)."""
    return shared_weights.memoized(lambda: _attention_operands_now(wqkv, bqkv, wp, bp, heads, width, cp, dtype),
                                   (wqkv, bqkv, wp, bp), "attention", heads, width, cp, dtype)


def _attention_operands_now(wqkv, bqkv, wp, bp, heads, width, cp, dtype):
    C = wp.shape[0]
    if width:
        wqkv_e = _pad_heads(wqkv, heads, C // heads, width)  # (3 * heads * width, C), zero rows in the padding
        bqkv_e = _pad_heads(bqkv, heads, C // heads, width)
        wp_e = _pad_heads(wp.t(), heads, C // heads, width).t()  # (C, heads * width), zero columns there
    else:
        wqkv_e, bqkv_e, wp_e = wqkv, bqkv, wp
    if cp == C:  # one launch on CUDA
        cast = _kernels.cast_parameters((wqkv_e, bqkv_e, wp_e, bp), dtype)
        return (wqkv_e, wp_e, *(cast or (t.to(dtype) for t in (wqkv_e, bqkv_e, wp_e, bp))))
    wp_c = wp_e.contiguous()
    padded = [_kernels.scaled_cast(wqkv_e, None, dtype, cp), _kernels.scaled_cast(wp_c, None, dtype, None, cp),
              _kernels.scaled_cast(bp.view(1, C), None, dtype, cp)]
    if any(t is None for t in padded):  # the kernels off: the PyTorch ops
        padded = [F.pad(wqkv_e, (0, cp - C)).to(dtype), F.pad(wp_c, (0, 0, 0, cp - C)).to(dtype),
                  F.pad(bp, (0, cp - C)).to(dtype)]
    wqkv16, wp16, bp16 = padded
    return wqkv_e, wp_c, wqkv16, bqkv_e.to(dtype), wp16, bp16.view(cp)


def _pad_heads(t: torch.Tensor, heads: int, head_dim: int, width: int) -> torch.Tensor:
    """Rows of ``t`` (parts * heads * head_dim, ...), grouped by head, each head zero-padded to ``width`` rows."""
    rest = t.shape[1:]
    v = t.reshape(-1, heads, head_dim, *rest)  # (parts, heads, head_dim, ...)
    return F.pad(v, [0, 0] * len(rest) + [0, width - head_dim]).reshape(-1, *rest)


def _unpad_heads(t: torch.Tensor, heads: int, width: int, head_dim: int) -> torch.Tensor:
    """Inverse of :func:`_pad_heads`: the first ``head_dim`` of every ``width`` rows of each head."""
    rest = t.shape[1:]
    return t.reshape(-1, heads, width, *rest)[:, :, :head_dim].reshape(-1, *rest)


# Training keeps the attention core's output and log-sum-exp and calls the fused kernels' backward directly, where
# ``F.scaled_dot_product_attention`` would run cuDNN's or flash attention: re-running the core in backward under
# autograd cost a second forward kernel per sublayer and the host time of a nested ``autograd.grad``
# (docs/perf_notes.md, change 28). Elsewhere (the CPU, the math implementation, other sdpa backends) the core is
# re-run as before.
_DIRECT_BACKENDS = {int(SDPBackend.CUDNN_ATTENTION): "cudnn", int(SDPBackend.FLASH_ATTENTION): "flash"}


def _direct_backward() -> bool:
    """Whether training may keep the attention core for its own backward (``SRET_ATTN_DIRECT=0``: re-run it under
    autograd instead, the reference the GPU check compares with)."""
    return os.environ.get("SRET_ATTN_DIRECT", "1") != "0"


def _attention_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> Optional[str]:
    """``"cudnn"`` or ``"flash"`` where sdpa would pick that kernel for these q/k/v in a training step, else None."""
    if not q.is_cuda or not _direct_backward():
        return None
    # Asked with inputs that require grad: some kernels are only eligible without a backward.
    choice = torch._fused_sdp_choice(q.detach().requires_grad_(), k.detach().requires_grad_(),
                                     v.detach().requires_grad_(), scale=scale)
    return _DIRECT_BACKENDS.get(int(choice))


def _at_least_float32(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, backend: str):
    """``(o, state)``: ``softmax(q k^T * scale) v`` (B', H, n, D) and what :func:`_attention_backward` needs.

    ``backend`` ``"math"`` is the explicit formula (float64-capable: the CPU tests check the plumbing with it).
    """
    if backend == "cudnn":
        o, lse, _, _, max_q, max_k, seed, offset, _ = torch.ops.aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, True, 0.0, False, False, scale=scale)
    elif backend == "flash":
        o, lse, _, _, max_q, max_k, seed, offset, _ = torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, False, False, scale=scale)
    else:
        s = (q @ k.transpose(-2, -1)).to(_at_least_float32(q)) * scale  # (B', H, n, n)
        lse = torch.logsumexp(s, dim=-1)  # (B', H, n)
        o = torch.exp(s - lse[..., None]).to(q.dtype) @ v
        max_q = max_k = 0
        seed = offset = None
    return o, (lse, seed, offset, max_q, max_k)


def _attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                        state, scale: float, backend: str):
    """``(dq, dk, dv)`` of :func:`_attention_forward` for the incoming ``do``."""
    lse, seed, offset, max_q, max_k = state
    if backend == "cudnn":
        return torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
            do, q, k, v, o, lse, seed, offset, None, None, None, max_q, max_k, 0.0, False, scale=scale)
    if backend == "flash":
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            do, q, k, v, o, lse, None, None, max_q, max_k, 0.0, False, seed, offset, scale=scale)
    acc = _at_least_float32(q)
    p = torch.exp((q @ k.transpose(-2, -1)).to(acc) * scale - lse[..., None])  # (B', H, n, n)
    dv = p.to(do.dtype).transpose(-2, -1) @ do
    dp = (do @ v.transpose(-2, -1)).to(acc)
    ds = p * (dp - (do.to(acc) * o.to(acc)).sum(-1, keepdim=True)) * scale
    return (ds.to(q.dtype) @ k), (ds.to(q.dtype).transpose(-2, -1) @ q), dv


def _merge_heads(t: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B*G, H, n, D)`` -> ``(B, N, H*D)`` tokens (a view when ``t`` is laid out as (B*G, n, H, D))."""
    BG, H, n, D = t.shape
    return t.transpose(1, 2).reshape(batch, (BG // batch) * n, H * D)


class _AttnResidual(torch.autograd.Function):
    """``c1 * x + c2 * s * proj(attend(qkv(LN(x))))``; ``attend`` maps q/k/v (B, N, 3C) to (B, N, C).

    In training, for the groups ``group_attention.backward_applies`` to (``sdpa`` True, CUDA, no token gathers), the
    core is the Triton kernel of ``group_attention.py``, which keeps its output and log-sum-exp; the backward
    recomputes q/k/v (one GEMM on the LayerNorm output it recomputes anyway) and d q/k/v come from one or two more
    launches. For other groups, where sdpa would run cuDNN's or flash attention, the core runs as that kernel's
    forward op, keeps the same two tensors, and the backward calls that kernel's backward op directly on the
    recomputed q/k/v. Otherwise ``attend``
    (grouping, permutation, attention kernel) is re-run in backward under autograd from the saved q/k/v. With
    ``width`` > 0 every head is carried ``width`` wide instead of ``C / heads``: the qkv weight and bias get zero
    rows and the proj weight zero columns there (see ``SlicedGroupAttention.attend``), so q/k/v come out of the GEMM
    already in the layout the flash kernels need and no activation is padded or unpadded.
    """

    @staticmethod
    def forward(ctx, x, ln_w, ln_b, wqkv, bqkv, wp, bp, c1, c2, scale, eps: float, dtype: torch.dtype,
                attend: Callable[..., torch.Tensor], perm: Optional[torch.Tensor], inv_perm: Optional[torch.Tensor],
                heads: int, width: int, training: bool, groups: int, attn_scale: float, sdpa: bool,
                low: Optional[tuple] = None, share: Optional[tuple] = None, keep: bool = False):
        B, N, C = x.shape
        triton = _use_triton(x)
        # ``keep``: the LayerNorm output (on the Triton path with the ones column the backward's weight-gradient GEMM
        # takes) and q/k/v are kept for the backward instead of recomputed there
        keep = keep and training
        # A token shuffle inside the kernels: the LayerNorm reads the rows in shuffled order and the residual reads
        # the branch back through the inverse, so the shuffle and un-shuffle cost no passes of their own. In training
        # q/k/v are saved in that order and the backward stays in it (see ``backward``).
        shuffle_in_kernels = perm is not None and triton
        # on the kernel paths the tokens' GEMM operands and outputs are carried cp wide (zero columns past C)
        cp = aligned_width(C) if triton else C
        wqkv_e, wp_e, wqkv16, bqkv16, wp16, bp16 = _attention_operands(wqkv, bqkv, wp, bp, heads, width, cp, dtype)
        x2 = x.reshape(B * N, C)
        with torch.autocast(x.device.type, enabled=False):
            ones = keep and triton  # kept: rows ones_column_width(C) >= cp wide, the ones column times zero weights
            if shuffle_in_kernels:
                # (B*N, cp), shuffled order; in training the statistics in grid order, where the backward uses them
                xn, mean, rstd = _ln.ln_forward(x2, ln_w, ln_b, eps, dtype, ones_column=ones,
                                                width=None if ones else cp, rows=perm,
                                                stats_in_input_order=training and _GATHER_IN_KERNELS)
            else:
                xn, mean, rstd = _layer_norm(x2, ln_w, ln_b, eps, dtype, triton, ones_column=ones,
                                             width=None if ones else cp)
            qkv = torch.addmm(bqkv16, xn[:, :cp], wqkv16.t()).view(B, N, -1)  # (B, N, 3 * heads * D)
            backend = grouped = None
            if sdpa and (perm is None or shuffle_in_kernels):
                # The Triton kernels where they apply (inference: the shapes group_attention takes; training: those
                # whose backward group_attention_backward covers too); else sdpa's kernel, kept for backward
                if not training:
                    grouped = group_attention(qkv, groups, heads, attn_scale)
                elif backward_applies(qkv, groups, heads) and _direct_backward():
                    grouped, lse = group_attention(qkv, groups, heads, attn_scale, keep_lse=True)
                if training and grouped is not None:
                    backend = "triton"
                elif training:
                    q, k, v = split_qkv(qkv, groups, heads)  # each (B*G, heads, n, D), views of qkv
                    backend = _attention_backend(q, k, v, attn_scale)
            if grouped is not None:
                o = grouped.view(B * N, -1)  # (B*N, heads * D), in qkv's token order (shuffled if the LayerNorm was)
            elif backend is not None:  # the core's output and log-sum-exp are kept: no re-run in backward
                o4, state = _attention_forward(q, k, v, attn_scale, backend)
                o = _merge_heads(o4, B).reshape(B * N, -1)  # (B*N, heads * D), shuffled if the LayerNorm shuffled
            elif shuffle_in_kernels:
                o = attend(qkv, None, None).reshape(B * N, -1)  # (B*N, heads * D), still shuffled
            else:
                o = attend(qkv, perm, inv_perm).reshape(B * N, -1)  # (B*N, heads * D), grid token order
            y = torch.addmm(bp16, o, wp16.t()).view(B, N, cp)[..., :C]  # (B, N, C) view of the cp-wide rows
            if shuffle_in_kernels:
                out = _kernels.residual_forward(x, y, c1, c2, scale, y_rows=inv_perm)  # grid order again
            else:
                out = _kernels.residual_forward(x, y, c1, c2, scale) if triton else None
            if out is None:  # the residual kernel switched off (SRET_FUSED_KERNELS=0): PyTorch ops, grid order
                if shuffle_in_kernels:
                    y = y.index_select(1, inv_perm)
                out = _residual(x, y, c1, _branch_scale(c2, scale, B))
        # the backward's LayerNorm works in grid order: its statistics too (written so by the kernel, change 52)
        if shuffle_in_kernels and training and not _GATHER_IN_KERNELS:
            mean = mean.view(B, N).index_select(1, inv_perm).view(-1)
            rstd = rstd.view(B, N).index_select(1, inv_perm).view(-1)
        if backend == "triton":  # the output (proj's weight gradient, rowsum(do * o)) and the log-sum-exp
            core = (bqkv16, o, lse)
        elif backend is not None:  # q/k/v are recomputed in backward from the LayerNorm output it recomputes anyway
            lse, seed, offset, ctx.max_q, ctx.max_k = state
            core = (bqkv16, o4, lse, seed, offset)
        else:
            core = (qkv,)
        kept = (xn if keep else None, qkv if keep and backend is not None else None)
        ctx.save_for_backward(x, ln_w, ln_b, wqkv_e, wqkv16, wp, wp_e, bp, c1, c2, scale, mean, rstd, perm, inv_perm,
                              *kept, *core)
        ctx.eps, ctx.dtype, ctx.triton, ctx.attend, ctx.heads, ctx.width = eps, dtype, triton, attend, heads, width
        ctx.shuffled, ctx.backend, ctx.groups, ctx.attn_scale = shuffle_in_kernels, backend, groups, attn_scale
        ctx.low, ctx.share = low, share
        return out

    @staticmethod
    def backward(ctx, g):
        x, ln_w, ln_b, wqkv_e, wqkv16, wp, wp_e, bp, c1, c2, scale, mean, rstd, perm, inv_perm, xn, qkv, *core = \
            ctx.saved_tensors
        dtype, triton, heads, width, backend = ctx.dtype, ctx.triton, ctx.heads, ctx.width, ctx.backend
        B, N, C = x.shape
        g = g.contiguous()
        share = getattr(ctx, "share", None)  # the gradient hand-over of a shared block's applications
        shuffled = ctx.shuffled  # q/k/v in the shuffled token order: the whole branch stays in it
        # d out / d (c2 * branch), what the projection's GEMMs take; shuffled: in the same token order
        g_s = _branch_grad(g, scale, dtype, perm if shuffled else None, low_copy_width(C) if triton else C)
        if backend is not None and xn is None:  # not kept: the LayerNorm output recomputed
            xn = _recompute_ln(x, ln_w, ln_b, ctx.eps, dtype, triton, perm if shuffled else None)
        if backend is not None and qkv is None:  # not kept: q/k/v recomputed (one GEMM)
            qkv = torch.addmm(core[0], xn[:, :wqkv16.shape[1]], wqkv16.t()).view(B, N, -1)  # ones column x 0
        if backend == "triton":  # one or two launches from (q/k/v, do) to d qkv
            bqkv16, o, lse = core
            do, gwp = _projection_grads(g_s.view(B * N, -1), o, wp_e, c2, dtype, share)
            dqkv = group_attention_backward(qkv, do.view(B, N, -1), ctx.groups, heads, ctx.attn_scale,
                                            o=o.view(B, N, -1), lse=lse)
        elif backend is not None:  # the kept core: the fused kernel's own backward
            bqkv16, o4, lse, seed, offset = core
            q, k, v = split_qkv(qkv, ctx.groups, heads)  # (B*G, heads, n, D) views
            do, gwp = _projection_grads(g_s.view(B * N, -1), _merge_heads(o4, B).reshape(B * N, -1), wp_e, c2, dtype,
                                        share)
            BG, H, n, D = o4.shape
            do4 = do.view(B, BG // B, n, H, D).permute(0, 1, 3, 2, 4).reshape(BG, H, n, D)  # a view, like o4
            grads = _attention_backward(do4, q, k, v, o4, (lse, seed, offset, ctx.max_q, ctx.max_k), ctx.attn_scale,
                                        backend)
            dqkv = torch.stack([_merge_heads(d, B) for d in grads], dim=2)  # (B, N, 3, heads * D): qkv's layout
        else:  # the core re-run under autograd from the saved q/k/v
            (qkv,) = core
            with torch.enable_grad():
                qkv_in = qkv.detach().requires_grad_(True)
                # (B, N, heads * D), recomputed; shuffled: already grouped in shuffled order, no gathers
                o = ctx.attend(qkv_in, None, None) if shuffled else ctx.attend(qkv_in, perm, inv_perm)
            do, gwp = _projection_grads(g_s.view(B * N, -1), o.detach().reshape(B * N, -1), wp_e, c2, dtype, share)
            (dqkv,) = torch.autograd.grad(o, qkv_in, do.view(B, N, -1))
        if width:  # the projection's weight gradient back to the parameter's shape: drop the padding columns
            gwp = _unpad_heads(gwp.t(), heads, width, C // heads).t()
        handed = shared_weights.handed_to(share)
        dx, dlw, dlb, dwqkv, dbqkv, dc1, (dwp, dbp, dc2), added = _ln_linear_backward(
            dqkv.reshape(B * N, -1), x, ln_w, ln_b, wqkv_e, mean, rstd, g, c1, scale, ctx.eps, dtype, triton,
            perm if shuffled else None, inv_perm if shuffled else None, xn=xn, w16=wqkv16, low=ctx.low,
            proj=(gwp, wp, bp, c2), add=handed)
        if width:  # back to the parameter's shape: drop the padding rows
            dwqkv = _unpad_heads(dwqkv, heads, width, C // heads)
            dbqkv = _unpad_heads(dbqkv, heads, width, C // heads)
        grads = _add_handed((dlw, dlb, dwqkv, dbqkv, dwp, dbp, dc1, dc2), None if added else handed)
        return (dx, *shared_weights.pass_on(share, grads)) + (None,) * 15


# ------------------------------------------------------------------------------------------------ entry points
def _coefs(c1, c2):
    return (c1.bias, c2.bias) if c1 is not None else (None, None)


def _builds_graph(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether this call will be differentiated: grad mode on and an input that requires grad.

    Decided before ``Function.apply``: inside ``forward`` grad mode is always off, and ``ctx.needs_input_grad``
    follows ``requires_grad`` alone (True for parameters under ``torch.no_grad`` too). Inference must not pay for
    what only a backward needs (the MLP kernels writing their hidden layer for it, tiles tuned for that).
    """
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))


class _NoGraph:
    """Stands in for the autograd context when no graph is built: ``Function.apply`` and its bookkeeping are host
    time that inference need not pay (eager inference is bound by the host, docs/perf_notes.md, change 29)."""

    def save_for_backward(self, *tensors) -> None:
        pass


def _hand_over(graph: bool, params: tuple) -> Optional[tuple]:
    """The gradient hand-over between the applications of these shared parameters (``shared_weights.hand_over``):
    only where a graph is built, the kernels that add what is handed over run, and every parameter is there (a
    sublayer without coefficients keeps autograd's sums)."""
    if not graph or not _FINISH_IN_ONE_LAUNCH or any(p is None for p in params) \
            or not _ln.fused_kernels_enabled(params[0]):
        return None
    return shared_weights.hand_over(params)


def _add_handed(grads: tuple, handed: Optional[tuple]) -> tuple:
    """``grads`` plus the gradients ``handed`` over by a later application (None: nothing to add)."""
    if handed is None:
        return grads
    return tuple(g if h is None else (h if g is None else g + h) for g, h in zip(grads, handed))


def _call(fn: type[torch.autograd.Function], graph: bool, *args):
    """``fn.apply(*args)``, or its forward alone when no graph is built (``graph`` False)."""
    return fn.apply(*args) if graph else fn.forward(_NoGraph(), *args)


def mlp_residual(x: torch.Tensor, norm, mlp, c1, c2, scale: Optional[torch.Tensor] = None,
                 keep: bool = False) -> torch.Tensor:
    """Fused ``c1 * x + c2 * s * mlp(norm(x))`` for a ``TokenLayerNorm`` and a timm ``Mlp`` (GELU, no norm).
    ``keep``: in training, the LayerNorm output is kept for the backward instead of recomputed there (faster, one
    (tokens, C) tensor in the compute dtype more memory per sublayer)."""
    a, b = _coefs(c1, c2)
    graph = _builds_graph(x, mlp.fc1.weight, mlp.fc2.weight, norm.weight)
    x, dtype = x.contiguous(), compute_dtype(x)
    low = _low_copy_request(x, dtype) if graph else None
    params = (norm.weight, norm.bias, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias, a, b)
    out = _call(_MlpResidual, graph, x, *params, scale, norm.eps, dtype, graph, low, _hand_over(graph, params),
                keep)
    return _mark_output(out, scale) if graph else out


def padded_head_width(attn) -> int:
    """The width the fused sublayer carries each head of ``attn`` at: 0 (as is) or the next multiple of 8.

    Head dims that are not a multiple of 8 (SReT-S: 42) are carried padded through the sdpa kernels (see
    _AttnResidual); on an H100 the pad/unpad copies flash attention makes otherwise took ~15 % of SReT-S's training
    step (docs/perf_notes.md).
    """
    return -(-attn.head_dim // 8) * 8 if attn.attn_impl == "sdpa" and attn.head_dim % 8 else 0


def attn_residual(x: torch.Tensor, norm, attn, groups: int, perm: Optional[torch.Tensor],
                  inv_perm: Optional[torch.Tensor], c1, c2, scale: Optional[torch.Tensor] = None,
                  keep: bool = False) -> torch.Tensor:
    """Fused ``c1 * x + c2 * s * proj(attend(qkv(norm(x))))`` for a ``SlicedGroupAttention`` with ``groups`` groups
    over tokens shuffled by ``perm`` (optional; ``inv_perm`` its inverse, made here if None). ``keep``: in training,
    the LayerNorm output and q/k/v are kept for the backward instead of recomputed there (faster; per sublayer a
    (tokens, C) and a (tokens, 3C) tensor in the compute dtype more memory)."""
    if perm is not None and inv_perm is None:
        inv_perm = invert_permutation(perm)

    def attend(qkv: torch.Tensor, p: Optional[torch.Tensor], inv: Optional[torch.Tensor]) -> torch.Tensor:
        return attn.attend(qkv, groups, p, inv)

    a, b = _coefs(c1, c2)
    width = padded_head_width(attn)
    graph = _builds_graph(x, attn.qkv.weight, attn.proj.weight, norm.weight)
    x, dtype = x.contiguous(), compute_dtype(x)
    low = _low_copy_request(x, dtype) if graph else None
    params = (norm.weight, norm.bias, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias, a, b)
    out = _call(_AttnResidual, graph, x, *params, scale, norm.eps, dtype, attend, perm, inv_perm, attn.num_heads,
                width, graph, groups, attn.scale, attn.attn_impl == "sdpa", low, _hand_over(graph, params), keep)
    if not graph:
        return out
    # the backward works in the shuffled token order where the kernels shuffle (see _AttnResidual.forward)
    return _mark_output(out, scale, (perm, inv_perm) if perm is not None and _use_triton(x) else None)
