"""Train / eval pipelines: timm's ``create_transform`` plus the one step it lacks, grey data for 1-channel models.

Images always arrive as 3-channel PIL images (grey data sets repeat their channel), so every timm augmentation
works as for ImageNet; :class:`FirstChannel` then keeps one channel when the model was built with ``in_chans=1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.data import create_transform
from torchvision import transforms as T

from sret.data.sources import DataSource
from sret.errors import SReTError


@dataclass
class AugmentConfig:
    """The train-time augmentations of the DeiT/SReT recipe (timm's names in brackets).

    Attributes:
        auto_augment: RandAugment policy string, e.g. ``rand-m9-mstd0.5-inc1`` (RandAugment m9); '' or None for none.
        re_prob: random erasing probability (``re_prob``), pixel mode as in DeiT.
        scale: RandomResizedCrop area range.
        hflip: horizontal flip probability.
        color_jitter: colour jitter strength (DeiT uses 0.3; ignored by timm while RandAugment is on).
        interpolation: resize interpolation.
    """

    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    re_prob: float = 0.25
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.3
    interpolation: str = "bicubic"


class FirstChannel(torch.nn.Module):
    """Keep channel 0 of a ``(3, H, W)`` tensor (the channels of a grey image are identical)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:1]


def build_transform(
    source: DataSource,
    img_size: int,
    in_chans: int,
    is_training: bool,
    aug: AugmentConfig | None = None,
    crop_pct: float | None = None,
) -> T.Compose:
    """The timm pipeline for ``source`` at ``img_size``, ending in ``in_chans`` channels.

    Args:
        source: where the images come from (gives mean/std and eval crop).
        img_size: square model input size.
        in_chans: 1 or 3; 1 is only meaningful for grey sources (channel 0 of an RGB image is just red).
        is_training: random augmentations if True, resize + centre crop otherwise.
        aug: train-time augmentations; default :class:`AugmentConfig`.
        crop_pct: eval crop fraction overriding the source's (None: source's, else timm's 0.875).
    """
    if in_chans not in (1, 3):
        raise SReTError(f"in_chans must be 1 or 3 for image data, got {in_chans}")
    if in_chans == 1 and source.in_chans != 1:
        raise SReTError(f"--in-chans 1 needs a grey data set; {source.name} has colour images")
    if is_training:
        aug = aug or AugmentConfig()
        tf = create_transform(
            (3, img_size, img_size),
            is_training=True,
            scale=aug.scale,
            hflip=aug.hflip,
            color_jitter=aug.color_jitter,
            auto_augment=aug.auto_augment or None,
            interpolation=aug.interpolation,
            mean=source.mean,
            std=source.std,
            re_prob=aug.re_prob,
            re_mode="pixel",
            re_count=1,
        )
    else:
        tf = create_transform(
            (3, img_size, img_size),
            is_training=False,
            interpolation=(aug.interpolation if aug else "bicubic"),
            mean=source.mean,
            std=source.std,
            crop_pct=crop_pct if crop_pct is not None else source.crop_pct,
        )
    if in_chans == 1:
        tf = T.Compose([tf, FirstChannel()])
    return tf
