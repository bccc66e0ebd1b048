"""Training-time replay of FKD labels: a few stored crops per image, cut at the student's size, with their soft labels.

Each item decodes its image once and cuts ``num_crops`` of the stored boxes (chosen reproducibly from
``(seed, epoch, index)``), so the teacher is never run during training. A batch of ``B`` images becomes
``B * num_crops`` training crops after :func:`fkd_collate`.

Epoch accounting (as in the FKD paper): one pass over the data with 4 crops per image counts as 4 epochs, because
it makes 4x the optimiser steps of a plain pass at the same crops-per-batch. To match an ``E``-epoch plain schedule,
run ``fkd_passes(E, num_crops)`` passes and call ``set_epoch(pass_index)`` before each.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sret.errors import SReTError

from .crops import cut_crop, fit_stats, normalize_uint8, to_mode
from .dataset import dataset_file_list, is_image_item
from .storage import LabelStore, check_file_list

__all__ = ["FKDReplayDataset", "fkd_collate", "fkd_passes"]


def fkd_passes(epochs: int, num_crops: int) -> int:
    """Passes over the data that make an ``epochs``-epoch schedule when each pass replays ``num_crops`` crops."""
    return max(1, math.ceil(epochs / num_crops))


class FKDReplayDataset(Dataset):
    """Wrap a dataset of PIL images with stored FKD crops and soft labels.

    Args:
        base: dataset whose ``base[i][0]`` is the PIL image of sample ``i`` (no transform), in the same order the
            labels were generated for (checked against the stored file list).
        labels: a label directory or an open :class:`LabelStore`.
        num_crops: stored crops replayed per image and pass (FKD: 4).
        img_size: student resolution, int or (H, W).
        mean: student normalisation mean (adapted to ``in_chans``).
        std: student normalisation std.
        in_chans: 1 (grey) or 3 (RGB; grey images repeated).
        seed: crop choice is a function of ``(seed, epoch, index)`` only, so it is reproducible and resumes exactly.
        interpolation: resize filter; ``None`` uses the one the labels were generated with.
        post_transform: optional function applied to each normalised crop tensor (e.g. random erasing); keep it
            label-preserving, since the soft label belongs to the crop as stored.
        verify: shard verification when ``labels`` is a path (see :class:`LabelStore`).
        check_files: refuse labels whose file list does not match ``base`` (disable only for synthetic data).
    """

    def __init__(self, base: Dataset, labels: str | os.PathLike | LabelStore, num_crops: int = 4,
                 img_size: int | Sequence[int] = 224, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225), in_chans: int = 3, seed: int = 0,
                 interpolation: str | None = None, post_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 verify: str = "full", check_files: bool = True) -> None:
        self.base = base
        self.store = labels if isinstance(labels, LabelStore) else LabelStore(labels, verify=verify)
        meta = self.store.meta
        if len(base) != meta.num_samples or check_files:
            check_file_list(meta.files, dataset_file_list(base))
        if not 1 <= num_crops <= meta.num_crops:
            raise SReTError(f"--num-crops {num_crops} must be between 1 and the {meta.num_crops} crops stored per "
                            "image")
        self.num_crops = num_crops
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        self.in_chans = in_chans
        self.mean, self.std = fit_stats(mean, in_chans), fit_stats(std, in_chans)
        self.seed = int(seed)
        self.interpolation = interpolation or meta.interpolation
        self.post_transform = post_transform
        # shared memory so persistent DataLoader workers see set_epoch() too (a plain int is copied into each worker)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    @property
    def num_classes(self) -> int:
        return self.store.meta.num_classes

    @property
    def top_k(self) -> int:
        return self.store.meta.top_k

    def set_epoch(self, epoch: int) -> None:
        """Select the crop draw of pass ``epoch``; call before each pass (workers, persistent or not, see it)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.store)

    def crop_choice(self, index: int) -> np.ndarray:
        """Which stored crops sample ``index`` replays in the current epoch (distinct, reproducible)."""
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return np.sort(rng.choice(self.store.meta.num_crops, size=self.num_crops, replace=False))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | Any:
        """``(crops [n, C, H, W] float32, topk_idx [n, k] int64, topk_prob [n, k] float32)``.

        An undecodable image (or one that was undecodable at generation, stored with all-zero labels) returns the
        base data set's placeholder (e.g. :class:`sret.data.BadSample`), which :func:`fkd_collate` drops.
        """
        records = self.store[index][self.crop_choice(index)]
        item = self.base[index]
        if not is_image_item(item) or not records["prob"].any():
            return item if not is_image_item(item) else _Unlabelled(index)
        image = to_mode(item[0], self.in_chans)
        crops = []
        for rec in records:
            x = normalize_uint8(cut_crop(image, rec["box"], bool(rec["flip"]), self.img_size, self.interpolation),
                                self.mean, self.std)
            crops.append(self.post_transform(x) if self.post_transform is not None else x)
        idx = torch.from_numpy(records["idx"].astype(np.int64))
        prob = torch.from_numpy(records["prob"].astype(np.float32))
        return torch.stack(crops), idx, prob


class _Unlabelled(NamedTuple):
    """A sample that had no readable image when its labels were generated."""

    index: int


def fkd_collate(batch: Sequence[Any]) -> tuple[torch.Tensor, ...]:
    """Flatten the crops of every image into the batch: ``B`` items of ``n`` crops -> ``B * n`` rows.

    Placeholders of unreadable images are dropped (the batch is then a few rows short, as in plain training).
    """
    batch = [b for b in batch if isinstance(b, tuple) and len(b) == 3 and isinstance(b[0], torch.Tensor)]
    if not batch:
        raise SReTError("a whole FKD batch consisted of unreadable images")
    crops, idx, prob = zip(*batch)
    return torch.cat(crops), torch.cat(idx), torch.cat(prob)

