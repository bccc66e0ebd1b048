"""Rebuild the embedded ``--data sample`` subset from the full Fashion-MNIST IDX files.

The subset is what lets ``sret demo`` train and evaluate on a fresh machine with no download, so it must stay
small (the package ships it) yet be real data with balanced classes. It is written in the original gzipped IDX
format so that exactly the same reader serves the full data set and the sample.

Run ``python -m sret.data.make_sample [SOURCE_DIR]`` (default: the Debian ``dataset-fashion-mnist`` folder).
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import torch

from sret.data.fashion_mnist import SAMPLE_DIR, SYSTEM_DIR, read_idx_split

TRAIN_PER_CLASS = 200
VAL_PER_CLASS = 50


def balanced_indices(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """First ``per_class`` indices of every class, in data-set order (deterministic, no RNG needed)."""
    picks = [torch.nonzero(labels == c).flatten()[:per_class] for c in range(int(labels.max()) + 1)]
    return torch.cat(picks).sort().values


def write_idx_gz(path: Path, tensor: torch.Tensor) -> None:
    """Write a uint8 tensor as gzipped IDX (magic 0x0000 08 NDIM, big-endian dims) with a fixed mtime."""
    header = struct.pack(">I", 0x0800 + tensor.dim()) + b"".join(struct.pack(">I", d) for d in tensor.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(header + tensor.contiguous().numpy().tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=str(SYSTEM_DIR))
    args = parser.parse_args()
    for split, per_class in (("train", TRAIN_PER_CLASS), ("t10k", VAL_PER_CLASS)):
        images, labels = read_idx_split(Path(args.source), split)
        keep = balanced_indices(labels, per_class)
        write_idx_gz(SAMPLE_DIR / f"{split}-images-idx3-ubyte.gz", images[keep])
        write_idx_gz(SAMPLE_DIR / f"{split}-labels-idx1-ubyte.gz", labels[keep].to(torch.uint8))
        print(f"{split}: {len(keep)} images")


if __name__ == "__main__":
    main()
