"""ImageFolder that survives unreadable files: a bad image is dropped from its batch and counted, not fatal.

Large image collections nearly always hold a few truncated or mislabelled files; checking every file before
training would cost a full pass over ImageNet, so the check happens when a file is first decoded. A failing sample
comes back as :class:`BadSample` and :func:`collate_skipping` removes it from the batch and reports its index, so the
count reaches the main process even when the decoding ran in a DataLoader worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate
from torchvision.datasets import ImageFolder

from sret.errors import SReTError

DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class BadSample:
    """Placeholder for a sample whose file could not be decoded."""

    index: int
    path: str
    reason: str


@dataclass
class Batch:
    """A collated batch plus the samples that were dropped from it."""

    images: torch.Tensor
    targets: torch.Tensor
    bad: list[BadSample]

    def __len__(self) -> int:
        return len(self.targets)


class SkippingImageFolder(ImageFolder):
    """``torchvision.datasets.ImageFolder`` whose ``__getitem__`` returns :class:`BadSample` on decode errors."""

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                img.load()  # force the full decode here, so truncated files fail inside the try
                img = img.convert("RGB")
        except DECODE_ERRORS as err:
            return BadSample(index, path, f"{type(err).__name__}: {err}")
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def open_image_folder(root: Path) -> SkippingImageFolder:
    """Open one split folder (``root/<class>/<image>``) with clear errors for missing or empty folders."""
    if not root.is_dir():
        raise SReTError(f"data folder not found: {root}")
    try:
        return SkippingImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as err:
        raise SReTError(f"{root}: no images in <class>/<image> layout ({err})") from err


def collate_skipping(samples: list) -> Batch:
    """Collate ``(image, target)`` pairs, dropping :class:`BadSample` entries and keeping them in ``Batch.bad``."""
    good = [s for s in samples if not isinstance(s, BadSample)]
    bad = [s for s in samples if isinstance(s, BadSample)]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), bad)
    images, targets = default_collate(good)
    return Batch(images, targets, bad)


class BadSampleLog:
    """Unique unreadable files seen so far (a file may fail once per epoch; it is counted once)."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def add(self, bad: list[BadSample]) -> None:
        for b in bad:
            self.paths.setdefault(b.path, b.reason)

    def __len__(self) -> int:
        return len(self.paths)

    def summary(self, limit: int = 3) -> str:
        shown = "; ".join(f"{p} ({r})" for p, r in list(self.paths.items())[:limit])
        more = f"; and {len(self) - limit} more" if len(self) > limit else ""
        return f"skipped {len(self)} unreadable image file(s): {shown}{more}"


class TransformedView(Dataset):
    """The same underlying samples with a different transform (train and eval pipelines over one data set)."""

    def __init__(self, base: Dataset, transform) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        item = self.base[index]
        if isinstance(item, BadSample):
            return item
        img, target = item
        return self.transform(img), target
