"""Fashion-MNIST from its gzipped IDX files: the full set (Debian package) and the embedded sample.

The parsing is torchvision's (``read_image_file`` / ``read_label_file``); those read plain files only, so each gz
file is inflated into a temporary file first. Keeping the data as gz on disk means the Debian package's files and
the package's own ``sample/`` subset are read by the same code path.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.mnist import read_image_file, read_label_file

from sret.errors import SReTError

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DIR = "SRET_FASHION_MNIST"  # folder with the four IDX gz files, read instead of SYSTEM_DIR when set
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
INSTALL_COMMAND = "apt-get install -y dataset-fashion-mnist"
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Statistics of the 60k training images (pixel / 255); used instead of ImageNet's for this grey data set.
MEAN = 0.2860
STD = 0.3530
SPLIT_PREFIX = {"train": "train", "val": "t10k", "test": "t10k", "t10k": "t10k"}


def _read_gz(path: Path, reader) -> torch.Tensor:
    with tempfile.TemporaryDirectory(prefix="sret-idx-") as tmp:
        plain = Path(tmp) / path.stem
        with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return reader(str(plain))


def read_idx_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``{prefix}-images-idx3-ubyte.gz`` and ``{prefix}-labels-idx1-ubyte.gz`` from ``root``.

    Args:
        root: folder holding the four gz files.
        split: ``train`` or ``val``/``test``/``t10k``.

    Returns:
        uint8 images ``(N, 28, 28)`` and int64 labels ``(N,)``.
    """
    prefix = SPLIT_PREFIX[split]
    images_path = root / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    missing = [p for p in (images_path, labels_path) if not p.is_file()]
    if missing:
        hint = f"; install it with: {INSTALL_COMMAND}" if root == SYSTEM_DIR else ""
        raise SReTError(f"Fashion-MNIST not found: missing {', '.join(map(str, missing))}{hint}")
    try:
        images = _read_gz(images_path, read_image_file)
        labels = _read_gz(labels_path, read_label_file)
    except (OSError, EOFError, AssertionError, RuntimeError) as err:
        raise SReTError(f"cannot read Fashion-MNIST IDX files in {root}: {err}") from err
    if len(images) != len(labels):
        raise SReTError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    return images, labels.long()


class GreyImageDataset(Dataset):
    """In-memory grey images served as PIL RGB images, so timm's transforms (RandAugment fill colours,
    colour jitter, random erasing) work unchanged; the transform pipeline drops back to one channel when the
    model has ``in_chans=1``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None) -> None:
        self.images = images
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index].numpy(), mode="L").convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


def data_dir() -> Path:
    """Where ``--data fashion-mnist`` is read from: ``$SRET_FASHION_MNIST`` when set, else the Debian package's."""
    override = os.environ.get(ENV_DIR)
    return Path(override).expanduser() if override else SYSTEM_DIR


def open_fashion_mnist(split: str, sample: bool = False) -> GreyImageDataset:
    """The full Fashion-MNIST (``data_dir()``: system package or ``$SRET_FASHION_MNIST``) or the embedded sample."""
    images, labels = read_idx_split(SAMPLE_DIR if sample else data_dir(), split)
    return GreyImageDataset(images, labels)
