"""The fused sublayers as ``torch.library.triton_op``s: what a compiled model runs for them.

Why: ``torch.compile`` cannot trace the fused sublayers (autograd Functions, tile tables, Triton's Python launch
path), so a compiled SReT ran its plain modules on Inductor's own kernels: on an H100 its inference step took
~10.8 ms of GPU time where the fused kernels take ~5.9 ms, with twice the launches (docs/perf_notes.md, run 45). A
``triton_op`` is a custom op whose body Inductor traces: the same launch code as the eager fused path (through
:func:`~sret.models.kernel_launch.launchable`), with the kernels launched by Inductor's own launchers and the
PyTorch ops around them (GEMMs, casts) compiled with the rest of the graph.

In training (an autograd graph is built) the forward ops return what the fused backward needs as extra outputs, and
their registered backward is another op over the same backward code (``torch.library.register_autograd``). The
attention op takes training only where the Triton kernels cover forward and backward (every SReT-T shape); other
attention sublayers keep the plain modules there. Training through the ops is opt-in (``SRET_COMPILED_TRAIN=1``):
with torch 2.11's Inductor defaults the backward graph fails to compile (an assertion in the scheduler's loop
reordering), and ``TORCHINDUCTOR_LOOP_ORDERING_AFTER_FUSION=0`` must be set with it. On an H100 it then trained
SReT-T in 4.09 GiB against 7.41 GiB on the plain modules, at about the same speed (docs/perf_notes.md, run 51).

``SRET_COMPILED_OPS=0`` switches all the ops off (the compiled model then runs the plain modules, as before), for
A/B measurements in one process.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from sret.models import fused
from sret.models import layernorm as _ln
from sret.models import sublayer_kernels as _kernels
from sret.models.attention import attend_groups, invert_permutation
from sret.models.group_attention import backward_tiles_cover
from sret.models.kernel_launch import traceable_launches


@torch.library.triton_op("sret::mlp_residual", mutates_args=())
def _mlp_residual_op(x: Tensor, ln_w: Tensor, ln_b: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                     c1: Optional[Tensor], c2: Optional[Tensor], eps: float, dtype: torch.dtype) -> Tensor:
    """``c1 * x + c2 * fc2(gelu(fc1(LN(x))))``, x (B, N, C) contiguous, Linears in ``dtype``: the fused kernels."""
    with traceable_launches():
        result = _kernels.mlp_residual_forward(x, ln_w, ln_b, w1, b1, w2, b2, c1, c2, None, eps, dtype, False)
    if result is None:  # the callers check forward_applies first
        raise RuntimeError(f"sret::mlp_residual: no fused kernel for C={x.shape[-1]}, H={w1.shape[0]}, {dtype}")
    return result[0]


@torch.library.triton_op("sret::attn_residual", mutates_args=())
def _attn_residual_op(x: Tensor, ln_w: Tensor, ln_b: Tensor, wqkv: Tensor, bqkv: Tensor, wp: Tensor, bp: Tensor,
                      c1: Optional[Tensor], c2: Optional[Tensor], perm: Optional[Tensor], inv_perm: Optional[Tensor],
                      eps: float, dtype: torch.dtype, groups: int, heads: int, head_dim: int, width: int,
                      attn_scale: float) -> Tensor:
    """``c1 * x + c2 * proj(attend(qkv(LN(x))))`` with ``groups`` groups over tokens shuffled by ``perm``: the
    fused sublayer's inference path (Triton attention where it applies, else sdpa)."""

    def attend(qkv: Tensor, p: Optional[Tensor], inv: Optional[Tensor]) -> Tensor:
        return attend_groups(qkv, groups, heads, head_dim, attn_scale, p, inv)

    with traceable_launches():
        return fused._AttnResidual.forward(fused._NoGraph(), x, ln_w, ln_b, wqkv, bqkv, wp, bp, c1, c2, None, eps,
                                           dtype, attend, perm, inv_perm, heads, width, False, groups, attn_scale,
                                           True)


class _Saved:
    """Stands in for an autograd context around the fused Functions' ``forward`` / ``backward``: keeps what the
    forward saves and carries the attributes the backward reads."""

    def __init__(self, saved: tuple = (), **attributes) -> None:
        self.saved_tensors = tuple(saved)
        self.__dict__.update(attributes)

    def save_for_backward(self, *tensors) -> None:
        self.saved_tensors = tensors


def _own(t: Tensor, *inputs: Tensor) -> Tensor:
    """``t``, copied if it is one of ``inputs`` (an op's outputs must not alias its inputs: a cast to the dtype a
    tensor already has returns the tensor itself)."""
    return t.clone() if any(t is i for i in inputs) else t


def _filled(grads, like: Tensor) -> tuple[Tensor, ...]:
    """Gradients as op outputs: an absent one (None) as an empty tensor, mapped back by the autograd formula; a view
    copied (the LayerNorm's weight and bias gradients are rows of one buffer, and outputs must not alias)."""
    return tuple(like.new_empty(0) if g is None else g.clone() if g._is_view() else g for g in grads)


# ------------------------------------------------------------------------------------------ MLP sublayer, training
@torch.library.triton_op("sret::mlp_residual_train", mutates_args=())
def _mlp_residual_train_op(x: Tensor, ln_w: Tensor, ln_b: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                           c1: Optional[Tensor], c2: Optional[Tensor], scale: Optional[Tensor], eps: float,
                           dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The training forward of ``sret::mlp_residual`` (``scale``: drop path's per-sample factor): ``(out, h, mean,
    rstd, w1_16)``, the last four what the backward reads (fc1 output, LayerNorm statistics, fc1's weight as cast)."""
    ctx = _Saved()
    with traceable_launches():
        out = fused._MlpResidual.forward(ctx, x, ln_w, ln_b, w1, b1, w2, b2, c1, c2, scale, eps, dtype, True)
    h, mean, rstd, w1_16 = ctx.saved_tensors[9:13]  # then the LayerNorm output, not kept here (None)
    if w1_16 is None:  # the callers check forward_applies first
        raise RuntimeError(f"sret::mlp_residual_train: no fused kernel for C={x.shape[-1]}, H={w1.shape[0]}")
    return out, h, mean, rstd, w1_16


@torch.library.triton_op("sret::mlp_residual_backward", mutates_args=())
def _mlp_residual_backward_op(g: Tensor, x: Tensor, ln_w: Tensor, ln_b: Tensor, w1: Tensor, w2: Tensor, b2: Tensor,
                              c1: Optional[Tensor], c2: Optional[Tensor], scale: Optional[Tensor], h: Tensor,
                              mean: Tensor, rstd: Tensor, w1_16: Tensor, eps: float, dtype: torch.dtype,
                              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """d (x, ln_w, ln_b, w1, b1, w2, b2, c1, c2) of ``sret::mlp_residual_train``: the fused sublayer's backward."""
    # low=None: no low-precision copy of dx for the sublayer before (fused.py's attribute cannot cross an op boundary)
    ctx = _Saved((x, ln_w, ln_b, w1, w2, b2, c1, c2, scale, h, mean, rstd, w1_16, None), eps=eps, dtype=dtype,
                 triton=True, low=None)  # None: the LayerNorm output is recomputed
    with traceable_launches():
        grads = fused._MlpResidual.backward(ctx, g)[:9]
    return _filled(grads, x)


def _mlp_setup(ctx, inputs, output) -> None:
    x, ln_w, ln_b, w1, b1, w2, b2, c1, c2, scale, eps, dtype = inputs
    ctx.save_for_backward(x, ln_w, ln_b, w1, w2, b2, c1, c2, scale, *output[1:])
    ctx.eps, ctx.dtype, ctx.coefs = eps, dtype, (c1 is not None, c2 is not None)


def _mlp_grad(ctx, g, *_saved_grads):
    grads = torch.ops.sret.mlp_residual_backward(g.contiguous(), *ctx.saved_tensors, ctx.eps, ctx.dtype)
    dc1, dc2 = (d if has else None for d, has in zip(grads[7:], ctx.coefs))
    return (*grads[:7], dc1, dc2, None, None, None)


torch.library.register_autograd("sret::mlp_residual_train", _mlp_grad, setup_context=_mlp_setup)


# ------------------------------------------------------------------------------------ attention sublayer, training
@torch.library.triton_op("sret::attn_residual_train", mutates_args=())
def _attn_residual_train_op(x: Tensor, ln_w: Tensor, ln_b: Tensor, wqkv: Tensor, bqkv: Tensor, wp: Tensor,
                            bp: Tensor, c1: Optional[Tensor], c2: Optional[Tensor], scale: Optional[Tensor],
                            perm: Optional[Tensor], inv_perm: Optional[Tensor], eps: float, dtype: torch.dtype,
                            groups: int, heads: int, width: int, attn_scale: float,
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The training forward of ``sret::attn_residual`` on the Triton attention kernels: ``(out, mean, rstd, wqkv16,
    bqkv16, o, lse)``, the last six what the backward reads."""
    ctx = _Saved()
    with traceable_launches():
        out = fused._AttnResidual.forward(ctx, x, ln_w, ln_b, wqkv, bqkv, wp, bp, c1, c2, scale, eps, dtype, None,
                                          perm, inv_perm, heads, width, True, groups, attn_scale, True)
    if ctx.backend != "triton":  # the callers check backward_tiles_cover first
        raise RuntimeError(f"sret::attn_residual_train: the Triton attention kernels do not take this shape "
                           f"({groups} groups of {x.shape[1] // groups} tokens, {heads} heads)")
    saved = ctx.saved_tensors
    mean, rstd, (bqkv16, o, lse) = saved[11], saved[12], saved[17:]  # 15, 16: the kept LayerNorm output, q/k/v
    return out, mean, rstd, _own(saved[4], wqkv), _own(bqkv16, bqkv), o, lse


@torch.library.triton_op("sret::attn_residual_backward", mutates_args=())
def _attn_residual_backward_op(g: Tensor, x: Tensor, ln_w: Tensor, ln_b: Tensor, wqkv: Tensor, wp: Tensor,
                               bp: Tensor, c1: Optional[Tensor], c2: Optional[Tensor], scale: Optional[Tensor],
                               perm: Optional[Tensor], inv_perm: Optional[Tensor], mean: Tensor, rstd: Tensor,
                               wqkv16: Tensor, bqkv16: Tensor, o: Tensor, lse: Tensor, eps: float,
                               dtype: torch.dtype, groups: int, heads: int, width: int, attn_scale: float,
                               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """d (x, ln_w, ln_b, wqkv, bqkv, wp, bp, c1, c2) of ``sret::attn_residual_train``: the fused backward."""
    head_dim = x.shape[-1] // heads
    wqkv_e = fused._pad_heads(wqkv, heads, head_dim, width) if width else wqkv
    wp_e = fused._pad_heads(wp.t(), heads, head_dim, width).t() if width else wp
    ctx = _Saved((x, ln_w, ln_b, wqkv_e, wqkv16, wp, wp_e, bp, c1, c2, scale, mean, rstd, perm, inv_perm, None, None,
                  bqkv16, o, lse), eps=eps, dtype=dtype, triton=True, attend=None, heads=heads, width=width,
                 shuffled=perm is not None, backend="triton", groups=groups, attn_scale=attn_scale, low=None)
    with traceable_launches():
        grads = fused._AttnResidual.backward(ctx, g)[:9]
    return _filled(grads, x)


def _attn_setup(ctx, inputs, output) -> None:
    x, ln_w, ln_b, wqkv, bqkv, wp, bp, c1, c2, scale, perm, inv_perm, *rest = inputs
    ctx.save_for_backward(x, ln_w, ln_b, wqkv, wp, bp, c1, c2, scale, perm, inv_perm, *output[1:])
    ctx.rest, ctx.coefs = tuple(rest), (c1 is not None, c2 is not None)


def _attn_grad(ctx, g, *_saved_grads):
    grads = torch.ops.sret.attn_residual_backward(g.contiguous(), *ctx.saved_tensors, *ctx.rest)
    dc1, dc2 = (d if has else None for d, has in zip(grads[7:], ctx.coefs))
    return (*grads[:7], dc1, dc2) + (None,) * 9


torch.library.register_autograd("sret::attn_residual_train", _attn_grad, setup_context=_attn_setup)


# ---------------------------------------------------------------------------------------------- entry points
def _training_ops() -> bool:
    return os.environ.get("SRET_COMPILED_TRAIN", "0") == "1"


def enabled(x: Tensor) -> bool:
    """Whether a sublayer may run as one of these ops: under ``torch.compile``, on CUDA with the fused kernels on, and
    not switched off (``SRET_COMPILED_OPS=0``). Each entry point below then decides inference or training.

    Shapes may be symbolic: the batch stays so (``torch.compile`` makes it symbolic after a second batch size, e.g.
    a validation set's last batch), while the token count is pinned by a guard where the kernels' tile tables are
    read (``int()`` there), so another image size compiles again.
    """
    return (torch.compiler.is_compiling() and os.environ.get("SRET_COMPILED_OPS", "1") != "0" and x.dim() == 3
            and _ln.fused_kernels_enabled(x))


def mlp_residual(x: Tensor, norm, mlp, c1, c2, scale: Optional[Tensor] = None) -> Optional[Tensor]:
    """``c1 * x + c2 * s * mlp(norm(x))`` as ``sret::mlp_residual`` (no autograd graph) or ``sret::mlp_residual_train``
    (``scale``: drop path's per-sample factor, or None; only with ``SRET_COMPILED_TRAIN=1``), or None where the
    kernels do not take the shape or, without a graph, drop path is active (the caller runs the modules). Call only
    where :func:`enabled`."""
    dtype = fused.compute_dtype(x)
    graph = fused._builds_graph(x, mlp.fc1.weight, mlp.fc2.weight, norm.weight)
    if graph and not _training_ops():
        return None
    if not _kernels.forward_applies(x, mlp.fc1.out_features, dtype, save=graph) or (scale is not None and not graph):
        return None
    a, b = fused._coefs(c1, c2)
    args = (x.contiguous(), norm.weight, norm.bias, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias, a, b)
    if graph:
        return torch.ops.sret.mlp_residual_train(*args, scale, norm.eps, dtype)[0]
    return torch.ops.sret.mlp_residual(*args, norm.eps, dtype)


def attn_residual(x: Tensor, norm, attn, groups: int, perm: Optional[Tensor], inv_perm: Optional[Tensor],
                  c1, c2, scale: Optional[Tensor] = None) -> Optional[Tensor]:
    """``c1 * x + c2 * s * attn(norm(x))`` for a ``SlicedGroupAttention`` with ``attn_impl="sdpa"`` as
    ``sret::attn_residual`` (no autograd graph) or ``sret::attn_residual_train`` (``SRET_COMPILED_TRAIN=1``), or None
    where the op does not apply: in training, groups the Triton kernels do not cover; without a graph, an active
    drop path. Call only where :func:`enabled`."""
    dtype = fused.compute_dtype(x)
    graph = fused._builds_graph(x, attn.qkv.weight, attn.proj.weight, norm.weight)
    width = fused.padded_head_width(attn)
    if graph and not (_training_ops() and fused._direct_backward() and dtype in (torch.bfloat16, torch.float16)
                      and backward_tiles_cover(int(x.shape[1]) // groups, width or attn.head_dim)):
        return None
    if scale is not None and not graph:
        return None
    if perm is not None and inv_perm is None:
        inv_perm = invert_permutation(perm)
    a, b = fused._coefs(c1, c2)
    args = (x.contiguous(), norm.weight, norm.bias, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias,
            a, b)
    if graph:
        return torch.ops.sret.attn_residual_train(*args, scale, perm, inv_perm, norm.eps, dtype, groups,
                                                  attn.num_heads, width, attn.scale)[0]
    return torch.ops.sret.attn_residual(*args, perm, inv_perm, norm.eps, dtype, groups, attn.num_heads,
                                        attn.head_dim, width, attn.scale)
