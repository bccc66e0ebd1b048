"""Which images a label set belongs to: opening the training images and listing them with their sizes.

FKD labels are indexed by sample position, so the only safe link between a label set and a dataset is the exact
ordered list of files. It is recorded at generation (relative path + size in bytes, so the set survives moving the
dataset root) and compared at replay.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from sret.errors import SReTError

__all__ = ["open_image_dataset", "dataset_file_list", "dataset_num_classes"]


def _pil_loader(path: str) -> Any:
    from PIL import Image

    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
    return img


def open_image_dataset(data: str, split: str = "train") -> Any:
    """The training images of ``data`` as a dataset returning ``(PIL image, class index)`` with no transform.

    ``data`` is an ImageFolder root (``DATA/train/<class>/*`` as ImageNet is usually kept, or ``DATA/<class>/*``),
    or a name the training pipeline knows (``fashion-mnist``, ``sample``) when :mod:`sret.data` provides it.
    """
    from torchvision.datasets import ImageFolder

    path = Path(data)
    if path.is_dir():
        root = path / split if (path / split).is_dir() else path
        try:
            return ImageFolder(str(root), loader=_pil_loader)
        except (FileNotFoundError, RuntimeError) as err:
            raise SReTError(f"cannot read image folder {str(root)!r}: {err}") from None
    try:  # named datasets belong to the training pipeline; use it when it is installed
        from sret.data import fkd_base_dataset  # type: ignore[attr-defined]
    except ImportError:
        fkd_base_dataset = None
    if fkd_base_dataset is not None:
        return fkd_base_dataset(data, split=split)
    raise SReTError(f"data {data!r} is not a directory; give an ImageFolder root (with a train/ folder or class "
                    "folders)")


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
    if found is None:
        return [(f"#{i}", 0) for i in range(len(dataset))]
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
