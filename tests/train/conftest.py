"""Fixtures for the training tests (helpers live in train_helpers.py, a name no other conftest shadows)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import make_image_folder


@pytest.fixture
def colour_data(tmp_path: Path) -> Path:
    """4 classes, 16 train / 4 val images each."""
    return make_image_folder(tmp_path / "colours", {"train": [16] * 4, "val": [4] * 4})
