"""Data sources: the embedded sample, Fashion-MNIST discovery, unreadable-file handling, resumable sampling."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sret.data import fashion_mnist
from sret.data.folder import BadSampleLog, SkippingImageFolder, collate_skipping
from sret.data.loader import ResumableSampler, ShardSampler
from sret.data.sources import open_source
from sret.errors import SReTError


def test_sample_is_small_real_balanced_and_licensed():
    files = list(fashion_mnist.SAMPLE_DIR.iterdir())
    assert sum(f.stat().st_size for f in files) < 2 * 1024 * 1024
    licence = (fashion_mnist.SAMPLE_DIR / "LICENSE").read_text()
    assert "MIT" in licence and "Zalando" in licence
    src = open_source("sample")
    train, val = src.split("train"), src.split("val")
    assert (len(train), len(val)) == (2000, 500)
    assert Counter(train.targets) == {c: 200 for c in range(10)}
    assert src.num_classes == 10 and src.in_chans == 1 and src.class_names[9] == "Ankle boot"
    img, target = val[0]
    assert img.size == (28, 28) and img.mode == "RGB" and 0 <= target < 10


def test_sample_images_are_the_first_of_each_class_in_the_real_files():
    if not (fashion_mnist.SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"full Fashion-MNIST not installed ({fashion_mnist.INSTALL_COMMAND})")
    full_x, full_y = fashion_mnist.read_idx_split(fashion_mnist.SYSTEM_DIR, "val")
    x, y = fashion_mnist.read_idx_split(fashion_mnist.SAMPLE_DIR, "val")
    first_bag = int(torch.nonzero(full_y == 8)[0])
    assert torch.equal(x[y == 8][0], full_x[first_bag])


def test_missing_fashion_mnist_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "absent")
    with pytest.raises(SReTError, match="apt-get install -y dataset-fashion-mnist"):
        open_source("fashion-mnist")


def test_idx_reader_roundtrip_of_gz_files(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    header = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + images.tobytes())
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + bytes([7, 3]))
    x, y = fashion_mnist.read_idx_split(tmp_path, "train")
    assert torch.equal(x, torch.from_numpy(images)) and y.tolist() == [7, 3]
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(SReTError, match="cannot read"):
        fashion_mnist.read_idx_split(tmp_path, "train")


def test_unreadable_files_are_dropped_from_batches_and_counted(tmp_path: Path):
    for k in range(2):
        (tmp_path / f"c{k}").mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (k * 100, 0, 0)).save(tmp_path / f"c{k}" / f"{i}.png")
    (tmp_path / "c0" / "1.png").write_bytes(b"\x89PNG truncated")
    (tmp_path / "c1" / "x.jpg").write_text("not an image")
    ds = SkippingImageFolder(str(tmp_path), transform=lambda im: torch.zeros(3, 8, 8))
    batch = collate_skipping([ds[i] for i in range(len(ds))])
    assert len(ds) == 7 and len(batch) == 5 and batch.images.shape == (5, 3, 8, 8)
    assert sorted(Path(b.path).name for b in batch.bad) == ["1.png", "x.jpg"]
    log = BadSampleLog()
    log.add(batch.bad)
    log.add(batch.bad)  # seen again next epoch: still two files
    assert len(log) == 2 and "skipped 2 unreadable" in log.summary()


def test_resumable_sampler_skips_exactly_the_batches_taken():
    data = list(range(50))
    full = ResumableSampler(data, batch_size=4, seed=3)
    full.set_epoch(2)
    order = list(full)
    assert sorted(order) == data[: len(order)] or len(set(order)) == len(order) == 50
    resumed = ResumableSampler(data, batch_size=4, seed=3)
    resumed.set_epoch(2)
    resumed.set_start_batch(5)
    assert list(resumed) == order[20:] and len(resumed) == 30
    other_epoch = ResumableSampler(data, batch_size=4, seed=3)
    other_epoch.set_epoch(3)
    assert list(other_epoch) != order


def test_shard_sampler_covers_each_index_once_without_padding():
    data = list(range(11))
    shards = [list(ShardSampler(data, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == data
