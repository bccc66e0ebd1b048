"""Data sets and loaders: ImageFolder (ImageNet layout), Fashion-MNIST, and the embedded sample."""

from sret.data.folder import BadSample, BadSampleLog, Batch, SkippingImageFolder, TransformedView
from sret.data.loader import ResumableSampler, ShardSampler, make_loader
from sret.data.sources import DataSource, open_source
from sret.data.transforms import AugmentConfig, build_transform

__all__ = [
    "AugmentConfig", "BadSample", "BadSampleLog", "Batch", "DataSource", "ResumableSampler", "ShardSampler",
    "SkippingImageFolder", "TransformedView", "build_transform", "make_loader", "open_source",
]  # fmt: skip
