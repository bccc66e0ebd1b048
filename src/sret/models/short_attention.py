"""Attention over short token groups (n <= 128) as one Triton launch, for inference.

Why: the sliced attention cuts a stage's tokens into groups of 49-98 (SReT-T's first passes and last stage). On an
H100 the fused sdpa kernels run such short sequences at 17-71 TFLOP/s against 150 for 784 tokens: four groups of
49 tokens took longer than one group of 196, so slicing saved 0.60 of the attention FLOPs but only 0.26 of its time
(docs/perf_notes.md, run 32). A whole group fits in one tile, so here one program computes one (group, head)
pair with a single softmax over at most 128 keys: no running maximum, no loop, q/k/v read once straight from the
projected tokens (B, N, 3C) and the output written as tokens (B, N, C), with no layout copies.

Semantics: ``softmax(q k^T * scale) v`` per group and head, as ``F.scaled_dot_product_attention``: scores and
softmax in float32, the probabilities rounded to the input dtype before the product with v (as the flash kernels do).
"""

from __future__ import annotations

from typing import Optional

import torch

from sret.models import layernorm as _ln

triton = _ln.triton
if triton is not None:
    import triton.language as tl

    @triton.jit
    def _group_attention_fwd(QKV, OUT, GROUP_N, C, scale, D: tl.constexpr, BLOCK_N: tl.constexpr):
        """Program (group, head): the group's GROUP_N tokens are rows group * GROUP_N ... of QKV (rows of 3C)."""
        group = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1)
        rows = tl.arange(0, BLOCK_N)
        valid = rows < GROUP_N
        cols = tl.arange(0, D)
        tok = group * GROUP_N + rows  # token rows of this group in (B*N) order
        src = QKV + tok[:, None] * (3 * C) + head * D + cols[None, :]
        q = tl.load(src, mask=valid[:, None], other=0.0)
        k = tl.load(src + C, mask=valid[:, None], other=0.0)
        v = tl.load(src + 2 * C, mask=valid[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_N, BLOCK_N) float32
        s = tl.where(valid[None, :], s, float("-inf"))
        p = tl.exp(s - tl.max(s, axis=1)[:, None])
        denom = tl.sum(p, axis=1)
        o = tl.dot(p.to(q.dtype), v) / denom[:, None]
        tl.store(OUT + tok[:, None] * C + head * D + cols[None, :], o.to(OUT.dtype.element_ty), mask=valid[:, None])


_HEAD_DIMS = (16, 32, 64)
_MAX_GROUP = 128


def short_group_attention(qkv: torch.Tensor, groups: int, heads: int, scale: float) -> Optional[torch.Tensor]:
    """Attention within ``groups`` contiguous chunks of the tokens of ``qkv`` (B, N, 3 * heads * D): (B, N, heads * D).

    None where the kernel does not apply (the caller runs sdpa): kernels off or not on CUDA / the interpreter, groups
    longer than 128 tokens, head dims other than 16, 32 or 64, dtypes other than bf16 / fp16, non-contiguous input.
    """
    B, N, C3 = qkv.shape
    C = C3 // 3
    D = C // heads
    n = N // groups
    if (not _ln.fused_kernels_enabled(qkv) or qkv.dtype not in (torch.bfloat16, torch.float16) or n > _MAX_GROUP
            or D not in _HEAD_DIMS or C3 != 3 * heads * D or N % groups or not qkv.is_contiguous()):
        return None
    out = torch.empty((B, N, C), device=qkv.device, dtype=qkv.dtype)
    block_n = max(16, triton.next_power_of_2(n))
    _group_attention_fwd[(B * groups, heads)](qkv, out, n, C, scale, D=D, BLOCK_N=block_n,
                                               num_warps=4 if block_n <= 64 else 8)
    return out
