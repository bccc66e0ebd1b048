"""``sret predict``: the top-5 labels of image files, with probabilities.

Class names come from the checkpoint (sret training checkpoints store them), else ImageNet's (via timm) for
1000-class models, else ``class <i>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from sret.errors import SReTError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--model", help="model name (optional for sret training checkpoints)")
    parser.add_argument("--checkpoint", required=True, help=".pth / .safetensors weights")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes of the checkpoint's head (default: from the checkpoint)")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--in-chans", type=int, default=None)
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--device", default="auto")


def class_names_for(num_classes: int, recorded: list[str] | None) -> list[str]:
    if recorded:
        return recorded
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [f"class {i}" for i in range(num_classes)]


def run(args: argparse.Namespace) -> int:
    from sret.data import DataSource, build_transform
    from sret.data.folder import DECODE_ERRORS
    from sret.data.sources import IMAGENET_MEAN, IMAGENET_STD
    from sret.train.checkpoint import classifier_out_features
    from sret.train.distributed import DistInfo
    from sret.train.factory import check_model_name
    from sret.train.inference import build_eval_model, eval_spec, model_input_size
    from sret.train.trainer import resolve_device

    checkpoint = Path(args.checkpoint).expanduser()
    if not checkpoint.is_file():
        raise SReTError(f"checkpoint not found: {checkpoint}")
    if args.model:
        check_model_name(args.model)  # before reading the file: the cheaper, clearer error first
    spec = eval_spec(args.model, checkpoint, args.img_size, args.in_chans)
    check_model_name(spec.model)
    num_classes = args.num_classes or (len(spec.class_names) if spec.class_names else None)
    if num_classes is None:
        import timm
        from sret.models.weights import read_state_dict

        probe = timm.create_model(spec.model, pretrained=False)
        num_classes = classifier_out_features(read_state_dict(checkpoint), probe) or 1000
    device = resolve_device(args.device, DistInfo())
    model = build_eval_model(spec, checkpoint, num_classes).to(device)
    names = class_names_for(num_classes, spec.class_names)
    size = model_input_size(model, spec.img_size)
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    feed = DataSource("predict", names, spec.in_chans, spec.mean or tuple(pcfg.get("mean", IMAGENET_MEAN)),
                      spec.std or tuple(pcfg.get("std", IMAGENET_STD)), size, spec.crop_pct)
    crop = spec.crop_pct if spec.crop_pct is not None else pcfg.get("crop_pct")
    transform = build_transform(feed, size, spec.in_chans, False, crop_pct=crop)
    k = min(args.topk, num_classes)
    failed: list[str] = []
    for path in args.images:
        try:
            with Image.open(path) as img:
                x = transform(img.convert("RGB"))
        except (*DECODE_ERRORS, FileNotFoundError) as err:
            failed.append(f"{path} ({type(err).__name__}: {err})")
            print(f"{path}: cannot read image ({err})", file=sys.stderr)
            continue
        with torch.no_grad():
            probs = model(x[None].to(device)).float().softmax(-1)[0]
        top = probs.topk(k)
        print(path)
        for p, i in zip(top.values.tolist(), top.indices.tolist()):
            print(f"  {p:7.2%}  {names[i]}")
    if failed:
        raise SReTError(f"{len(failed)} of {len(args.images)} image(s) could not be read: {'; '.join(failed)}")
    return 0
