"""Which images a label set belongs to: opening the training images and listing them with their sizes.

FKD labels are indexed by sample position, so the only safe link between a label set and a dataset is the exact
ordered list of files. It is recorded at generation (relative path + size in bytes, so the set survives moving the
dataset root) and compared at replay.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

__all__ = ["open_image_dataset", "dataset_file_list", "dataset_num_classes", "is_image_item"]


def open_image_dataset(data: str, split: str = "train") -> Any:
    """The training images of ``data`` as a dataset returning ``(PIL image, class index)`` with no transform.

    Goes through :func:`sret.data.open_source`, the same resolution ``sret train`` uses (an ImageFolder root with
    ``train/``, a flat class-folder root, ``fashion-mnist`` or ``sample``), so both sides see the same sample order.
    Unreadable files come back as :class:`sret.data.BadSample` instead of raising.
    """
    from sret.data import open_source

    return open_source(data).split(split)


def is_image_item(item: Any) -> bool:
    """False for the placeholder the training data sets return for an undecodable file."""
    from PIL import Image

    return isinstance(item, tuple) and len(item) >= 1 and isinstance(item[0], Image.Image)


def _files_of(dataset: Any) -> tuple[list[str], str | None] | None:
    """(paths, root) of a file-backed dataset: torchvision ImageFolder/DatasetFolder or timm ImageDataset."""
    if isinstance(getattr(dataset, "samples", None), list):
        return [s[0] for s in dataset.samples], getattr(dataset, "root", None)
    reader = getattr(dataset, "reader", None)
    if reader is not None and isinstance(getattr(reader, "samples", None), list):
        return [s[0] for s in reader.samples], getattr(reader, "root", None)
    return None


def dataset_file_list(dataset: Any) -> list[tuple[str, int]]:
    """Ordered ``(relative path, size in bytes)`` of every sample.

    Datasets may define ``fkd_file_list()`` themselves (e.g. in-memory Fashion-MNIST can return
    ``("train-images-idx3-ubyte.gz[17]", 784)``). Subsets map through their indices. Anything else falls back to
    ``("#i", 0)`` entries, which still catch a change in the number of samples.
    """
    own: Callable[[], Any] | None = getattr(dataset, "fkd_file_list", None)
    if callable(own):
        return [(str(n), int(s)) for n, s in own()]
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        inner = dataset_file_list(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    found = _files_of(dataset)
    if found is None:  # in-memory data (Fashion-MNIST): positions and per-image byte counts
        images = getattr(dataset, "images", None)
        per_image = int(images[0].numel() * images.element_size()) if images is not None and len(images) else 0
        return [(f"#{i}", per_image) for i in range(len(dataset))]
    paths, root = found
    out = []
    for p in paths:
        rel = os.path.relpath(p, root) if root else p
        try:
            size = os.path.getsize(p)
        except OSError:
            size = -1  # unreadable now; still comparable, and the image loader will report it properly
        out.append((Path(rel).as_posix(), size))
    return out


def dataset_num_classes(dataset: Any) -> int | None:
    classes = getattr(dataset, "classes", None)
    if classes is None and getattr(dataset, "reader", None) is not None:
        classes = getattr(dataset.reader, "class_to_idx", None)
    return len(classes) if classes is not None else None
