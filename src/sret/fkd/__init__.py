"""Fast Knowledge Distillation (FKD): precomputed region soft labels, replayed in training without a teacher.

Generate once (``sret fkd-label``, see :mod:`sret.fkd.command`), then train on the stored crops. Plugging FKD into a
training loop takes the loader, the loss and (optionally) the mixup helper::

    from sret.fkd import FKDSoftTargetCrossEntropy, build_fkd_train_loader, fkd_passes, mix_fkd_batch

    # base_ds: training images as (PIL image, target), no transform, same order as at generation (checked).
    fkd = build_fkd_train_loader(base_ds, args.fkd_labels, batch_size=args.batch_size,  # crops per step per rank
                                 num_crops=args.num_crops, img_size=args.img_size, mean=mean, std=std,
                                 in_chans=args.in_chans, seed=args.seed, workers=args.workers)
    criterion = FKDSoftTargetCrossEntropy(args.soft_label)  # 'marginal' | 'renorm'
    passes = fkd_passes(args.epochs, args.num_crops)  # one pass with 4 crops per image counts as 4 epochs
    for p in range(start_pass, passes):  # the LR schedule spans passes * len(fkd.loader) steps
        fkd.set_epoch(p)  # sampler order and crop choice of this pass (reproducible from seed, pass, index)
        for x, topk_idx, topk_prob in fkd.loader:  # x: [images_per_step * num_crops, C, H, W]
            x = x.to(device, non_blocking=True)
            if mixup_fn is not None:  # timm Mixup; the soft labels get the same lambda and pairing
                x, target = mix_fkd_batch(mixup_fn, x, topk_idx, topk_prob, fkd.num_classes, args.soft_label)
            else:
                target = (topk_idx, topk_prob)  # expanded on the logits' device inside the loss
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            loss = criterion(logits, target)

The model must have ``fkd.num_classes`` outputs (the teacher's classifier size).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .crops import cut_crop, sample_crops
from .loss import SOFT_LABEL_MODES, FKDSoftTargetCrossEntropy, expand_soft_labels, mix_fkd_batch
from .replay import FKDReplayDataset, fkd_collate, fkd_passes
from .storage import FORMAT_VERSION, LabelMeta, LabelStore

__all__ = [
    "FORMAT_VERSION", "LabelMeta", "LabelStore", "FKDReplayDataset", "fkd_collate", "fkd_passes",
    "FKDSoftTargetCrossEntropy", "expand_soft_labels", "mix_fkd_batch", "SOFT_LABEL_MODES", "FKDLoader",
    "build_fkd_train_loader", "sample_crops", "cut_crop",
]


@dataclass
class FKDLoader:
    """The pieces of an FKD training input pipeline; ``set_epoch`` must be called before every pass."""

    loader: DataLoader
    dataset: FKDReplayDataset
    sampler: Sampler

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)


def build_fkd_train_loader(base_dataset: Dataset, labels: str | os.PathLike | LabelStore, batch_size: int,
                           num_crops: int = 4, img_size: int | Sequence[int] = 224,
                           mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                           in_chans: int = 3, seed: int = 0, workers: int = 4, drop_last: bool = True,
                           post_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                           verify: str = "full", pin_memory: bool | None = None,
                           rank: int | None = None, world_size: int | None = None,
                           sampler: Sampler | None = None) -> FKDLoader:
    """Replay dataset + sharded sampler + loader yielding ``(crops, topk_idx, topk_prob)`` batches.

    Args:
        base_dataset: training images as ``(PIL image, target)`` without transform, in generation order.
        labels: label directory from ``sret fkd-label`` (or an open :class:`LabelStore`).
        batch_size: crops per optimiser step on this rank; each step loads ``batch_size // num_crops`` images.
        num_crops: stored crops replayed per image and pass.
        img_size, mean, std, in_chans: the student's input.
        seed: drives both the sample order (per pass) and the crop choice.
        workers: DataLoader workers.
        drop_last: drop the last incomplete batch (keeps batches even for mixup).
        post_transform: optional label-preserving tensor transform per crop.
        verify: label shard verification, ``"full"`` (sha256), ``"size"`` or ``"none"``.
        pin_memory: default: when CUDA is available.
        rank, world_size: default: from ``torch.distributed`` when initialised, else single process.
        sampler: your own sampler over sample indices (e.g. ``sret.data.ResumableSampler`` with
            ``batch_size // num_crops`` images per batch, for mid-pass resume); default: a shuffling
            ``DistributedSampler`` seeded with ``seed``.
    """
    if batch_size % num_crops:
        raise ValueError(f"batch size {batch_size} must be a multiple of --num-crops {num_crops}")
    dataset = FKDReplayDataset(base_dataset, labels, num_crops=num_crops, img_size=img_size, mean=mean, std=std,
                               in_chans=in_chans, seed=seed, post_transform=post_transform, verify=verify)
    if world_size is None or rank is None:
        dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if dist_on else 0
        world_size = torch.distributed.get_world_size() if dist_on else 1
    if sampler is None:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                     drop_last=drop_last)
    loader = DataLoader(dataset, batch_size=batch_size // num_crops, sampler=sampler, num_workers=workers,
                        collate_fn=fkd_collate, drop_last=drop_last,
                        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                        persistent_workers=workers > 0)
    return FKDLoader(loader=loader, dataset=dataset, sampler=sampler)
