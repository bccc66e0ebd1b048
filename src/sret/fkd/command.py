"""``sret fkd-label``: precompute FKD region soft labels with a teacher (single process or ``torchrun``).

Example::

    sret fkd-label --teacher sret_lt --data /data/imagenet --output labels/ --num-crops 500 --top-k 5
    torchrun --nproc_per_node 8 -m sret fkd-label --teacher ckpt.pth --teacher-model sret_s --data ... --output ...

Rerunning the same command on the same ``--output`` resumes: finished shards are kept, partial ones redone.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch

from sret.errors import SReTError

from .crops import DEFAULT_RATIO, DEFAULT_SCALE
from .dataset import dataset_file_list, dataset_num_classes, open_image_dataset
from .label import describe, generate_labels
from .storage import LabelMeta
from .teacher import build_teacher, teacher_data_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--teacher", required=True, help="timm/sret model name, or a checkpoint file (with --teacher-model)")
    p.add_argument("--teacher-model", default=None, help="architecture of a checkpoint teacher")
    p.add_argument("--data", required=True, help="ImageFolder root (DATA/train/<class>/... or DATA/<class>/...)")
    p.add_argument("--split", default="train", help="sub-folder of DATA to label when it exists (default: train)")
    p.add_argument("--output", required=True, help="label directory (created; an interrupted run there resumes)")
    p.add_argument("--num-crops", type=int, default=500, help="random-resized crops stored per image (FKD: 500)")
    p.add_argument("--top-k", type=int, default=5, help="teacher probabilities kept per crop")
    p.add_argument("--teacher-img-size", type=int, default=None, help="teacher resolution (default: pretrained_cfg)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the stored labels")
    p.add_argument("--batch-size", type=int, default=500, help="crops per teacher forward pass")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard file (the unit of resume)")
    p.add_argument("--seed", type=int, default=0, help="crops of sample i are drawn from seed + i")
    p.add_argument("--num-classes", type=int, default=None, help="teacher classifier size (default: its own)")
    p.add_argument("--in-chans", type=int, default=3, choices=(1, 3), help="1 for grey teachers, 3 otherwise")
    p.add_argument("--scale", type=float, nargs=2, default=list(DEFAULT_SCALE), help="crop area range")
    p.add_argument("--ratio", type=float, nargs=2, default=list(DEFAULT_RATIO), help="crop aspect range")
    p.add_argument("--flip-p", type=float, default=0.5, help="horizontal flip probability")
    p.add_argument("--interpolation", default=None, choices=("bilinear", "bicubic", "nearest"),
                   help="resize filter (default: the teacher's pretrained_cfg)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--device", default=None, help="teacher device (default: cuda:LOCAL_RANK if available, else cpu)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the teacher (GPU); stored labels stay fp16")
    p.add_argument("--no-pretrained", action="store_true", help="random weights for a named teacher (testing only)")


def _num_outputs(model: torch.nn.Module, in_chans: int, size: tuple[int, int]) -> int:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    with torch.inference_mode():
        return int(model(torch.zeros(1, in_chans, *size)).shape[-1])


def _check(args: argparse.Namespace) -> None:
    for flag in ("num_crops", "top_k", "batch_size", "shard_size"):
        if getattr(args, flag) < 1:
            raise SReTError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.temperature <= 0:
        raise SReTError(f"--temperature must be > 0, got {args.temperature}")
    lo, hi = args.scale
    if not 0 < lo <= hi <= 1:
        raise SReTError(f"--scale must satisfy 0 < min <= max <= 1, got {lo} {hi}")


def run(args: argparse.Namespace) -> int:
    _check(args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device:
        device = torch.device(args.device)
    else:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    started_dist = False
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        started_dist = True
    try:
        return _run(args, device)
    finally:
        if started_dist:
            torch.distributed.destroy_process_group()


def _run(args: argparse.Namespace, device: torch.device) -> int:
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    base = open_image_dataset(args.data, split=args.split)
    if len(base) == 0:
        raise SReTError(f"no images in {args.data!r}")
    teacher, name, ckpt = build_teacher(args.teacher, args.teacher_model, num_classes=args.num_classes,
                                        in_chans=args.in_chans, img_size=args.teacher_img_size,
                                        pretrained=not args.no_pretrained)
    tcfg = teacher_data_config(teacher, in_chans=args.in_chans, img_size=args.teacher_img_size)
    num_classes = _num_outputs(teacher, tcfg.in_chans, tcfg.img_size)
    data_classes = dataset_num_classes(base)
    if rank == 0 and data_classes is not None and data_classes != num_classes:
        print(f"fkd-label: warning: teacher predicts {num_classes} classes, the dataset has {data_classes}; "
              f"the student must then be built with {num_classes} classes")
    meta = LabelMeta(
        teacher=name, teacher_checkpoint=ckpt, temperature=args.temperature, num_crops=args.num_crops,
        top_k=args.top_k, num_classes=num_classes, num_samples=len(base), shard_size=args.shard_size, seed=args.seed,
        teacher_img_size=tcfg.img_size, in_chans=tcfg.in_chans, mean=tcfg.mean, std=tcfg.std,
        interpolation=args.interpolation or tcfg.interpolation, scale=tuple(args.scale), ratio=tuple(args.ratio),
        flip_p=args.flip_p, files=dataset_file_list(base))
    if rank == 0:
        print(f"fkd-label: teacher {name} ({num_classes} classes) at {tcfg.img_size[0]}x{tcfg.img_size[1]}, "
              f"{tcfg.interpolation}, mean {tcfg.mean} std {tcfg.std}, T={args.temperature}, on {device}")
    result = generate_labels(teacher, base, args.output, meta, batch_size=args.batch_size, workers=args.workers,
                             device=device, amp_dtype=torch.bfloat16 if args.amp else None)
    if rank == 0:
        stats: dict[str, Any] = describe(result.meta)
        ips = stats.get("images_per_s")
        print(f"fkd-label: wrote {args.output}: {stats['images']} images x {stats['crops_per_image']} crops, "
              f"top-{stats['top_k']}; {stats['bytes_per_image']:.0f} bytes/image "
              f"({stats['bytes_total'] / 2**20:.1f} MiB); "
              + (f"{ips:.2f} images/s this run ({result.generated_samples} images in {result.seconds:.1f} s)"
                 if result.generated_samples else "nothing left to do (all shards finished)"))
    return 0
