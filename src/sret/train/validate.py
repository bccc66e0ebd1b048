"""``sret validate``: top-1 / top-5 / loss / img/s of a checkpoint on a data set, printed and written as JSON.

Accepts sret training checkpoints (``last.pth`` / ``best.pth``: model, size and classes come from them) and the
published SReT checkpoints (give ``--model``). The class count of the checkpoint must match the data's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sret.errors import SReTError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name (optional for sret training checkpoints)")
    parser.add_argument("--checkpoint", required=True, help=".pth / .safetensors weights")
    parser.add_argument("--data", required=True, help="'sample', 'fashion-mnist', or a folder (val/ or class folders)")
    parser.add_argument("--split", default="val", help="split to evaluate: val (default) or train")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--in-chans", type=int, default=None)
    parser.add_argument("--crop-pct", type=float, default=None, help="eval centre-crop fraction")
    parser.add_argument("--model-kwargs", default=None, metavar="JSON",
                        help='model arguments over the run\'s, e.g. \'{"eval_permutation": "random"}\'')
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"])
    parser.add_argument("--json", dest="json_path", help="where to write the metrics (default: "
                        "validate-<checkpoint name>.json next to a training checkpoint, else in the current folder)")


def run(args: argparse.Namespace) -> int:
    from sret.data import DataSource, ShardSampler, TransformedView, build_transform, make_loader, open_source
    from sret.train.distributed import DistInfo
    from sret.train.evaluate import evaluate
    from sret.train.factory import check_model_name
    from sret.train.inference import build_eval_model, eval_spec, model_input_size
    from sret.train.trainer import resolve_amp, resolve_device

    checkpoint = Path(args.checkpoint).expanduser()
    if not checkpoint.is_file():
        raise SReTError(f"checkpoint not found: {checkpoint}")
    if args.batch_size < 1:
        raise SReTError("--batch-size must be >= 1")
    if args.model:
        check_model_name(args.model)  # before reading the file: the cheaper, clearer error first
    from sret.train.config import parse_model_kwargs

    spec = eval_spec(args.model, checkpoint, args.img_size, args.in_chans, parse_model_kwargs(args.model_kwargs))
    check_model_name(spec.model)
    source = open_source(args.data)
    data = source.split(args.split)
    if spec.class_names and spec.class_names != source.class_names:
        shown = ", ".join(spec.class_names[:3])
        raise SReTError(f"{checkpoint} was trained on {len(spec.class_names)} classes ({shown}, ...) that differ from "
                        f"the {source.num_classes} classes of {args.data}")
    device = resolve_device(args.device, DistInfo())
    model = build_eval_model(spec, checkpoint, source.num_classes).to(device)
    size = model_input_size(model, spec.img_size or source.img_size)
    feed = DataSource(source.name, source.class_names, source.in_chans, spec.mean or source.mean,
                      spec.std or source.std, size, source.crop_pct)
    crop = args.crop_pct if args.crop_pct is not None else spec.crop_pct
    if crop is None and source.crop_pct is None:
        crop = (getattr(model, "pretrained_cfg", None) or {}).get("crop_pct")
    view = TransformedView(data, build_transform(feed, size, spec.in_chans, False, crop_pct=crop))
    loader = make_loader(view, ShardSampler(view), args.batch_size, args.workers, drop_last=False)
    metrics, bad = evaluate(model, loader, device, resolve_amp(args.amp, device), progress=True)
    result = {"model": spec.model, "checkpoint": str(checkpoint), "data": args.data, "split": args.split,
              "img_size": size, "device": str(device), **metrics, "skipped_files": len({b.path for b in bad})}
    json_path = Path(args.json_path) if args.json_path else _default_json(checkpoint)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{spec.model} on {args.data}/{args.split} ({metrics['count']} images, {size} px): "
          f"top-1 {metrics['top1']:.2f} | top-5 {metrics['top5']:.2f} | loss {metrics['loss']:.4f} | "
          f"{metrics['img_per_s']:.0f} img/s")
    if bad:
        print(f"skipped {result['skipped_files']} unreadable image file(s), e.g. {bad[0].path}")
    print(f"metrics written to {json_path}")
    return 0


def _default_json(checkpoint: Path) -> Path:
    if (checkpoint.parent / "config.yaml").is_file():  # an sret run folder: keep the numbers with the run
        return checkpoint.parent / f"validate-{checkpoint.stem}.json"
    return Path(f"validate-{checkpoint.stem}.json")
