"""``sret train --fkd-labels``: FKD replay through the normal training loop, on the embedded sample.

One label set is generated per module with ``sret fkd-label`` (timm's tiny ``test_vit`` with random weights as the
teacher, 8 crops per image over the 2000 sample training images), then tiny student runs replay it on a prefix of the
training split (``--train-subset``). With ``--workers 0`` every random draw (mixup, drop path, sample order) comes
from RNG states the checkpoint restores and the crop choice is a function of (seed, pass, index), so a SIGKILLed and
resumed FKD run must end with exactly the weights of an uninterrupted one (the bar of tests/train/test_resume.py).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from train_helpers import TINY, cli, cli_subprocess, fast_flags, make_image_folder, train_then_sigkill

NUM_CROPS, EPOCHS, BATCH, TRAIN = 2, 4, 8, 32  # 2 passes x (32 / 4 images per step) = 16 steps
STEPS_PER_PASS = TRAIN // (BATCH // NUM_CROPS)
PASSES = EPOCHS // NUM_CROPS


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fkd") / "labels"
    result = cli_subprocess("fkd-label", "--teacher", TINY, "--no-pretrained", "--num-classes", 10, "--data", "sample",
                            "--output", out, "--num-crops", 8, "--top-k", 5, "--teacher-img-size", 16, "--in-chans", 1,
                            "--workers", 0, "--batch-size", 1024)
    assert result.returncode == 0, result.stderr
    assert "bytes/image" in result.stdout
    return out


def fkd_flags(labels: Path, **overrides) -> list[str]:
    flags = {"--data": "sample", "--train-subset": TRAIN, "--val-subset": 16, "--fkd-labels": labels,
             "--num-crops": NUM_CROPS, "--epochs": EPOCHS, "--batch-size": BATCH, "--mixup": "0.8", "--cutmix": "1.0",
             "--checkpoint-every-steps": 1, **overrides}
    return ["--model", TINY, *fast_flags(**flags)]


def test_fkd_sigkill_then_resume_matches_uninterrupted_run(labels, tmp_path):
    # the uninterrupted run doubles as the semantics check (epochs-equivalent, log rows, loss)
    straight = tmp_path / "straight"
    full = cli_subprocess("train", *fkd_flags(labels), "--output", straight)
    assert full.returncode == 0, full.stderr
    assert f"{PASSES} passes x {STEPS_PER_PASS} steps = {EPOCHS} epochs-equivalent" in full.stdout
    with open(straight / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [NUM_CROPS * (p + 1) for p in range(PASSES)]  # one row per pass
    assert [int(r["step"]) for r in rows] == [STEPS_PER_PASS * (p + 1) for p in range(PASSES)]
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
    assert float(rows[-1]["lr"]) == pytest.approx(1e-5)  # the cosine schedule ends with the last pass

    killed = tmp_path / "killed"
    train_then_sigkill(fkd_flags(labels), killed, min_step=STEPS_PER_PASS + 3)  # inside pass 2
    state = torch.load(killed / "last.pth", weights_only=True)
    assert STEPS_PER_PASS < state["step"] < PASSES * STEPS_PER_PASS and state["epoch"] == 1  # epoch counts passes

    resumed = cli_subprocess("train", "--resume", killed)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at pass 2" in resumed.stdout

    a = torch.load(killed / "last.pth", weights_only=True)
    b = torch.load(straight / "last.pth", weights_only=True)
    assert a["step"] == b["step"] == PASSES * STEPS_PER_PASS
    assert a["epoch"] == b["epoch"] == PASSES
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
    assert (killed / "log.csv").read_text().splitlines()[0] == (straight / "log.csv").read_text().splitlines()[0]
    with open(killed / "log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [NUM_CROPS * (p + 1) for p in range(PASSES)]


def test_fkd_renorm_without_mixup_learns_in_process(labels, tmp_path):
    """The analytic top-k loss path (no mixup): runs, and the train loss goes down over passes."""
    out = tmp_path / "renorm"
    code = cli("train", *fkd_flags(labels, **{"--mixup": 0, "--cutmix": 0, "--soft-label": "renorm",
                                              "--epochs": 6, "--num-crops": 2, "--checkpoint-every-steps": 0,
                                              "--lr": "3e-3"}), "--output", out)
    assert code == 0
    with open(out / "log.csv") as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_fkd_with_teacher_is_refused(labels, tmp_path, capsys):
    assert cli("train", *fkd_flags(labels), "--teacher", TINY, "--output", tmp_path / "r") == 2
    assert "--fkd-labels and --teacher exclude each other" in capsys.readouterr().err


def test_fkd_class_count_mismatch_is_refused(labels, tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", {"train": [4] * 4, "val": [1] * 4}, size=16)
    flags = fkd_flags(labels, **{"--data": data, "--train-subset": 16, "--val-subset": 4})
    assert cli("train", *flags, "--output", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "the labels have 10 classes" in err and "has 4" in err and "Traceback" not in err


def test_fkd_file_list_mismatch_reaches_the_user(labels, tmp_path, monkeypatch, capsys):
    """Labels of the sample used on another Fashion-MNIST copy ($SRET_FASHION_MNIST): exit code 2, clear message."""
    from sret.data.fashion_mnist import SAMPLE_DIR, read_idx_split
    from sret.data.make_sample import write_idx_gz

    other = tmp_path / "fm"
    other.mkdir()
    for split in ("train", "t10k"):
        images, targets = read_idx_split(SAMPLE_DIR, split)
        write_idx_gz(other / f"{split}-images-idx3-ubyte.gz", images[:40])
        write_idx_gz(other / f"{split}-labels-idx1-ubyte.gz", targets[:40].to(torch.uint8))
    monkeypatch.setenv("SRET_FASHION_MNIST", str(other))
    flags = fkd_flags(labels, **{"--data": "fashion-mnist", "--train-subset": 16, "--val-subset": 4})
    assert cli("train", *flags, "--output", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "label set built for 2000 files, dataset has 40" in err and "Traceback" not in err


def test_fkd_batch_must_be_a_multiple_of_num_crops(labels, tmp_path, capsys):
    assert cli("train", *fkd_flags(labels, **{"--num-crops": 3}), "--output", tmp_path / "r") == 2
    assert "multiple of --num-crops 3" in capsys.readouterr().err
