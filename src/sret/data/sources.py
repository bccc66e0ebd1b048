"""``--data`` resolution: the one place that turns ``sample`` / ``fashion-mnist`` / a folder into data sets.

Each source also says what a model needs to know about it (class names, natural channel count, normalisation,
a sensible input size and eval crop) so the commands do not special-case data sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from sret.data import fashion_mnist
from sret.data.folder import open_image_folder
from sret.errors import SReTError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BUILTIN = ("sample", "fashion-mnist")


@dataclass
class DataSource:
    """What ``--data`` names: its splits (opened lazily) and how its images should be fed to a model.

    Attributes:
        name: the ``--data`` value as given.
        class_names: label index -> name.
        in_chans: channels the images naturally have (1 for grey data sets); the default for new models.
        mean, std: per-channel normalisation of the 3-channel PIL images the data sets return.
        img_size: default input size, or None to use the model's own default.
        crop_pct: eval centre-crop fraction, or None to use the model's (Fashion-MNIST items are centred and
            tight, so cropping them would cut garments).
    """

    name: str
    class_names: list[str]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    img_size: int | None
    crop_pct: float | None
    root: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, split: str) -> Dataset:
        """Open ``train`` or ``val``. Image folders accept ``val``, then ``validation``, then ``test``."""
        if self.name in BUILTIN:
            return fashion_mnist.open_fashion_mnist(split, sample=self.name == "sample")
        assert self.root is not None
        folder = _split_folder(self.root, split)
        ds = open_image_folder(folder)
        if list(ds.classes) != self.class_names:
            raise SReTError(
                f"{folder} has {len(ds.classes)} classes that differ from the {len(self.class_names)} classes of "
                f"{_split_folder(self.root, 'train')}; train and val must hold the same class folders"
            )
        return ds


def _split_folder(root: Path, split: str) -> Path:
    names = ("train",) if split == "train" else ("val", "validation", "test")
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise SReTError(f"{root} has no {' / '.join(n + '/' for n in names)} folder (expected ImageFolder layout)")


def open_source(data: str) -> DataSource:
    """Resolve ``--data``: ``sample``, ``fashion-mnist``, or a folder with ``train/`` and ``val/``.

    A folder without ``train/`` that directly holds class folders is accepted for evaluation-only use
    (``sret validate --data path/to/val``); its class names come from its own subfolders.
    """
    if data in BUILTIN:
        if data == "fashion-mnist":
            root = fashion_mnist.data_dir()
            for f in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
                if not (root / f).is_file():
                    where = (f"${fashion_mnist.ENV_DIR} points to {root}, where {f} is missing"
                             if root != fashion_mnist.SYSTEM_DIR else
                             f"Fashion-MNIST is not installed ({root / f} is missing); install it with: "
                             f"{fashion_mnist.INSTALL_COMMAND}, or set ${fashion_mnist.ENV_DIR} to a folder with "
                             "the IDX gz files")
                    raise SReTError(where)
        mean, std = (fashion_mnist.MEAN,) * 3, (fashion_mnist.STD,) * 3
        return DataSource(data, list(fashion_mnist.CLASSES), 1, mean, std, img_size=64, crop_pct=1.0)
    root = Path(data).expanduser()
    if not root.is_dir():
        raise SReTError(
            f"data folder not found: {root} (give a folder with train/ and val/, or 'sample' or 'fashion-mnist')"
        )
    if (root / "train").is_dir():
        classes = open_image_folder(root / "train").classes
    else:
        root_split = open_image_folder(root)
        classes = root_split.classes
        return _FlatFolderSource(data, list(classes), 3, IMAGENET_MEAN, IMAGENET_STD, None, None, root)
    return DataSource(data, list(classes), 3, IMAGENET_MEAN, IMAGENET_STD, None, None, root)


class _FlatFolderSource(DataSource):
    """A folder of class folders with no split subfolders: every split is the folder itself."""

    def split(self, split: str) -> Dataset:
        assert self.root is not None
        return open_image_folder(self.root)
