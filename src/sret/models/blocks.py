"""The two kinds of layer a recursive stage is made of: the shared transformer block and the unshared NLL."""

from __future__ import annotations

from typing import Optional

import torch
from timm.layers import DropPath, Mlp
from torch import nn

from sret.models import compiled_ops, fused
from sret.models.attention import AttnImpl, SlicedGroupAttention
from sret.models.layernorm import TokenLayerNorm


class ResidualCoefficient(nn.Module):
    """A learnable scalar that scales one branch of a residual sum (one of ``coefficient1..4``).

    The published checkpoints store it as a one-element parameter called ``bias``; the name is kept for loading.
    """

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.full((1,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.bias


def _drop_path_scale(drop_path: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """Per-sample keep scale (B,) for the fused path: the mask timm's ``DropPath`` would draw, or None if inactive."""
    if not isinstance(drop_path, DropPath) or not drop_path.training or drop_path.drop_prob == 0.0:
        return None
    keep = 1.0 - drop_path.drop_prob
    scale = x.new_empty(x.shape[0], dtype=torch.promote_types(x.dtype, torch.float32)).bernoulli_(keep)
    return scale.div_(keep) if drop_path.scale_by_keep and keep > 0.0 else scale


def _fusable_mlp(mlp: Mlp, training: bool) -> bool:
    # Fused path covers exactly fc1 -> GELU -> fc2 with biases; active dropout keeps the modules.
    return (isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none" and isinstance(mlp.norm, nn.Identity)
            and mlp.fc1.bias is not None and mlp.fc2.bias is not None
            and not (training and (mlp.drop1.p > 0 or mlp.drop2.p > 0)))


def _weighted_sum(
    x: torch.Tensor, y: torch.Tensor, cx: Optional[ResidualCoefficient], cy: Optional[ResidualCoefficient]
) -> torch.Tensor:
    """``cx * x + cy * y``, or the plain residual ``x + y`` when coefficients are switched off."""
    if cx is None:
        return x + y
    # One fused multiply-add instead of a second multiply and an add: two passes over the residual stream instead
    # of three in eager mode; same values up to fp32 rounding, same gradients for both coefficients.
    return torch.addcmul(cx(x), y, cy.bias)


class RecursiveBlock(nn.Module):
    """Pre-norm transformer block with learnable residual coefficients, applied several times in a row.

    ``x = c1 * x + c2 * drop_path(attn(norm1(x)))``; ``x = c3 * x + c4 * drop_path(mlp(norm2(x)))``.
    The grouping and permutation of the attention are per application, so they are ``forward`` arguments.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        learnable_coefficients: bool = True,
        attn_impl: AttnImpl = "sdpa",
    ) -> None:
        super().__init__()
        self.norm1 = TokenLayerNorm(dim, eps=1e-6)
        self.attn = SlicedGroupAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop, attn_impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = TokenLayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.learnable_coefficients = learnable_coefficients
        if learnable_coefficients:
            self.coefficient1 = ResidualCoefficient()
            self.coefficient2 = ResidualCoefficient()
            self.coefficient3 = ResidualCoefficient()
            self.coefficient4 = ResidualCoefficient()
        else:
            self.coefficient1 = self.coefficient2 = self.coefficient3 = self.coefficient4 = None
        self.keep_activations = False  # SReT.set_keep_activations: see fused.attn_residual / fused.mlp_residual

    def forward(
        self,
        x: torch.Tensor,
        groups: int = 1,
        perm: Optional[torch.Tensor] = None,
        inv_perm: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if self._fused_ok(x):
            x = fused.attn_residual(x, self.norm1, self.attn, groups, perm, inv_perm, self.coefficient1,
                                    self.coefficient2, _drop_path_scale(self.drop_path, x), self.keep_activations)
            return fused.mlp_residual(x, self.norm2, self.mlp, self.coefficient3, self.coefficient4,
                                      _drop_path_scale(self.drop_path, x), self.keep_activations)
        out = self._compiled_ops(x, groups, perm, inv_perm)  # under torch.compile: the fused kernels as ops
        if out is not None:
            return out
        y = self.drop_path(self.attn(self.norm1(x), groups, perm, inv_perm))
        x = _weighted_sum(x, y, self.coefficient1, self.coefficient2)
        y = self.drop_path(self.mlp(self.norm2(x)))
        return _weighted_sum(x, y, self.coefficient3, self.coefficient4)

    def _fused_ok(self, x: torch.Tensor) -> bool:
        attn = self.attn
        dropout = self.training and (attn.attn_drop.p > 0 or attn.proj_drop.p > 0)
        return (x.dim() == 3 and fused.fused_enabled() and not dropout and attn.qkv.bias is not None
                and _fusable_mlp(self.mlp, self.training))

    def _compiled_ops(self, x: torch.Tensor, groups: int, perm: Optional[torch.Tensor],
                      inv_perm: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The block through ``compiled_ops`` (under ``torch.compile``), or None where its attention op does not
        apply; an MLP shape the kernels do not take runs as modules after the attention op."""
        attn = self.attn
        dropout = self.training and (attn.attn_drop.p > 0 or attn.proj_drop.p > 0)
        if (dropout or attn.attn_impl != "sdpa" or attn.qkv.bias is None or not _fusable_mlp(self.mlp, self.training)
                or not compiled_ops.enabled(x)):
            return None
        x = compiled_ops.attn_residual(x, self.norm1, attn, groups, perm, inv_perm, self.coefficient1,
                                       self.coefficient2, _drop_path_scale(self.drop_path, x))
        if x is None:
            return None
        out = compiled_ops.mlp_residual(x, self.norm2, self.mlp, self.coefficient3, self.coefficient4,
                                        _drop_path_scale(self.drop_path, x))
        if out is None:
            out = _weighted_sum(x, self.drop_path(self.mlp(self.norm2(x))), self.coefficient3, self.coefficient4)
        return out


class NonLinearProjection(nn.Module):
    """NLL: the unshared layer after every application of a shared block, ``x = c1 * x + c2 * mlp(norm1(x))``.

    It is what lets consecutive applications of the same weights compute different functions; it has no
    attention and no drop path (as published).
    """

    def __init__(self, dim: int, nll_ratio: float, learnable_coefficients: bool = True) -> None:
        super().__init__()
        self.norm1 = TokenLayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * nll_ratio), act_layer=nn.GELU)
        if learnable_coefficients:
            self.coefficient1 = ResidualCoefficient()
            self.coefficient2 = ResidualCoefficient()
        else:
            self.coefficient1 = self.coefficient2 = None
        self.keep_activations = False  # SReT.set_keep_activations: see fused.mlp_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and fused.fused_enabled() and _fusable_mlp(self.mlp, self.training):
            return fused.mlp_residual(x, self.norm1, self.mlp, self.coefficient1, self.coefficient2,
                                      keep=self.keep_activations)
        if _fusable_mlp(self.mlp, self.training) and compiled_ops.enabled(x):
            out = compiled_ops.mlp_residual(x, self.norm1, self.mlp, self.coefficient1, self.coefficient2)
            if out is not None:
                return out
        return _weighted_sum(x, self.mlp(self.norm1(x)), self.coefficient1, self.coefficient2)
