"""Images per second that `sret train`'s training DataLoader delivers on its own (no model, no GPU).

Why: a training run cannot go faster than its loader. On 2 H200s, SReT-T at 224 px ran 2,448 img/s per single GPU
with `--cuda-graph`. The GPU step alone runs about 5,900 img/s (docs/benchmarks.md). The question is whether the
CPU-side transforms set that pace. This builds the loader exactly as the trainer does (same source, timm transform,
sampler, collate, worker count) and times `--batches` batches after `--warmup` batches. It also times the per-image
transform in this process, one stage at a time, so the figures can be compared with a per-core cost.

    PYTHONPATH=src python benchmarks/bench_loader.py --data fashion-mnist --img-size 224 --batch-size 512 --workers 7
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="sample")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[0], help="worker counts to time, one after another")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--aa", default="", help="RandAugment policy ('' = off, as in the multi-GPU runs)")
    p.add_argument("--reprob", type=float, default=0.0)
    p.add_argument("--scale", type=float, nargs=2, default=[0.5, 1.0])
    p.add_argument("--color-jitter", type=float, default=0.3)
    p.add_argument("--results-file", default=None)
    args = p.parse_args()

    from sret.data import ResumableSampler, TransformedView, build_transform, make_loader, open_source
    from sret.data.transforms import AugmentConfig

    torch.set_num_threads(1)  # as in a DataLoader worker
    source = open_source(args.data)
    aug = AugmentConfig(auto_augment=args.aa or None, re_prob=args.reprob, scale=tuple(args.scale),
                        color_jitter=args.color_jitter)
    tf = build_transform(source, args.img_size, args.in_chans, True, aug)
    base = source.split("train")
    rows: dict = {"data": args.data, "img_size": args.img_size, "batch_size": args.batch_size,
                  "color_jitter": args.color_jitter,
                  "cpu_count": torch.multiprocessing.cpu_count(), "stages_ms": {}, "loader": []}

    # per-image cost of each transform stage, in this process (one core)
    img = base[0][0]
    stages = list(tf.transforms[0].transforms) + list(tf.transforms[1:]) if hasattr(tf.transforms[0], "transforms") \
        else list(tf.transforms)
    total = 0.0
    for stage in stages:
        for _ in range(5):
            out = stage(img)
        n, start = 200, time.perf_counter()
        for _ in range(n):
            out = stage(img)
        ms = (time.perf_counter() - start) / n * 1e3
        rows["stages_ms"][type(stage).__name__] = round(ms, 4)
        total += ms
        img = out
    rows["transform_ms_per_image"] = round(total, 4)
    parts = ", ".join(f"{k} {v:.3f}" for k, v in rows["stages_ms"].items())
    print(f"transform, one core: {total:.3f} ms/image ({parts})")

    view = TransformedView(base, tf)
    for workers in args.workers:
        sampler = ResumableSampler(view, args.batch_size)
        loader = make_loader(view, sampler, args.batch_size, workers, drop_last=True)

        def batches():  # epoch after epoch, as the trainer does (a small set holds only a few batches)
            epoch = 0
            while True:
                sampler.set_epoch(epoch)
                yield from loader
                epoch += 1

        it = batches()
        for _ in range(args.warmup):
            next(it)
        start = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        seconds = time.perf_counter() - start
        img_s = args.batches * args.batch_size / seconds
        rows["loader"].append({"workers": workers, "img_per_s": round(img_s, 1)})
        print(f"loader, {workers} worker(s): {img_s:,.0f} img/s")
        del it, loader
    if args.results_file:
        with open(args.results_file, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
