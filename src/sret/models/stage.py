"""A recursive stage: R unique blocks, each applied L times in a row, an unshared NLL after every application."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sret.errors import SReTError
from sret.models import shared_weights
from sret.models.attention import AttnImpl
from sret.models.blocks import NonLinearProjection, RecursiveBlock

EvalPermutation = Literal["fixed", "random"]


@dataclass(frozen=True)
class Application:
    """One application of a shared block inside a stage (one step of the executed sequence)."""

    block: int  # index into ``RecursiveStage.blocks`` of the shared block
    nll: Optional[int]  # index of the NLL that follows it, None when NLLs are switched off
    groups: int  # groups used by this application's attention
    shuffled: bool  # recursive pass with groups > 1: tokens are permuted before grouping


class RecursiveStage(nn.Module):
    """Runs ``B0, N0, B0, N1, B1, N2, B1, N3, ...`` for R = 2 unique blocks and L = 2 loops.

    ``blocks`` is the flat list in execution order, so a shared block sits under L indices (``blocks.0`` and
    ``blocks.2`` are one module). That is exactly how the published checkpoints store a stage, and
    ``parameters()`` still counts each shared block once.

    Args:
        stage_index: Position of the stage, used in error messages and to seed fixed permutations.
        dim: Token channels.
        num_heads: Attention heads.
        depth: Block applications in the stage (R * L).
        unique_blocks: R, blocks with their own weights; ``depth`` must be a multiple of it.
        mlp_ratio: Hidden size of a block's MLP over ``dim``.
        nll_ratio: Hidden size of an NLL's MLP over ``dim``.
        groups1: Attention groups of the first application of each block (natural token order).
        groups2: Attention groups of the recursive applications (shuffled tokens when > 1).
        drop_path: Drop-path rate of each unique block (both of its applications use it, as published).
        use_nll: NLL layers on (published) or off (naive recursion ablation).
        learnable_coefficients: Learnable residual scalars (published) or a plain residual.
        eval_permutation: ``"fixed"``: a seeded permutation per application in eval, deterministic;
            ``"random"``: a fresh one per call, as the published code does. Training always draws fresh ones.
        permutation_seed: Seed of the fixed eval permutations.
        grid_size: The grid the model is built for; its fixed permutations are made once, as non-persistent
            buffers (out of the state dict, moved by ``.to()``), so compiled and CUDA-graph eval see constants.
    """

    def __init__(
        self,
        stage_index: int,
        dim: int,
        num_heads: int,
        depth: int,
        unique_blocks: int,
        mlp_ratio: float,
        nll_ratio: float,
        groups1: int = 1,
        groups2: int = 1,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] = (),
        use_nll: bool = True,
        learnable_coefficients: bool = True,
        eval_permutation: EvalPermutation = "fixed",
        permutation_seed: int = 0,
        attn_impl: AttnImpl = "sdpa",
        grid_size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__()
        if unique_blocks < 1 or depth < unique_blocks or depth % unique_blocks != 0:
            raise SReTError(
                f"stage {stage_index}: depth {depth} must be a positive multiple of unique_blocks {unique_blocks} "
                f"(depth = unique blocks x loops)"
            )
        if eval_permutation not in ("fixed", "random"):
            raise SReTError(f"eval_permutation must be 'fixed' or 'random', got {eval_permutation!r}")
        if groups1 < 1 or groups2 < 1:
            raise SReTError(f"stage {stage_index}: group counts must be >= 1, got {groups1} and {groups2}")
        self.stage_index = stage_index
        self.loops = depth // unique_blocks
        self.eval_permutation = eval_permutation
        self.permutation_seed = permutation_seed
        self.grad_checkpointing = False
        drop_path = list(drop_path) or [0.0] * unique_blocks

        layers: list[nn.Module] = []
        schedule: list[Application] = []
        for r in range(unique_blocks):
            block = RecursiveBlock(
                dim, num_heads, mlp_ratio, qkv_bias, proj_drop, attn_drop, drop_path[r],
                learnable_coefficients, attn_impl,
            )
            for loop in range(self.loops):
                block_index = len(layers)
                layers.append(block)  # the same module object under every loop's index
                nll_index = None
                if use_nll:
                    nll_index = len(layers)
                    layers.append(NonLinearProjection(dim, nll_ratio, learnable_coefficients))
                groups = groups1 if loop == 0 else groups2
                schedule.append(Application(block_index, nll_index, groups, shuffled=loop > 0 and groups > 1))
        self.blocks = nn.ModuleList(layers)
        self.schedule: tuple[Application, ...] = tuple(schedule)
        self._fixed_perms: dict[tuple[int, int, str], torch.Tensor] = {}
        if grid_size is not None:
            for step, app in enumerate(self.schedule):
                if app.shuffled:
                    self.register_buffer(
                        f"perm{step}", self._seeded_permutation(step, grid_size[0] * grid_size[1]), persistent=False
                    )

    @property
    def group_counts(self) -> tuple[int, ...]:
        return tuple(sorted({a.groups for a in self.schedule}))

    def check_grid(self, height: int, width: int) -> None:
        """Raise a clear error when the grid's tokens cannot be cut into this stage's groups."""
        tokens = height * width
        bad = [g for g in sorted(self.group_counts, reverse=True) if tokens % g != 0]
        if bad:
            raise SReTError(
                f"stage {self.stage_index}: a {height}x{width} grid has {tokens} tokens, which do not divide into "
                f"{' or '.join(map(str, bad))} attention groups; choose an input size whose stage grids divide by the "
                f"groups ({', '.join(map(str, self.group_counts))}), or a model with other groups"
            )

    def _seeded_permutation(self, step: int, num_tokens: int) -> torch.Tensor:
        # Seeded on the CPU so the same model gives the same permutation on every device and machine.
        gen = torch.Generator().manual_seed(self.permutation_seed * 1_000_003 + self.stage_index * 1009 + step)
        return torch.randperm(num_tokens, generator=gen)

    def _permutation(self, step: int, num_tokens: int, device: torch.device) -> torch.Tensor:
        if self.training or self.eval_permutation == "random":
            return torch.randperm(num_tokens, device=device)
        perm = getattr(self, f"perm{step}", None)
        if perm is not None and perm.numel() == num_tokens:
            return perm
        key = (step, num_tokens, str(device))  # other input sizes (dynamic_img_size): made once, cached
        perm = self._fixed_perms.get(key)
        if perm is None:
            perm = self._fixed_perms[key] = self._seeded_permutation(step, num_tokens).to(device)
        return perm

    def permutations(self, num_tokens: int, device: torch.device) -> list[Optional[torch.Tensor]]:
        """One permutation per shuffled application, drawn before the forward so checkpointing replays it."""
        return [self._permutation(i, num_tokens, device) if a.shuffled else None for i, a in enumerate(self.schedule)]

    def _apply(self, fn, *args, **kwargs):  # noqa: D401 - nn.Module hook
        # Cached fixed permutations are derived data: drop them when the module moves or changes dtype.
        self._fixed_perms = {}
        return super()._apply(fn, *args, **kwargs)

    def _run(self, x: torch.Tensor, app: Application, perm: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.blocks[app.block](x, app.groups, perm)
        if app.nll is not None:
            x = self.blocks[app.nll](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``; the stage itself works on row-major tokens."""
        B, C, H, W = x.shape
        self.check_grid(H, W)
        perms = self.permutations(H * W, x.device)
        # (B, H*W, C), row-major tokens. Made contiguous once here: a transposed view would otherwise carry its
        # channel-major layout through every residual op of the stage (elementwise ops keep their input's strides),
        # so each LayerNorm would copy it and every add/mul would run the slow strided kernel (measured on an H100).
        x = x.flatten(2).transpose(1, 2).contiguous()
        # a shared block's weights are cast (and padded) once for all of its applications here (shared_weights.py)
        memo = contextlib.nullcontext() if torch.compiler.is_compiling() else shared_weights.once()
        with memo:
            for app, perm in zip(self.schedule, perms):
                if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                    x = checkpoint(self._run, x, app, perm, use_reentrant=False)
                else:
                    x = self._run(x, app, perm)
        return x.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
