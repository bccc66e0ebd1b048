"""FKD label generation: run the teacher once on many random crops per image and keep its top-k soft labels.

The work is split into fixed shards of consecutive samples. Under ``torchrun`` rank ``r`` of ``W`` produces shards
``r, r + W, ...``; every shard is written atomically with a checksum sidecar, so a killed run resumes by skipping the
shards whose checksum is valid and redoing the rest. Crops depend only on ``(seed, sample index)`` and teacher
batches only on the shard, so a resumed or re-sharded run produces the same boxes, and (on a deterministic device)
the same labels, as an uninterrupted one. Rank 0 writes ``metadata.json`` after a final barrier.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from sret.errors import SReTError

from .crops import cut_crop, normalize_uint8, sample_crops, to_mode
from .dataset import is_image_item
from .storage import (METADATA_FILE, LabelMeta, ShardInfo, atomic_write_bytes, expected_shard_bytes, sha256_file,
                      shard_name, shard_ranges, write_shard)

__all__ = ["CropDataset", "generate_labels", "GenerationResult", "finished_shard"]

PENDING_FILE = "generation.json"  # the settings of a run in progress; a resume must match them


class CropDataset(Dataset):
    """Sample ``index`` -> all of its crops at the teacher's resolution (uint8), with boxes and flip bits.

    Decoding and cutting happen in DataLoader workers; normalisation happens on the teacher's device.
    """

    def __init__(self, base: Dataset, indices: Sequence[int], meta: LabelMeta) -> None:
        self.base, self.indices, self.meta = base, list(indices), meta

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """``(index, crops uint8 [n, C, H, W], boxes [n, 4], flips [n], readable)``."""
        m, index = self.meta, self.indices[k]
        item = self.base[index]
        if not is_image_item(item):  # undecodable file: all-zero labels, which replay skips like training does
            crops = torch.zeros((m.num_crops, m.in_chans, *m.teacher_img_size), dtype=torch.uint8)
            zeros = torch.zeros(m.num_crops, 4, dtype=torch.int32)
            return index, crops, zeros, torch.zeros(m.num_crops, dtype=torch.uint8), False
        image = to_mode(item[0], m.in_chans)
        boxes, flips = sample_crops(image, m.num_crops, m.seed, index, m.scale, m.ratio, m.flip_p)
        crops = torch.stack([cut_crop(image, b, bool(f), m.teacher_img_size, m.interpolation)
                             for b, f in zip(boxes, flips)])
        return index, crops, torch.from_numpy(boxes), torch.from_numpy(flips), True


@dataclass
class GenerationResult:
    meta: LabelMeta
    generated_samples: int
    skipped_shards: int
    seconds: float


def finished_shard(directory: Path, index: int, start: int, stop: int, meta: LabelMeta) -> ShardInfo | None:
    """The shard's record if it is complete and its checksum matches its sidecar, else ``None`` (redo it)."""
    sidecar, path = directory / (Path(shard_name(index)).stem + ".json"), directory / shard_name(index)
    try:
        info = ShardInfo(**json.loads(sidecar.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if (info.start, info.stop) != (start, stop) or not path.is_file():
        return None
    if path.stat().st_size != expected_shard_bytes(stop - start, meta.num_crops, meta.dtype):
        return None
    return info if sha256_file(path) == info.sha256 else None


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _prepare_output(output: Path, meta: LabelMeta) -> None:
    """Rank 0: create the directory and record (or check) the settings, so a resume cannot mix two label sets."""
    output.mkdir(parents=True, exist_ok=True)
    key = meta.generation_key()
    for name in (METADATA_FILE, PENDING_FILE):
        path = output / name
        if not path.is_file():
            continue
        try:
            old = LabelMeta.from_dict(json.loads(path.read_text()), where=str(path)).generation_key()
        except (ValueError, OSError):
            raise SReTError(f"{str(path)!r} is unreadable; choose another --output or delete it") from None
        diff = [k for k in key if key[k] != old.get(k)]
        if diff:
            k = diff[0]
            shown = (f"{len(old.get(k) or [])} vs {len(key[k])} files" if k == "files"
                     else f"{old.get(k)!r} there vs {key[k]!r} now")
            raise SReTError(f"{str(output)!r} holds FKD labels generated with other settings ({k}: {shown}); "
                            "choose another --output or delete it")
    if not (output / PENDING_FILE).is_file():
        atomic_write_bytes(output / PENDING_FILE, json.dumps(key).encode())


@torch.inference_mode()
def _label_batch(teacher: torch.nn.Module, crops: torch.Tensor, meta: LabelMeta, device: torch.device,
                 amp_dtype: torch.dtype | None) -> tuple[np.ndarray, np.ndarray]:
    x = normalize_uint8(crops.to(device, non_blocking=True), meta.mean, meta.std)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = teacher(x)
    probs = torch.softmax(logits.float() / meta.temperature, dim=-1)
    top_p, top_i = probs.topk(meta.top_k, dim=-1)
    return top_i.cpu().numpy(), top_p.cpu().numpy()


def generate_labels(teacher: torch.nn.Module, base: Dataset, output: str | os.PathLike, meta: LabelMeta, *,
                    batch_size: int = 500, workers: int = 4, device: torch.device | str = "cpu",
                    amp_dtype: torch.dtype | None = None,
                    progress: Callable[[str], None] | None = print) -> GenerationResult:
    """Generate (or finish) the label set ``meta`` describes for ``base`` into ``output``.

    Args:
        teacher: the teacher model (moved to ``device`` here, put in eval mode).
        base: dataset returning ``(PIL image, target)``; ``meta.files`` must describe it.
        output: label directory; an interrupted run with the same settings resumes there.
        meta: settings of the label set (``shards`` and ``stats`` are filled in here).
        batch_size: crops per teacher forward pass.
        workers: DataLoader workers decoding and cutting crops.
        device: teacher device.
        amp_dtype: autocast dtype (e.g. ``torch.bfloat16`` on GPUs) or ``None`` for fp32.
        progress: where one-line progress messages go (``None`` for silence); only rank 0 talks.
    """
    output, device = Path(output), torch.device(device)
    rank, world = _dist()
    say = progress if (progress is not None and rank == 0) else (lambda _msg: None)
    if meta.top_k > meta.num_classes:
        raise SReTError(f"--top-k {meta.top_k} exceeds the teacher's {meta.num_classes} classes")
    if rank == 0:
        _prepare_output(output, meta)
    _barrier()
    teacher = teacher.to(device).eval()
    if device.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
    ranges = shard_ranges(meta.num_samples, meta.shard_size)
    mine = list(range(rank, len(ranges), world))
    todo = [k for k in mine if finished_shard(output, k, *ranges[k], meta) is None]
    skipped = len(mine) - len(todo)
    say(f"fkd-label: {meta.num_samples} images in {len(ranges)} shards of {meta.shard_size}; {world} rank(s); "
        f"{skipped} finished shard(s) of rank 0 skipped, {len(todo)} to do")
    images_per_batch = max(1, batch_size // meta.num_crops)
    t0, done, unreadable = time.perf_counter(), 0, 0
    for n_done, k in enumerate(todo):
        start, stop = ranges[k]
        records = np.zeros((stop - start, meta.num_crops), dtype=meta.dtype)
        loader = DataLoader(CropDataset(base, range(start, stop), meta), batch_size=images_per_batch,
                            num_workers=workers, pin_memory=device.type == "cuda",
                            persistent_workers=False, prefetch_factor=2 if workers > 0 else None)
        for indices, crops, boxes, flips, readable in loader:
            rows = indices.numpy() - start
            records["box"][rows] = boxes.numpy()
            records["flip"][rows] = flips.numpy()
            flat = crops.flatten(0, 1)
            idx_parts, prob_parts = [], []
            for c in range(0, flat.shape[0], batch_size):  # fixed batching within a shard: resume-stable numerics
                i_, p_ = _label_batch(teacher, flat[c:c + batch_size], meta, device, amp_dtype)
                idx_parts.append(i_)
                prob_parts.append(p_)
            shape = (len(rows), meta.num_crops, meta.top_k)
            records["idx"][rows] = np.concatenate(idx_parts).reshape(shape)
            records["prob"][rows] = np.concatenate(prob_parts).reshape(shape).astype(np.float16)
            bad = rows[~readable.numpy()]
            records["idx"][bad], records["prob"][bad] = 0, 0
            unreadable += len(bad)
            done += len(rows)
        write_shard(output, k, records, start)
        if unreadable:
            say(f"fkd-label: {unreadable} unreadable image(s) so far got no labels (training skips them)")
        elapsed = time.perf_counter() - t0
        say(f"fkd-label: shard {k} done ({n_done + 1}/{len(todo)} on rank 0), {done / max(elapsed, 1e-9):.1f} img/s")
    elapsed = time.perf_counter() - t0
    total_done = done
    if world > 1:
        t = torch.tensor([done], dtype=torch.int64, device=device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        total_done = int(t.item())
    _barrier()
    if rank == 0:
        shards = []
        for k, (start, stop) in enumerate(ranges):
            info = finished_shard(output, k, start, stop, meta)
            if info is None:
                raise SReTError(f"shard {k} is missing or damaged after generation; rerun the same command")
            shards.append(info)
        meta.shards = shards
        total_bytes = sum(s.bytes for s in shards)
        old_stats = {}
        if total_done == 0 and (output / METADATA_FILE).is_file():  # nothing redone: keep the original run's numbers
            old_stats = json.loads((output / METADATA_FILE).read_text()).get("stats", {})
        meta.stats = old_stats or {
            "bytes_per_image": total_bytes / max(meta.num_samples, 1),
            "bytes_total": total_bytes,
            "images_per_s": total_done / elapsed if total_done else None,
            "generated_images_this_run": total_done,
            "unreadable_images_this_run": unreadable,
            "seconds_this_run": elapsed,
            "world_size": world,
            "device": str(device),
        }
        atomic_write_bytes(output / METADATA_FILE, meta.to_json())
        (output / PENDING_FILE).unlink(missing_ok=True)
    _barrier()
    return GenerationResult(meta=meta, generated_samples=total_done, skipped_shards=skipped, seconds=elapsed)


def describe(meta: LabelMeta) -> dict[str, Any]:
    """The numbers worth printing at the end of a run."""
    return {"images": meta.num_samples, "crops_per_image": meta.num_crops, "top_k": meta.top_k, **meta.stats}
