"""Data loaders for one process of a (possibly distributed) run, resumable in the middle of an epoch.

The train order of every epoch is a pure function of (seed, epoch) via ``DistributedSampler``, so a run resumed
from a mid-epoch checkpoint can skip exactly the batches it already took. Evaluation shards the set without the
padding ``DistributedSampler`` adds, so metrics summed over ranks count every image exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from sret.data.folder import collate_skipping


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (also for a single process) that can start an epoch at a given batch.

    Args:
        dataset: the train set.
        batch_size: per-process batch size, to turn a batch offset into a sample offset.
        num_replicas, rank: the process group shape (1, 0 for a single process).
        seed: shuffling seed; the order of epoch ``e`` depends on ``seed`` and ``e`` only.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def set_start_batch(self, start_batch: int) -> None:
        """Skip the first ``start_batch`` batches of the current epoch (call after ``set_epoch``)."""
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start_batch * self.batch_size :])

    def __len__(self) -> int:
        return self.num_samples - self.start_batch * self.batch_size


class ShardSampler(Sampler[int]):
    """Every ``num_replicas``-th index starting at ``rank``: disjoint shards covering the set once, no padding."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = range(rank, len(dataset), num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(
    dataset: Dataset, sampler: Sampler, batch_size: int, workers: int, drop_last: bool, seed: int = 0
) -> DataLoader:
    """A DataLoader whose batches are :class:`sret.data.folder.Batch` (unreadable files dropped and reported).

    It gets its own generator: otherwise every new epoch iterator draws its worker seed from the global torch RNG,
    and a run resumed mid-epoch (which creates that iterator at another point) would drift from an uninterrupted one.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skipping,
        pin_memory=False,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
