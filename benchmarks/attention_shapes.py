"""The attention core alone, per shape SReT-T runs it, sliced and unsliced: does slicing pay in kernel time?

For every (batch x groups, heads, tokens per group, head dim) shape of ``sret_t`` and ``sret_t_wo_slice`` at batch
256, times ``F.scaled_dot_product_attention`` (bf16, the kernel sdpa picks) forward, and forward + backward, as CUDA
graph replays; prints microseconds per call, the useful TFLOP/s (4 * n^2 * D per head and group, no padding), and
each model's total per step (calls per step from the stage schedule). Target 3 of issue 3 asks the sliced model's
step to take <= 0.85 of the unsliced one's; this shows what the attention kernels themselves give.

    PYTHONPATH=src python3 benchmarks/attention_shapes.py

``--sweep`` instead times the inference core as the fused model runs it, from the projected tokens (B, N, 3C) to the
output tokens (B, N, C): sdpa with its layout views and the copy back to tokens, against the Triton kernel of
``sret/models/group_attention.py`` in every tile config (each checked against sdpa's output), for the shapes of
SReT-T and SReT-S (48-wide heads) sliced and unsliced; it prints the table entries that beat sdpa by >= 3 %.

    PYTHONPATH=src python3 benchmarks/attention_shapes.py --sweep

``--sweep-backward`` does the same for a training step's core, forward and backward, for SReT-T's shapes (with
``--sret-s``, SReT-S's 48-wide ones that run cuDNN): cuDNN's
kept core as ``fused.py`` runs it (forward op with log-sum-exp, split views, merge; the backward op, the gradients
stacked back into qkv's layout) against the Triton forward with log-sum-exp plus the two backward kernels in every
tile config (checked against autograd through sdpa), and the one-tile backward where a group fits one tile.

    PYTHONPATH=src python3 benchmarks/attention_shapes.py --sweep-backward
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
from triton.testing import do_bench_cudagraph

BATCH, D = 256, 32
# (stage tokens, heads, groups, applications per step) of sret_t's schedule (groups 8-4-1 first, 2-1-1 recursive)
SLICED = [(784, 2, 8, 2), (784, 2, 2, 2), (196, 4, 4, 5), (196, 4, 1, 5), (49, 8, 1, 6)]
UNSLICED = [(784, 2, 1, 4), (196, 4, 1, 10), (49, 8, 1, 6)]


def time_shape(tokens: int, heads: int, groups: int) -> tuple[float, float, float]:
    n = tokens // groups
    q, k, v = (torch.randn(BATCH * groups, heads, n, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    do = torch.randn_like(q)
    scale = D**-0.5

    def fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, scale=scale)

    def fwd_bwd():
        torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, scale=scale), (q, k, v), do)

    f_ms = do_bench_cudagraph(fwd)
    fb_ms = do_bench_cudagraph(fwd_bwd)
    flops = 4 * BATCH * groups * heads * n * n * D
    return f_ms * 1e3, fb_ms * 1e3, flops / (f_ms * 1e-3) / 1e12


# (stage tokens, heads, groups, head width) of every distinct inference attention call: SReT-T (32 wide) and SReT-S
# (42 carried 48 wide), sliced and unsliced
SWEEP_SHAPES = [(784, 2, 8, 32), (784, 2, 2, 32), (784, 2, 1, 32), (196, 4, 4, 32), (196, 4, 1, 32), (49, 8, 1, 32),
                (784, 3, 8, 48), (784, 3, 2, 48), (784, 3, 1, 48), (196, 6, 4, 48), (196, 6, 1, 48), (49, 12, 1, 48)]
SWEEP_CONFIGS = [cfg for cfg in itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3))
                 if not (cfg[0] == 128 and cfg[1] == 128 and cfg[2] == 4)]


def sweep() -> None:
    from sret.models.attention import split_qkv
    from sret.models.group_attention import _config, group_attention

    print(torch.cuda.get_device_name(), torch.__version__)
    print(f"{'tokens':>6} {'heads':>5} {'groups':>6} {'n':>4} {'width':>5} {'sdpa us':>8} {'table us':>9} "
          f"{'best us':>8}  best (BLOCK_M, BLOCK_N, warps, stages)")
    entries = []
    for tokens, heads, groups, width in SWEEP_SHAPES:
        n = tokens // groups
        qkv = torch.randn(BATCH, tokens, 3 * heads * width, device="cuda", dtype=torch.bfloat16)
        scale = width**-0.5

        def sdpa():
            q, k, v = split_qkv(qkv, groups, heads)
            o = F.scaled_dot_product_attention(q, k, v, scale=scale)
            return o.reshape(BATCH, groups, heads, n, width).permute(0, 1, 3, 2, 4).reshape(BATCH, tokens, -1)

        with torch.no_grad():
            ref = sdpa().float()
            sdpa_us = do_bench_cudagraph(sdpa) * 1e3
            table = _config(n, width)
            table_us = do_bench_cudagraph(lambda: group_attention(qkv, groups, heads, scale)) * 1e3 if table else None
            best = (float("inf"), None)
            for cfg in SWEEP_CONFIGS:
                if n <= 128 and cfg[0] + cfg[1] > 2 * max(32, triton_next_pow2(n)):
                    continue  # blocks past a one-tile group only add padding
                try:
                    out = group_attention(qkv, groups, heads, scale, config=cfg)
                except Exception as err:  # noqa: BLE001 - tiles too large for this GPU: skip the config
                    print(f"   {cfg}: {type(err).__name__}")
                    continue
                err = ((out.float() - ref).norm() / ref.norm()).item()
                if err > 1e-2:
                    raise SystemExit(f"config {cfg} for n={n}, width={width}: relative error {err:.2e} against sdpa")
                us = do_bench_cudagraph(lambda: group_attention(qkv, groups, heads, scale, config=cfg)) * 1e3
                best = min(best, (us, cfg))
        table_txt = f"{table_us:9.1f}" if table_us else f"{'-':>9}"
        print(f"{tokens:6d} {heads:5d} {groups:6d} {n:4d} {width:5d} {sdpa_us:8.1f} {table_txt} {best[0]:8.1f}  "
              f"{best[1]}", flush=True)
        if n > 128 and best[0] <= 0.97 * sdpa_us:
            entries.append(f"    ({n}, {width}): {best[1]},  # {best[0]:.1f} vs sdpa {sdpa_us:.1f} us")
    print("TILES entries (groups longer than one tile that beat sdpa by >= 3 %):")
    print("\n".join(entries) or "    (none)")


BACKWARD_SHAPES = [(784, 2, 8, 32), (784, 2, 2, 32), (784, 2, 1, 32), (196, 4, 4, 32), (196, 4, 1, 32)]
# SReT-S's training shapes that run cuDNN (42-wide heads carried 48 wide; groups of 49 take the one-tile kernels)
BACKWARD_SHAPES_S = [(784, 3, 8, 48), (784, 3, 2, 48), (784, 3, 1, 48), (196, 6, 1, 48)]


def sweep_backward(shapes=BACKWARD_SHAPES) -> None:
    from sret.models import fused
    from sret.models import group_attention as GA
    from sret.models.attention import split_qkv

    print(torch.cuda.get_device_name(), torch.__version__)
    print(f"{'tokens':>6} {'heads':>5} {'groups':>6} {'n':>4} {'width':>5} {'cudnn us':>9} {'one tile us':>11} "
          f"{'best us':>8}  best (BLOCK_M, BLOCK_N, warps, stages)  [forward + backward]")
    entries = []
    for tokens, heads, groups, width in shapes:
        n = tokens // groups
        gen = torch.Generator(device="cuda").manual_seed(0)
        qkv = torch.randn(BATCH, tokens, 3 * heads * width, device="cuda", dtype=torch.bfloat16, generator=gen)
        do = torch.randn(BATCH, tokens, heads * width, device="cuda", dtype=torch.bfloat16, generator=gen)
        scale = width**-0.5
        qf = qkv.float().requires_grad_(True)
        q_, k_, v_ = split_qkv(qf, groups, heads)
        ref = F.scaled_dot_product_attention(q_, k_, v_, scale=scale)
        fused._merge_heads(ref, BATCH).backward(do.float())
        ref_grad = qf.grad.view(BATCH, tokens, 3, -1)

        def cudnn():
            q, k, v = split_qkv(qkv, groups, heads)
            o4, state = fused._attention_forward(q, k, v, scale, "cudnn")
            do4 = do.view(BATCH, groups, n, heads, width).permute(0, 1, 3, 2, 4).reshape(q.shape)
            grads = fused._attention_backward(do4, q, k, v, o4, state, scale, "cudnn")
            return torch.stack([fused._merge_heads(d, BATCH) for d in grads], dim=2)

        def triton_path(cfg):
            o, lse = GA.group_attention(qkv, groups, heads, scale, config=GA._config(n, width) or cfg or
                                        GA.BACKWARD_TILES.get((n, width)), keep_lse=True)
            return GA.group_attention_backward(qkv, do, groups, heads, scale, o=o, lse=lse, config=cfg)

        def check(got, label):
            got = got.view(BATCH, tokens, 3, -1).float()
            errs = [((got[:, :, i] - ref_grad[:, :, i]).norm() / ref_grad[:, :, i].norm()).item() for i in range(3)]
            if max(errs) > 2e-2:
                raise SystemExit(f"{label} for n={n}: relative errors of dq/dk/dv {errs} against float32 autograd")

        check(cudnn(), "cudnn")
        cudnn_us = do_bench_cudagraph(cudnn) * 1e3
        one_us = None
        if n <= 128 and GA._config(n, width) is not None:  # one tile: power-of-two head widths (run 33)
            check(triton_path(None), "one tile")
            one_us = do_bench_cudagraph(lambda: triton_path(None)) * 1e3
        best = (float("inf"), None)
        for cfg in SWEEP_CONFIGS:
            try:
                check(triton_path(cfg), str(cfg))
            except SystemExit:
                raise
            except Exception as err:  # noqa: BLE001 - tiles too large for this GPU: skip the config
                print(f"   {cfg}: {type(err).__name__}")
                continue
            best = min(best, (do_bench_cudagraph(lambda: triton_path(cfg)) * 1e3, cfg))
        one_txt = f"{one_us:11.1f}" if one_us else f"{'-':>11}"
        print(f"{tokens:6d} {heads:5d} {groups:6d} {n:4d} {width:5d} {cudnn_us:9.1f} {one_txt} {best[0]:8.1f}  "
              f"{best[1]}", flush=True)
        current = one_us if one_us is not None else cudnn_us
        if best[0] <= 0.97 * current:
            entries.append(f"    ({n}, {width}): {best[1]},  # {best[0]:.1f} vs {'one tile' if one_us else 'cuDNN'} "
                           f"{current:.1f} us (cuDNN {cudnn_us:.1f})")
    print("BACKWARD_TILES entries (beat the current path by >= 3 %):")
    print("\n".join(entries) or "    (none)")


# SReT-S's schedule: (stage tokens, heads, groups, applications per step), sliced and unsliced
S_SLICED = [(784, 3, 8, 2), (784, 3, 2, 2), (196, 6, 4, 5), (196, 6, 1, 5), (49, 12, 1, 6)]
S_UNSLICED = [(784, 3, 1, 4), (196, 6, 1, 10), (49, 12, 1, 6)]


def head_widths(widths=(48, 64), head_dim: int = 42) -> None:
    """SReT-S's 42-wide heads carried at each of ``widths``: per shape, the attention core as the fused model runs
    it (inference: the Triton kernels where they take the shape, else sdpa with its layout copies; training: the kept
    core, Triton or the sdpa kernel ``fused._attention_backend`` picks, forward + backward), plus the token GEMMs
    whose width grows with the heads' (inference: qkv and proj; training: those and the four backward GEMMs), and
    each model's total per step. A wider head costs GEMM bytes and wasted FLOPs; it may buy faster kernels."""
    from sret.models import fused
    from sret.models import group_attention as GA
    from sret.models.attention import attend_groups, split_qkv

    print(torch.cuda.get_device_name(), torch.__version__)
    print(f"{'tokens':>6} {'heads':>5} {'groups':>6} {'n':>4} {'width':>5} {'core inf':>9} {'core train':>10} "
          f"{'gemm inf':>9} {'gemm train':>10}  (us a call; core paths)")
    totals: dict[tuple[str, int], list[float]] = {}
    for model, schedule in (("sret_s", S_SLICED), ("sret_s_wo_slice", S_UNSLICED)):
        for tokens, heads, groups, apps in schedule:
            n, C = tokens // groups, heads * head_dim
            cp = C + (-C % 8)
            for width in widths:
                gen = torch.Generator(device="cuda").manual_seed(0)
                qkv = torch.randn(BATCH, tokens, 3 * heads * width, device="cuda", dtype=torch.bfloat16, generator=gen)
                do = torch.randn(BATCH, tokens, heads * width, device="cuda", dtype=torch.bfloat16, generator=gen)
                scale = head_dim**-0.5
                inf_path = "triton" if GA.group_attention(qkv, groups, heads, scale) is not None else "sdpa"

                def infer():
                    out = GA.group_attention(qkv, groups, heads, scale)
                    return out if out is not None else attend_groups(qkv, groups, heads, width, scale)

                train_path = "triton" if GA.backward_applies(qkv, groups, heads) else None

                def train():
                    if train_path == "triton":
                        o, lse = GA.group_attention(qkv, groups, heads, scale, keep_lse=True)
                        return GA.group_attention_backward(qkv, do, groups, heads, scale, o=o, lse=lse)
                    q, k, v = split_qkv(qkv, groups, heads)
                    backend = fused._attention_backend(q, k, v, scale)
                    o4, state = fused._attention_forward(q, k, v, scale, backend)
                    do4 = do.view(BATCH, groups, n, heads, width).permute(0, 1, 3, 2, 4).reshape(q.shape)
                    grads = fused._attention_backward(do4, q, k, v, o4, state, scale, backend)
                    return torch.stack([fused._merge_heads(d, BATCH) for d in grads], dim=2)

                if train_path is None:
                    q, k, v = split_qkv(qkv, groups, heads)
                    train_path = fused._attention_backend(q, k, v, scale)
                M = BATCH * tokens
                xn = torch.randn(M, cp, device="cuda", dtype=torch.bfloat16, generator=gen)
                wqkv = torch.randn(3 * heads * width, cp, device="cuda", dtype=torch.bfloat16, generator=gen)
                bqkv = torch.randn(3 * heads * width, device="cuda", dtype=torch.bfloat16, generator=gen)
                wp = torch.randn(cp, heads * width, device="cuda", dtype=torch.bfloat16, generator=gen)
                bp = torch.randn(cp, device="cuda", dtype=torch.bfloat16, generator=gen)
                o2, g2 = do.view(M, -1), xn
                dqkv = qkv.view(M, -1)

                def gemm_inf():
                    torch.addmm(bqkv, xn, wqkv.t())
                    torch.addmm(bp, o2, wp.t())

                def gemm_train():
                    gemm_inf()
                    torch.mm(g2, wp)  # d o
                    torch.mm(g2.t(), o2)  # d Wp
                    torch.mm(dqkv, wqkv)  # d LN(x)
                    torch.mm(dqkv.t(), xn)  # d Wqkv

                row = [do_bench_cudagraph(f) * 1e3 for f in (infer, train, gemm_inf, gemm_train)]
                print(f"{tokens:6d} {heads:5d} {groups:6d} {n:4d} {width:5d} {row[0]:9.1f} {row[1]:10.1f} "
                      f"{row[2]:9.1f} {row[3]:10.1f}  ({inf_path}, {train_path})", flush=True)
                acc = totals.setdefault((model, width), [0.0, 0.0])
                acc[0] += apps * (row[0] + row[2]) / 1e3
                acc[1] += apps * (row[1] + row[3]) / 1e3
    print("per step, attention core + its GEMMs, ms (inference, training):")
    for (model, width), (inf_ms, train_ms) in totals.items():
        print(f"  {model:16s} width {width}: {inf_ms:6.2f} {train_ms:7.2f}")


def backends(width: int = 48, head_dim: int = 42) -> None:
    """SReT-S's shapes that run an sdpa kernel, on each of sdpa's fused kernels: inference as ``attend_groups`` runs
    it (layout views and the copy back to tokens) under ``sdpa_kernel`` of cuDNN, flash and memory-efficient
    attention; training as the kept core of ``fused.py`` with the cuDNN and the flash ops (forward with log-sum-exp,
    backward, gradients stacked into qkv's layout), and the memory-efficient kernel through autograd. Microseconds a
    call; "-" where a kernel refuses the shape."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sret.models import fused
    from sret.models.attention import attend_groups, split_qkv

    print(torch.cuda.get_device_name(), torch.__version__)
    kinds = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION}
    print(f"{'tokens':>6} {'heads':>5} {'groups':>6} {'n':>4} " + " ".join(f"{'inf ' + k:>13}" for k in kinds)
          + " " + " ".join(f"{'train ' + k:>15}" for k in kinds))
    for tokens, heads, groups, _ in [(784, 3, 8, 2), (784, 3, 2, 2), (196, 6, 1, 5), (784, 3, 1, 4)]:
        n = tokens // groups
        gen = torch.Generator(device="cuda").manual_seed(0)
        qkv = torch.randn(BATCH, tokens, 3 * heads * width, device="cuda", dtype=torch.bfloat16, generator=gen)
        do = torch.randn(BATCH, tokens, heads * width, device="cuda", dtype=torch.bfloat16, generator=gen)
        scale = head_dim**-0.5
        ref = attend_groups(qkv.float(), groups, heads, width, scale)
        row = []
        for kind in kinds.values():
            def infer(kind=kind):
                with sdpa_kernel([kind]):
                    return attend_groups(qkv, groups, heads, width, scale)
            try:
                err = ((infer().float() - ref).norm() / ref.norm()).item()
                if err > 1e-2:
                    raise SystemExit(f"{kind} inference for n={n}: relative error {err:.2e}")
                row.append(f"{do_bench_cudagraph(infer) * 1e3:13.1f}")
            except RuntimeError:
                row.append(f"{'-':>13}")
        for name in kinds:
            if name == "efficient":
                qkv_g = qkv.detach().requires_grad_(True)

                def train():
                    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
                        out = attend_groups(qkv_g, groups, heads, width, scale)
                    return torch.autograd.grad(out, qkv_g, do)[0]
            else:
                def train(name=name):
                    q, k, v = split_qkv(qkv, groups, heads)
                    o4, state = fused._attention_forward(q, k, v, scale, name)
                    do4 = do.view(BATCH, groups, n, heads, width).permute(0, 1, 3, 2, 4).reshape(q.shape)
                    grads = fused._attention_backward(do4, q, k, v, o4, state, scale, name)
                    return torch.stack([fused._merge_heads(d, BATCH) for d in grads], dim=2)
            try:
                train()
                row.append(f"{do_bench_cudagraph(train) * 1e3:15.1f}")
            except RuntimeError:
                row.append(f"{'-':>15}")
        print(f"{tokens:6d} {heads:5d} {groups:6d} {n:4d} " + " ".join(row), flush=True)


def triton_next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", action="store_true", help="time the Triton group attention's tile configs")
    parser.add_argument("--sweep-backward", action="store_true", help="the same for forward + backward")
    parser.add_argument("--sret-s", action="store_true", help="with --sweep-backward: SReT-S's 48-wide shapes")
    parser.add_argument("--backends", action="store_true",
                        help="SReT-S's sdpa shapes on cuDNN, flash and memory-efficient attention")
    parser.add_argument("--head-widths", action="store_true",
                        help="SReT-S's heads carried 48 and 64 wide: attention core and token GEMMs per shape")
    args = parser.parse_args()
    if args.head_widths:
        head_widths()
        return
    if args.backends:
        backends()
        return
    if args.sweep:
        sweep()
        return
    if args.sweep_backward:
        sweep_backward(BACKWARD_SHAPES_S if args.sret_s else BACKWARD_SHAPES)
        return
    print(torch.cuda.get_device_name(), torch.__version__)
    print(f"{'tokens':>6} {'heads':>5} {'groups':>6} {'n':>4} {'fwd us':>8} {'fwd+bwd us':>10} {'fwd TFLOP/s':>11}")
    totals = {}
    for label, schedule in (("sret_t", SLICED), ("sret_t_wo_slice", UNSLICED)):
        f_total = fb_total = 0.0
        for tokens, heads, groups, calls in schedule:
            f_us, fb_us, tflops = time_shape(tokens, heads, groups)
            f_total += calls * f_us
            fb_total += calls * fb_us
            print(f"{tokens:6d} {heads:5d} {groups:6d} {tokens // groups:4d} {f_us:8.1f} {fb_us:10.1f} {tflops:11.1f}"
                  f"   x{calls} ({label})")
        totals[label] = (f_total, fb_total)
        print(f"== {label}: attention per step {f_total / 1e3:.3f} ms forward, {fb_total / 1e3:.3f} ms fwd+bwd")
    (sf, sb), (uf, ub) = totals["sret_t"], totals["sret_t_wo_slice"]
    flop_ratio = _flops(SLICED) / _flops(UNSLICED)
    print(f"== sliced / unsliced attention time: forward {sf / uf:.2f}, fwd+bwd {sb / ub:.2f} "
          f"(attention FLOP ratio {flop_ratio:.2f})")


def _flops(schedule) -> int:
    """Useful attention FLOPs of one forward per image: 4 n^2 D per head and group, n = tokens / groups."""
    return sum(4 * (t // g) ** 2 * g * h * D * c for t, h, g, c in schedule)


if __name__ == "__main__":
    main()
