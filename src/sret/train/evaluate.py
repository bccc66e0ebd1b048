"""Evaluation loop shared by ``sret train`` (after every epoch) and ``sret validate``."""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sret.data.folder import BadSample
from sret.train.distributed import all_reduce_sum


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op context for full precision."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> tuple[dict[str, float], list[BadSample]]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over the loader, summed over all DDP ranks.

    Returns:
        metrics: ``top1``, ``top5``, ``loss``, ``count`` (images evaluated, all ranks), ``seconds`` and ``img_per_s``
            (wall time of the whole loop, data loading included, as a user experiences it).
        bad: unreadable samples this rank skipped.
    """
    model.eval()
    correct1 = correct5 = loss_sum = count = 0.0
    bad: list[BadSample] = []
    start = time.perf_counter()
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True, disable=None)
    for batch in batches:
        bad.extend(batch.bad)
        if len(batch) == 0:
            continue
        images = batch.images.to(device, non_blocking=True)
        targets = batch.targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        k = min(5, logits.shape[-1])
        topk = logits.topk(k, dim=-1).indices
        hits = topk.eq(targets[:, None])
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=-1).sum().item()
        count += len(targets)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    totals = all_reduce_sum([correct1, correct5, loss_sum, count, seconds], device)
    correct1, correct5, loss_sum, count, seconds = totals
    ranks = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    seconds /= ranks  # ranks run in parallel: report the mean wall time, not the sum
    n = max(count, 1.0)
    metrics = {
        "top1": 100.0 * correct1 / n,
        "top5": 100.0 * correct5 / n,
        "loss": loss_sum / n,
        "count": int(count),
        "seconds": seconds,
        "img_per_s": count / seconds if seconds > 0 else 0.0,
    }
    return metrics, bad
