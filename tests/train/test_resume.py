"""A real SIGKILL in the middle of training: last.pth stays readable and --resume finishes the same run.

With ``--workers 0`` every random draw (augmentation, drop path, data order) comes from RNG states that the
checkpoint restores, so the resumed run must end with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import csv
import signal

import torch
from train_helpers import TINY, cli_subprocess, fast_flags, make_image_folder, train_then_sigkill

EPOCHS, BATCH, TRAIN = 6, 8, 64
FLAGS = fast_flags(**{"--epochs": EPOCHS, "--batch-size": BATCH, "--checkpoint-every-steps": 1,
                      "--aa": "rand-m9-mstd0.5-inc1", "--reprob": "0.25", "--mixup": "0.8", "--cutmix": "1.0"})


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    data = make_image_folder(tmp_path / "d", {"train": [TRAIN // 4] * 4, "val": [2] * 4})
    total_steps = EPOCHS * (TRAIN // BATCH)

    killed = tmp_path / "killed"
    rc = train_then_sigkill(["--model", TINY, "--data", data, *FLAGS], killed, min_step=11)  # inside epoch 2
    assert rc == -signal.SIGKILL
    state = torch.load(killed / "last.pth", weights_only=True)  # never torn
    assert 11 <= state["step"] < total_steps

    resumed = cli_subprocess("train", "--resume", killed)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch" in resumed.stdout

    straight = tmp_path / "straight"
    full = cli_subprocess("train", "--model", TINY, "--data", data, "--output", straight, *FLAGS)
    assert full.returncode == 0, full.stderr

    a = torch.load(killed / "last.pth", weights_only=True)
    b = torch.load(straight / "last.pth", weights_only=True)
    assert a["step"] == b["step"] == total_steps
    assert a["epoch"] == b["epoch"] == EPOCHS
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
    with open(killed / "log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, EPOCHS + 1))
    assert not list(killed.glob(".last.pth.*.tmp"))


def test_resume_of_a_missing_run_is_a_clear_error(tmp_path):
    result = cli_subprocess("train", "--resume", tmp_path / "nothing")
    assert result.returncode == 2
    assert "no such run folder" in result.stderr and "Traceback" not in result.stderr
