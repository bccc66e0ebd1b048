"""Crop sampling and cutting shared by label generation and replay.

Both sides must cut a stored box with the very same operations, otherwise the replayed crop is not the crop the
teacher saw and its soft label is wrong; keeping the one implementation here is what guarantees that.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop

__all__ = ["DEFAULT_SCALE", "DEFAULT_RATIO", "sample_crops", "cut_crop", "to_mode", "fit_stats", "normalize_uint8"]

DEFAULT_SCALE = (0.08, 0.936)  # the FKD paper's crop scale range (upper bound < 1 keeps crops informative)
DEFAULT_RATIO = (3 / 4, 4 / 3)


def sample_crops(image: Image.Image | torch.Tensor, num_crops: int, seed: int, index: int,
                 scale: Sequence[float] = DEFAULT_SCALE, ratio: Sequence[float] = DEFAULT_RATIO,
                 flip_p: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``num_crops`` random-resized-crop boxes and flip bits for sample ``index``.

    The draw uses torchvision's own ``RandomResizedCrop.get_params`` (so the box distribution is exactly the one
    users know) inside a forked global RNG seeded with ``seed + index``: the result depends only on the seed, the
    sample index and the image size, never on the rank, worker, batch or resume point.

    Returns:
        ``boxes`` int32 ``[num_crops, 4]`` as ``(i, j, h, w)`` in image pixels, ``flips`` uint8 ``[num_crops]``.
    """
    boxes = np.empty((num_crops, 4), dtype=np.int32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) + int(index))
        for c in range(num_crops):
            boxes[c] = RandomResizedCrop.get_params(image, list(scale), list(ratio))
        flips = (torch.rand(num_crops) < flip_p).numpy().astype(np.uint8)
    return boxes, flips


def to_mode(image: Image.Image, in_chans: int) -> Image.Image:
    """Grey datasets (Fashion-MNIST) go in as 1 channel (``in_chans=1``) or repeated to RGB (``in_chans=3``)."""
    if in_chans == 1:
        return image if image.mode == "L" else image.convert("L")
    if in_chans == 3:
        return image if image.mode == "RGB" else image.convert("RGB")
    raise ValueError(f"in_chans must be 1 or 3 for image data, got {in_chans}")


def cut_crop(image: Image.Image, box: Sequence[int], flip: bool, size: Sequence[int],
             interpolation: str = "bilinear") -> torch.Tensor:
    """Cut ``box`` = (i, j, h, w) out of ``image``, resize to ``size`` = (H, W), flip if asked; uint8 ``[C, H, W]``."""
    i, j, h, w = (int(v) for v in box)
    crop = TF.resized_crop(image, i, j, h, w, [int(size[0]), int(size[1])],
                           interpolation=InterpolationMode(interpolation), antialias=True)
    if flip:
        crop = TF.hflip(crop)
    return TF.pil_to_tensor(crop)


def fit_stats(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Adapt a normalisation mean/std to the channel count (ImageNet's 3 values average to 1 for grey input)."""
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if in_chans == 1:
        return (sum(values) / len(values),)
    raise ValueError(f"cannot adapt {len(values)} normalisation values to {in_chans} channels")


def normalize_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[..., C, H, W]`` -> normalised float32, the same arithmetic for generation and replay."""
    x = x.float().div_(255.0)
    shape = (-1, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(shape)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(shape)
    return x.sub_(m).div_(s)
