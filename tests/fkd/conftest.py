"""Fixtures for the FKD tests: a tiny procedurally drawn ImageFolder and a tiny deterministic teacher checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

NUM_CLASSES = 10
TEACHER_ARCH = "test_byobnet"
TEACHER_SIZE = 32


def draw_image(rng: np.random.Generator, cls: int, height: int, width: int, grey: bool = False) -> Image.Image:
    """A gradient background with a class-dependent bright rectangle: crops of it differ, so labels differ."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * (3 + cls)) % 256, (yy * (5 + cls)) % 256, ((xx + yy) * 7) % 256], -1).astype(np.float32)
    base += rng.normal(0, 20, base.shape)
    y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
    base[y0:y0 + height // 3, x0:x0 + width // 3] = 255 - 20 * cls
    arr = np.clip(base, 0, 255).astype(np.uint8)
    return Image.fromarray(arr[..., 0]) if grey else Image.fromarray(arr)


def make_image_folder(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0, grey: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / "train" / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(36, 60)), int(rng.integers(36, 60))
            draw_image(rng, c, h, w, grey).save(d / f"img_{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random but fixed tiny timm net; the head is scaled so its soft labels are far from uniform (no top-k ties)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(TEACHER_ARCH, num_classes=NUM_CLASSES, pretrained=False)
    with torch.no_grad():
        model.get_classifier().weight.mul_(20)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save(model.state_dict(), path)
    return path


def load_teacher(path: Path) -> torch.nn.Module:
    import timm

    model = timm.create_model(TEACHER_ARCH, num_classes=NUM_CLASSES, pretrained=False)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def label_args(data: Path, out: Path, ckpt: Path, *extra: str) -> list[str]:
    return ["fkd-label", "--teacher", str(ckpt), "--teacher-model", TEACHER_ARCH, "--data", str(data),
            "--output", str(out), "--num-crops", "6", "--top-k", "3", "--teacher-img-size", str(TEACHER_SIZE),
            "--shard-size", "5", "--batch-size", "12", "--workers", "0", "--seed", "7", *extra]
