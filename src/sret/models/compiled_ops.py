"""The fused inference sublayers as ``torch.library.triton_op``s: what a compiled model runs for them.

Why: ``torch.compile`` cannot trace the fused sublayers (autograd Functions, tile tables, Triton's Python launch
path), so a compiled SReT ran its plain modules on Inductor's own kernels: on an H100 its inference step took
~10.8 ms of GPU time where the fused kernels take ~5.9 ms, with twice the launches (docs/perf_notes.md, run 44). A
``triton_op`` is a custom op whose body Inductor traces: the same launch code as the eager fused path (through
:func:`~sret.models.kernel_launch.launchable`), with the kernels launched by Inductor's own launchers and the
PyTorch ops around them (GEMMs, casts) compiled with the rest of the graph.

Inference only: a step that builds an autograd graph keeps the plain modules under ``torch.compile`` (the ops have no
backward). ``SRET_COMPILED_OPS=0`` switches the ops off (the compiled model then runs the plain modules, as before),
for A/B measurements in one process.
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


def enabled(x: Tensor, training: bool, *params: Tensor) -> bool:
    """Whether a sublayer may run as one of these ops: under ``torch.compile``, on CUDA with the fused kernels on,
    in eval mode, building no autograd graph, and not switched off (``SRET_COMPILED_OPS=0``).

    Shapes may be symbolic: the batch stays so (``torch.compile`` makes it symbolic after a second batch size, e.g.
    a validation set's last batch), while the token count is pinned by a guard where the kernels' tile tables are
    read (``int()`` there), so another image size compiles again.
    """
    return (torch.compiler.is_compiling() and os.environ.get("SRET_COMPILED_OPS", "1") != "0" and not training
            and x.dim() == 3 and _ln.fused_kernels_enabled(x) and not fused._builds_graph(x, *params))


def mlp_residual(x: Tensor, norm, mlp, c1, c2) -> Optional[Tensor]:
    """``c1 * x + c2 * mlp(norm(x))`` as ``sret::mlp_residual``, or None where its kernels do not take the shape
    (the caller runs the modules). Call only where :func:`enabled`."""
    dtype = fused.compute_dtype(x)
    if not _kernels.forward_applies(x, mlp.fc1.out_features, dtype, save=False):
        return None
    a, b = fused._coefs(c1, c2)
    return torch.ops.sret.mlp_residual(x.contiguous(), norm.weight, norm.bias, mlp.fc1.weight, mlp.fc1.bias,
                                       mlp.fc2.weight, mlp.fc2.bias, a, b, norm.eps, dtype)


def attn_residual(x: Tensor, norm, attn, groups: int, perm: Optional[Tensor], inv_perm: Optional[Tensor],
                  c1, c2) -> Tensor:
    """``c1 * x + c2 * attn(norm(x))`` for a ``SlicedGroupAttention`` with ``attn_impl="sdpa"`` as
    ``sret::attn_residual``. Call only where :func:`enabled`."""
    if perm is not None and inv_perm is None:
        inv_perm = invert_permutation(perm)
    a, b = fused._coefs(c1, c2)
    return torch.ops.sret.attn_residual(x.contiguous(), norm.weight, norm.bias, attn.qkv.weight, attn.qkv.bias,
                                        attn.proj.weight, attn.proj.bias, a, b, perm, inv_perm, norm.eps,
                                        fused.compute_dtype(x), groups, attn.num_heads, attn.head_dim,
                                        fused.padded_head_width(attn), attn.scale)
