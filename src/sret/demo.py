"""``sret demo`` (``make demo``): train a small SReT on the embedded Fashion-MNIST sample, validate, predict.

It runs the same commands a user would (``sret train`` / ``validate`` / ``predict``) with a short schedule sized
for a 2-core CPU (a few minutes; seconds on a GPU), so it doubles as an end-to-end check of an installation.
The recipe is lighter than the ImageNet one (no RandAugment / mixup): with 2,000 images and a handful of epochs,
heavy regularisation only slows learning down.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

DEMO_FLAGS = [
    "--model", "sret_t", "--data", "sample", "--img-size", "32", "--in-chans", "1",
    "--batch-size", "64", "--lr", "2e-3", "--warmup-epochs", "1", "--min-lr", "1e-5", "--drop-path", "0.1",
    "--aa", "", "--mixup", "0", "--cutmix", "0", "--reprob", "0", "--scale", "0.6", "1.0", "--smoothing", "0.1",
    "--workers", "0",
]  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="runs/demo", help="run folder (replaced if it exists)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--device", default="auto")


def _sub_args(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from sret.data import open_source
    from sret.train import command, predict, validate

    out = Path(args.output)
    if out.exists():
        shutil.rmtree(out)  # a demo always starts fresh; --resume is for real runs
    print(f"== sret demo: training sret_t on the embedded Fashion-MNIST sample for {args.epochs} epochs ==")
    train_argv = DEMO_FLAGS + ["--epochs", str(args.epochs), "--output", str(out), "--device", args.device]
    command.run(_sub_args(command, train_argv))

    print("\n== validate best.pth on the sample's 500 test images ==")
    validate.run(_sub_args(validate, ["--checkpoint", str(out / "best.pth"), "--data", "sample", "--workers", "0",
                                      "--device", args.device, "--json", str(out / "validate.json")]))

    examples = out / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    val = open_source("sample").split("val")
    names = open_source("sample").class_names
    paths = []
    for i in (0, 1, 2):  # first test images; the file name says the true label
        img, target = val[i * 50]
        path = examples / f"test{i * 50:03d}_{names[target].replace('/', '-').replace(' ', '_')}.png"
        img.convert("L").save(path)
        paths.append(str(path))
    print("\n== predict (true label in each file name) ==")
    predict.run(_sub_args(predict, ["--checkpoint", str(out / "best.pth"), "--device", args.device, *paths]))
    print(f"\nDone. Log: {out / 'log.csv'} | plot: {out / 'curves.png'} | checkpoint: {out / 'best.pth'} "
          f"(resumable: {out / 'last.pth'}) | metrics: {out / 'validate.json'} | TensorBoard: {out / 'tb'}")
    return 0
