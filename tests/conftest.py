import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _find_shared() -> Path:
    """``../shared`` beside the checkout (CI clones the repo next to it)."""
    for candidate in (os.environ.get("SRET_SHARED"), REPO.parent / "shared", REPO / "shared"):
        if candidate and (Path(candidate) / "reference_layout.json").is_file():
            return Path(candidate)
    raise FileNotFoundError("reference_layout.json not found: set SRET_SHARED to the folder holding it")


@pytest.fixture(scope="session")
def reference_layout() -> dict:
    return json.loads((_find_shared() / "reference_layout.json").read_text())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
