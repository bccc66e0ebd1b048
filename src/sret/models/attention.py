"""Sliced group self-attention.

Tokens are cut into ``groups`` contiguous chunks and every head attends only inside its chunk. Folding the chunks
into the batch dimension turns that into ordinary multi-head attention over ``B * G`` shorter sequences, so the
fused ``F.scaled_dot_product_attention`` kernels (flash / memory-efficient) do all the work and no attention matrix
is ever materialised. The recursive passes shuffle the tokens first (a gather with a permutation) and un-shuffle the
result (a gather with its inverse) so that the chunks differ from those of the first pass.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

AttnImpl = Literal["sdpa", "math"]
ATTN_IMPLS: tuple[str, ...] = ("sdpa", "math")


def invert_permutation(perm: torch.Tensor) -> torch.Tensor:
    """Inverse of a permutation as another index tensor: ``x[perm][inverse] == x``.

    A scatter of ``arange`` is O(N) and stays on the permutation's device (argsort would sort).
    """
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device, dtype=perm.dtype)
    return inverse


class _GatherTokens(torch.autograd.Function):
    """``x[:, perm]`` whose backward is a gather by the inverse permutation.

    Autograd's backward of an index gather is a scatter-add (``index_put_(accumulate=True)``: sort + atomics), since
    indices may repeat in general. A permutation's indices never repeat, so the gradient is simply the incoming
    gradient gathered back by the inverse: the same cheap kernel as the forward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(1, perm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


def gather_tokens(x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Reorder the tokens of ``x`` (B, N, C) by ``perm``; ``inverse`` must be its inverse (used for the gradient)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _GatherTokens.apply(x, perm, inverse)
    return x.index_select(1, perm)  # inference and export: a plain gather


class _SplitQKV(torch.autograd.Function):
    """q, k, v ``(B*G, H, n, D)`` as views of projected tokens ``(B, N, 3 * H * D)`` cut into G groups of n.

    Why: split by ``unbind``, the backward stacks dq/dk/dv into a new ``(3, B*G, H, n, D)`` tensor and the reshape
    back to ``(B, N, 3C)`` then copies it again, two passes over the largest gradient of the attention sublayer (a
    quarter of SReT-T's copy traffic in a training step on an H100, docs/perf_notes.md). Here each of dq, dk, dv is
    copied once, straight into its slots of the ``(B, N, 3C)`` gradient.
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, groups: int, heads: int):
        B, N, C3 = qkv.shape
        G, H = groups, heads
        n, D = N // G, C3 // (3 * H)
        ctx.shape = (B, G, n, H, D)
        parts = qkv.view(B, G, n, 3, H, D).permute(3, 0, 1, 4, 2, 5)  # (3, B, G, H, n, D)
        return tuple(parts.reshape(3, B * G, H, n, D).unbind(0))  # each (B*G, H, n, D), groups ride the batch

    @staticmethod
    def backward(ctx, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor):
        B, G, n, H, D = ctx.shape
        dqkv = dq.new_empty((B, G, n, 3, H, D))
        for i, d in enumerate((dq, dk, dv)):
            if d is None:
                dqkv[:, :, :, i].zero_()
            else:
                dqkv[:, :, :, i].copy_(d.view(B, G, H, n, D).permute(0, 1, 3, 2, 4))  # (B, G, n, H, D)
        return dqkv.view(B, G * n, 3 * H * D), None, None


def split_qkv(qkv: torch.Tensor, groups: int, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v ``(B*G, H, n, D)`` from ``qkv`` ``(B, N, 3 * H * D)``: views, whose gradient is assembled in one pass
    (see :class:`_SplitQKV`; under ``torch.compile`` the plain ops, which Inductor fuses itself)."""
    if torch.is_grad_enabled() and qkv.requires_grad and qkv.is_contiguous() and not torch.compiler.is_compiling():
        return _SplitQKV.apply(qkv, groups, heads)
    B, N, C3 = qkv.shape
    n, D = N // groups, C3 // (3 * heads)
    qkv = qkv.reshape(B, groups, n, 3, heads, D).permute(3, 0, 1, 4, 2, 5)  # (3, B, G, H, n, D)
    return tuple(qkv.reshape(3, B * groups, heads, n, D).unbind(0))


def attend_groups(qkv: torch.Tensor, groups: int, heads: int, head_dim: int, scale: float,
                  perm: Optional[torch.Tensor] = None, inv_perm: Optional[torch.Tensor] = None,
                  impl: AttnImpl = "sdpa", dropout_p: float = 0.0) -> torch.Tensor:
    """The attention core of :meth:`SlicedGroupAttention.attend` without the module (also what the compiled ops of
    ``compiled_ops.py`` fall back on): q/k/v ``(B, N, 3 * heads * D)`` -> ``(B, N, heads * D)``, ``D >= head_dim``;
    ``dropout_p`` on the attention probabilities (pass 0 outside training)."""
    B, N, C3 = qkv.shape
    G, H = groups, heads
    D = C3 // (3 * H)  # head_dim, or the padded head width
    C = H * D
    torch._assert(C3 == 3 * C and D >= head_dim, "qkv must have 3 * heads * (head_dim or more) channels")
    torch._assert(N % G == 0, "token count must be divisible by the number of groups")
    n = N // G
    if perm is not None:
        if inv_perm is None:
            inv_perm = invert_permutation(perm)
        qkv = gather_tokens(qkv, perm, inv_perm)  # (B, N, 3C), shuffled token order
    q, k, v = split_qkv(qkv, G, H)  # each (B*G, H, n, D): groups ride the batch
    if impl == "math":
        attn = (q * scale) @ k.transpose(-2, -1)  # (B*G, H, n, n)
        attn = F.dropout(attn.softmax(dim=-1), dropout_p, training=dropout_p > 0)
        out = attn @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    out = out.reshape(B, G, H, n, D).permute(0, 1, 3, 2, 4).reshape(B, N, C)  # (B, N, C), shuffled order
    if perm is not None:
        out = gather_tokens(out, inv_perm, perm)  # (B, N, C), back to grid order
    return out


class SlicedGroupAttention(nn.Module):
    """Multi-head self-attention restricted to groups of tokens, optionally on shuffled tokens.

    The module owns only ``qkv`` and ``proj`` (the published checkpoint names); how many groups to use and which
    permutation to apply are arguments of ``forward`` because the same (shared) module runs with different
    groupings in its first and its recursive applications.

    Args:
        dim: Token channels C.
        num_heads: Heads; ``head_dim = C // num_heads``.
        qkv_bias: Bias on the fused q/k/v projection (True in every published model).
        attn_drop: Dropout on attention probabilities (training only).
        proj_drop: Dropout after the output projection.
        attn_impl: ``"sdpa"`` (fused kernels) or ``"math"`` (explicit softmax(QK^T * scale) V; the baseline used by
            benchmarks and tests).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        attn_impl: AttnImpl = "sdpa",
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_impl = attn_impl
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        x: torch.Tensor,
        groups: int = 1,
        perm: Optional[torch.Tensor] = None,
        inv_perm: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Attend within ``groups`` chunks of (optionally permuted) tokens ``x`` (B, N, C) -> (B, N, C)."""
        return self.proj_drop(self.proj(self.attend(self.qkv(x), groups, perm, inv_perm)))

    def attend(
        self,
        qkv: torch.Tensor,
        groups: int = 1,
        perm: Optional[torch.Tensor] = None,
        inv_perm: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The attention core, between the ``qkv`` and ``proj`` Linears: q/k/v ``(B, N, 3C)`` -> ``(B, N, C)``.

        ``qkv`` may also carry each head zero-padded to a width ``D' > head_dim`` (``(B, N, 3 * heads * D')``, from
        a qkv weight with zero rows there); the output is then ``(B, N, heads * D')`` with zeros in the padding and
        the scale stays ``head_dim ** -0.5``. The fused sublayers use this for head dims that are not a multiple of
        8 (SReT-S: 42), which the flash kernels would otherwise pad and unpad with copies on every call.

        Args:
            qkv: Projected tokens in row-major grid order.
            groups: Number of contiguous chunks; ``N`` must be divisible by it (the stage checks and explains).
            perm: Optional token permutation ``(N,)`` applied before grouping; the output is returned in the
                original token order. Shuffling q/k/v after the (per-token) projection is the same function as
                shuffling the input tokens.
            inv_perm: Inverse of ``perm`` if the caller already has it.
        """
        dropout_p = self.attn_drop.p if self.training else 0.0
        return attend_groups(qkv, groups, self.num_heads, self.head_dim, self.scale, perm, inv_perm, self.attn_impl,
                             dropout_p)
