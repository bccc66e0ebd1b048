"""Attention within token groups as one Triton launch that reads q/k/v straight from the projected tokens.

Why: the sliced attention cuts a stage's tokens into groups of 49-392 (SReT-T's first passes and last stage). The
fused sdpa kernels need q/k/v as (B*G, heads, n, D) and give the output back in that layout, so every call pays
for strided reads and a copy back to tokens, and on an H100 they run short sequences at 17-71 TFLOP/s against 150
for 784 tokens: four groups of 49 tokens took longer than one group of 196 (docs/perf_notes.md, run 32). Here one
program computes one block of queries of one (group, head) pair: q/k/v read from the projected tokens (B, N, 3C),
the output written as tokens (B, N, C). The queries of a block loop over key blocks with a running maximum (the
flash-attention recurrence); a group of at most 128 tokens can be one tile (one key block: one softmax). Which
shapes run here, and in which tiles, was measured against sdpa (:data:`TILES`).

Semantics: ``softmax(q k^T * scale) v`` per group and head, as ``F.scaled_dot_product_attention``: scores and
softmax in float32, the probabilities rounded to the input dtype before the product with v (as the flash kernels do).
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
    def _group_attention_fwd(QKV, OUT, LSE, GROUP_N, C, qk_scale, D: tl.constexpr, BLOCK_D: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SAVE_LSE: tl.constexpr):
        """Program (group, head, query block): the group's GROUP_N tokens are rows group * GROUP_N ... of QKV (rows
        of 3C, head ``head`` at columns head * D ...); ``qk_scale`` is the softmax scale times log2(e). With
        SAVE_LSE, each row's log-sum-exp of the scaled scores (log2 units) goes to LSE (tokens, heads) for the
        backward of groups longer than one tile."""
        qk_scale = tl.cast(qk_scale, tl.float32)  # fp64 where Inductor launches it
        group = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1)
        rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows within the group
        cols = tl.arange(0, BLOCK_D)
        cmask = cols < D
        base = QKV + group * GROUP_N * (3 * C) + head * D + cols[None, :]
        qmask = (rows < GROUP_N)[:, None] & cmask[None, :]
        q = tl.load(base + rows[:, None] * (3 * C), mask=qmask, other=0.0)  # (BLOCK_M, BLOCK_D)
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for start in range(0, GROUP_N, BLOCK_N):  # every key block holds at least one key of the group
            keys = start + tl.arange(0, BLOCK_N)
            kvalid = keys < GROUP_N
            kv_ptr = base + keys[:, None] * (3 * C)
            k = tl.load(kv_ptr + C, mask=kvalid[:, None] & cmask[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
            v = tl.load(kv_ptr + 2 * C, mask=kvalid[:, None] & cmask[None, :], other=0.0)
            s = tl.dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N) float32, log2 units
            s = tl.where(kvalid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)  # 0 on the first block
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v)
            m_i = m_new
        o = acc / l_i[:, None]
        tok = group * GROUP_N + rows
        tl.store(OUT + tok[:, None] * C + head * D + cols[None, :], o.to(OUT.dtype.element_ty), mask=qmask)
        if SAVE_LSE:
            tl.store(LSE + tok * (C // D) + head, m_i + tl.log2(l_i), mask=rows < GROUP_N)

    @triton.jit
    def _group_attention_bwd(QKV, DO, DQKV, GROUP_N, C, scale, D: tl.constexpr, BLOCK_D: tl.constexpr,
                             BLOCK_N: tl.constexpr):
        """Program (group, head) of a group that fits one tile: dq, dk, dv of ``softmax(q k^T * scale) v`` for the
        output gradient DO (rows of C), written into DQKV in QKV's layout. The probabilities are recomputed from q
        and k in one tile, so nothing but q/k/v is kept from the forward (no log-sum-exp, no output)."""
        scale = tl.cast(scale, tl.float32)  # fp64 where Inductor launches it
        group = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1)
        rows = tl.arange(0, BLOCK_N)
        valid = rows < GROUP_N
        cols = tl.arange(0, BLOCK_D)
        mask = valid[:, None] & (cols < D)[None, :]
        tok = group * GROUP_N + rows
        src = tok[:, None] * (3 * C) + head * D + cols[None, :]
        q = tl.load(QKV + src, mask=mask, other=0.0)  # (BLOCK_N, BLOCK_D); padded rows are zeros
        k = tl.load(QKV + src + C, mask=mask, other=0.0)
        v = tl.load(QKV + src + 2 * C, mask=mask, other=0.0)
        do = tl.load(DO + tok[:, None] * C + head * D + cols[None, :], mask=mask, other=0.0).to(q.dtype)
        s = tl.dot(q, tl.trans(k)) * (scale * 1.4426950408889634)  # (BLOCK_N, BLOCK_N) float32, log2 units
        s = tl.where(valid[None, :], s, float("-inf"))
        p = tl.exp2(s - tl.max(s, axis=1)[:, None])
        p = p / tl.sum(p, axis=1)[:, None]  # the forward's probabilities, float32
        dv = tl.dot(tl.trans(p.to(q.dtype)), do)  # padded query rows carry do = 0
        dp = tl.dot(do, tl.trans(v))
        ds = (p * (dp - tl.sum(p * dp, axis=1)[:, None]) * scale).to(q.dtype)  # d scores, rounded as flash does
        dq = tl.dot(ds, k)
        dk = tl.dot(tl.trans(ds), q)
        out = DQKV.dtype.element_ty
        tl.store(DQKV + src, dq.to(out), mask=mask)
        tl.store(DQKV + src + C, dk.to(out), mask=mask)
        tl.store(DQKV + src + 2 * C, dv.to(out), mask=mask)


    @triton.jit
    def _group_attention_bwd_dq(QKV, OUT, DO, LSE, DELTA, DQKV, GROUP_N, C, scale, D: tl.constexpr,
                                BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Program (group, head, query block) of a group longer than one tile: dq over every key block, with the
        probabilities recomputed from the forward's log-sum-exp. Also writes DELTA = rowsum(do * o) (tokens,
        heads), which :func:`_group_attention_bwd_dkdv` reads: launch this one first."""
        scale = tl.cast(scale, tl.float32)  # fp64 where Inductor launches it
        group = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1)
        rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
        qvalid = rows < GROUP_N
        cols = tl.arange(0, BLOCK_D)
        cmask = cols < D
        qmask = qvalid[:, None] & cmask[None, :]
        tok = group * GROUP_N + rows
        q = tl.load(QKV + tok[:, None] * (3 * C) + head * D + cols[None, :], mask=qmask, other=0.0)
        do = tl.load(DO + tok[:, None] * C + head * D + cols[None, :], mask=qmask, other=0.0).to(q.dtype)
        o = tl.load(OUT + tok[:, None] * C + head * D + cols[None, :], mask=qmask, other=0.0)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)  # (BLOCK_M,)
        tl.store(DELTA + tok * (C // D) + head, delta, mask=qvalid)
        lse = tl.load(LSE + tok * (C // D) + head, mask=qvalid, other=0.0)
        dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        kv_base = QKV + group * GROUP_N * (3 * C) + head * D + cols[None, :]
        for start in range(0, GROUP_N, BLOCK_N):
            keys = start + tl.arange(0, BLOCK_N)
            kvalid = keys < GROUP_N
            kmask = kvalid[:, None] & cmask[None, :]
            k = tl.load(kv_base + keys[:, None] * (3 * C) + C, mask=kmask, other=0.0)  # (BLOCK_N, BLOCK_D)
            v = tl.load(kv_base + keys[:, None] * (3 * C) + 2 * C, mask=kmask, other=0.0)
            s = tl.dot(q, tl.trans(k)) * (scale * 1.4426950408889634)  # (BLOCK_M, BLOCK_N), log2 units
            p = tl.where(kvalid[None, :], tl.exp2(s - lse[:, None]), 0.0)  # the forward's probabilities
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(q.dtype), k)
        tl.store(DQKV + tok[:, None] * (3 * C) + head * D + cols[None, :], (dq * scale).to(DQKV.dtype.element_ty),
                 mask=qmask)

    @triton.jit
    def _group_attention_bwd_dkdv(QKV, DO, LSE, DELTA, DQKV, GROUP_N, C, scale, D: tl.constexpr,
                                  BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Program (group, head, key block) of a group longer than one tile: dk and dv over every query block
        (BLOCK_M queries a step), scores computed transposed (keys as rows) so both sums run along the loop."""
        scale = tl.cast(scale, tl.float32)  # fp64 where Inductor launches it
        group = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1)
        keys = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
        kvalid = keys < GROUP_N
        cols = tl.arange(0, BLOCK_D)
        cmask = cols < D
        kmask = kvalid[:, None] & cmask[None, :]
        ktok = group * GROUP_N + keys
        kv_ptr = QKV + ktok[:, None] * (3 * C) + head * D + cols[None, :]
        k = tl.load(kv_ptr + C, mask=kmask, other=0.0)  # (BLOCK_N, BLOCK_D)
        v = tl.load(kv_ptr + 2 * C, mask=kmask, other=0.0)
        dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        for start in range(0, GROUP_N, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            qvalid = rows < GROUP_N
            qmask = qvalid[:, None] & cmask[None, :]
            tok = group * GROUP_N + rows
            q = tl.load(QKV + tok[:, None] * (3 * C) + head * D + cols[None, :], mask=qmask, other=0.0)
            do = tl.load(DO + tok[:, None] * C + head * D + cols[None, :], mask=qmask, other=0.0).to(q.dtype)
            lse = tl.load(LSE + tok * (C // D) + head, mask=qvalid, other=0.0)
            delta = tl.load(DELTA + tok * (C // D) + head, mask=qvalid, other=0.0)
            s_t = tl.dot(k, tl.trans(q)) * (scale * 1.4426950408889634)  # (BLOCK_N, BLOCK_M), log2 units
            p_t = tl.where(qvalid[None, :], tl.exp2(s_t - lse[None, :]), 0.0)
            dv += tl.dot(p_t.to(q.dtype), do)
            dp_t = tl.dot(v, tl.trans(do))
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q)
        out = DQKV.dtype.element_ty
        dst = DQKV + ktok[:, None] * (3 * C) + head * D + cols[None, :]
        tl.store(dst + C, (dk * scale).to(out), mask=kmask)
        tl.store(dst + 2 * C, dv.to(out), mask=kmask)


_HEAD_DIMS = range(16, 65, 8)  # head widths (multiples of 8: 16-byte rows); SReT-S's 42 is carried 48 wide
_MAX_ONE_TILE = 128

# (tokens per group, head width) -> (BLOCK_M, BLOCK_N, num_warps, num_stages): the fastest config of
# ``benchmarks/attention_shapes.py --sweep`` for each inference shape of SReT-T and SReT-S where it beat sdpa (its
# layout copies included) by at least 3 %; H100, bf16, batch 256, CUDA-graph replays (run 34,
# ``benchmarks/results/attention_sweep_run34/``). Microseconds a call in the comments: this config, sdpa. Shapes
# not listed run one tile where the group fits one (<= 128 tokens, power-of-two head width, run 33), else sdpa.
# SReT-S's 48-wide heads (carried in 64-wide tiles) lost to sdpa for every group longer than 49 tokens.
TILES: dict[tuple[int, int], tuple[int, int, int, int]] = {
    (98, 32): (128, 64, 4, 3),   # 54.4 vs 71.2 (one tile: 68.2)
    (196, 32): (128, 32, 4, 3),  # 44.0 vs 58.4
    (392, 32): (128, 64, 4, 3),  # 141.3 vs 190.3
    (784, 32): (128, 64, 4, 3),  # 211.1 vs 270.0 (sret_t_wo_slice)
    (49, 48): (64, 32, 4, 3),    # 52.9 vs 101.7 (SReT-S stage 1, 4 groups); 27.0 vs 55.1 (stage 2)
}


def _config(n: int, width: int) -> Optional[tuple[int, int, int, int]]:
    if (n, width) in TILES:
        return TILES[n, width]
    if n <= _MAX_ONE_TILE and width in (16, 32, 64):  # one tile: all keys at once, no running maximum (run 33)
        block = max(16, next_power_of_2(n))
        return block, block, 4 if block <= 64 else 8, 1
    return None


def _supported(qkv: torch.Tensor, groups: int, heads: int) -> bool:
    B, N, C3 = qkv.shape
    D = C3 // (3 * heads)
    return (_ln.fused_kernels_enabled(qkv) and qkv.dtype in (torch.bfloat16, torch.float16) and D in _HEAD_DIMS
            and C3 == 3 * heads * D and N % groups == 0 and qkv.is_contiguous())


def group_attention(qkv: torch.Tensor, groups: int, heads: int, scale: float,
                    config: Optional[tuple[int, int, int, int]] = None, keep_lse: bool = False):
    """Attention within ``groups`` contiguous chunks of the tokens of ``qkv`` (B, N, 3 * heads * D): (B, N, heads * D).

    ``config`` = (BLOCK_M, BLOCK_N, num_warps, num_stages) overrides the table (benchmarks, tests). None where the
    kernel does not apply (the caller runs sdpa): kernels off or not on CUDA / the interpreter, dtypes other than
    bf16 / fp16, head widths other than 16-64 in steps of 8, non-contiguous input, or a shape that is neither in
    :data:`TILES` nor one tile of a power-of-two head width.

    ``keep_lse`` (training): return ``(out, lse)``, ``lse`` each row's log-sum-exp of the scaled scores in log2
    units (B * N, heads), float32, which :func:`group_attention_backward` reads where it takes two launches.
    """
    B, N, C3 = qkv.shape
    C = C3 // 3
    D = C // heads
    n = N // groups
    if not _supported(qkv, groups, heads):
        return None
    # int(): under torch.compile with symbolic shapes (compiled_ops.py) this pins the token count (a guard)
    config = config or _config(int(n), int(D))
    if config is None:
        return None
    block_m, block_n, warps, stages = config
    out = torch.empty((B, N, C), device=qkv.device, dtype=qkv.dtype)
    # Unused, LSE gets a read-only input, not an alias of ``out``: inside a compiled graph an output passed twice to
    # one launch could cost a copy of it (``kernel_launch.py``)
    lse = torch.empty((B * N, heads), device=qkv.device, dtype=torch.float32) if keep_lse else qkv
    grid = (B * groups, heads, cdiv(n, block_m))
    launchable(_group_attention_fwd)[grid](
        qkv, out, lse, n, C, scale * 1.4426950408889634, D=D, BLOCK_D=next_power_of_2(D), BLOCK_M=block_m,
        BLOCK_N=block_n, SAVE_LSE=keep_lse, num_warps=warps, num_stages=stages)
    return (out, lse) if keep_lse else out


# (tokens per group, head width) -> (BLOCK_M, BLOCK_N, num_warps, num_stages) of the two backward kernels: the
# fastest config of ``benchmarks/attention_shapes.py --sweep-backward`` (forward with log-sum-exp + backward, against
# cuDNN's kept core and, for groups of <= 128 tokens, the one-tile backward) where it won by >= 3 %; H100, bf16,
# batch 256, CUDA-graph replays (run 36, ``benchmarks/results/attention_sweep_run36/``). Microseconds for forward +
# backward in the comments: this config, cuDNN. Groups of <= 128 tokens not listed take the one-tile backward (98
# tokens: 261 us, 49: 65 us, against cuDNN's 405 and 269); longer ones not listed keep cuDNN in training.
BACKWARD_TILES: dict[tuple[int, int], tuple[int, int, int, int]] = {
    (196, 32): (128, 64, 4, 3),  # 194.3 vs 270.9
    (392, 32): (128, 64, 4, 3),  # 545.2 vs 748.9
    (784, 32): (128, 64, 4, 3),  # 814.2 vs 1018.7 (sret_t_wo_slice)
}


def backward_applies(qkv: torch.Tensor, groups: int, heads: int) -> bool:
    """Whether :func:`group_attention` and :func:`group_attention_backward` cover this call: the forward's
    conditions, and a group that fits one tile (<= 128 tokens: the probabilities are recomputed whole in backward)
    or a shape in :data:`BACKWARD_TILES`."""
    if not _supported(qkv, groups, heads):
        return False
    return backward_tiles_cover(int(qkv.shape[1]) // groups, int(qkv.shape[2]) // (3 * heads))


def backward_tiles_cover(n: int, width: int) -> bool:
    """Whether the forward and backward kernels have tiles for groups of ``n`` tokens and heads ``width`` wide (the
    shape part of :func:`backward_applies`, for callers that decide before q/k/v exist)."""
    return width in _HEAD_DIMS and _config(n, width) is not None and (n <= _MAX_ONE_TILE
                                                                      or (n, width) in BACKWARD_TILES)


def group_attention_backward(qkv: torch.Tensor, do: torch.Tensor, groups: int, heads: int, scale: float,
                             o: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None,
                             config: Optional[tuple[int, int, int, int]] = None) -> torch.Tensor:
    """d qkv (B, N, 3 * heads * D) of :func:`group_attention` for the output gradient ``do`` (B, N, heads * D), for
    calls where :func:`backward_applies`, the gradient written straight in qkv's token layout. A group of <= 128
    tokens not in :data:`BACKWARD_TILES` is one launch from q/k/v alone; otherwise (or with ``config``, the
    (BLOCK_M, BLOCK_N, num_warps, num_stages) of both kernels) it takes the forward's output ``o`` (B, N, heads * D)
    and ``lse`` (``keep_lse``) and two launches: dq (and rowsum(do * o)), then dk and dv."""
    B, N, C3 = qkv.shape
    C = C3 // 3
    D = C // heads
    n = N // groups
    torch._assert(do.shape == (B, N, C) and do.is_contiguous(), "do must be contiguous (B, N, heads * D)")
    dqkv = torch.empty_like(qkv)
    block_d = next_power_of_2(D)
    if config is None and n <= _MAX_ONE_TILE and (n, D) not in BACKWARD_TILES:
        block = max(16, next_power_of_2(n))
        launchable(_group_attention_bwd)[(B * groups, heads)](
            qkv, do, dqkv, n, C, scale, D=D, BLOCK_D=block_d, BLOCK_N=block, num_warps=4 if block <= 64 else 8)
        return dqkv
    block_m, block_n, warps, stages = config or BACKWARD_TILES[n, D]
    torch._assert(o is not None and lse is not None, "groups longer than one tile need the forward's o and lse")
    delta = torch.empty_like(lse)
    launchable(_group_attention_bwd_dq)[(B * groups, heads, cdiv(n, block_m))](
        qkv, o, do, lse, delta, dqkv, n, C, scale, D=D, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=warps, num_stages=stages)
    launchable(_group_attention_bwd_dkdv)[(B * groups, heads, cdiv(n, block_n))](
        qkv, do, lse, delta, dqkv, n, C, scale, D=D, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=warps, num_stages=stages)
    return dqkv
