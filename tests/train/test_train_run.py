"""End-to-end ``sret train`` runs on tiny data: it learns, leaves its files, skips corrupt images, stops on NaN."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import torch
from train_helpers import TINY, cli, fast_flags, make_image_folder


def read_log(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def test_short_training_lowers_the_loss_and_keeps_its_files(colour_data, tmp_path, capsys):
    run = tmp_path / "run"
    code = cli("train", "--model", "sret_t", "--data", colour_data, "--output", run,
               *fast_flags(**{"--epochs": 3, "--lr": "1e-3"}))
    out = capsys.readouterr().out
    assert code == 0, out
    rows = read_log(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.8 * losses[0], losses
    assert float(rows[-1]["val_loss"]) < math.log(4)  # better than the uniform guess over 4 classes
    assert int(rows[-1]["step"]) == 3 * (64 // 8)
    for name in ("config.yaml", "log.csv", "curves.png", "last.pth", "best.pth"):
        assert (run / name).is_file(), name
    assert any((run / "tb").glob("events.out.tfevents.*"))
    assert "run folder:" in out and "curves.png" in out and "last.pth" in out

    last = torch.load(run / "last.pth", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "ema", "epoch", "step", "rng", "config", "class_names"):
        assert key in last, key
    assert last["step"] == 24 and last["epoch"] == 3 and last["class_names"] == ["c0", "c1", "c2", "c3"]

    # validate on best.pth reproduces the number the training loop logged for that epoch
    best = torch.load(run / "best.pth", weights_only=True)
    assert set(best) >= {"model", "config", "class_names"}
    logged = next(r for r in rows if int(r["epoch"]) == best["epoch"])
    assert cli("validate", "--checkpoint", run / "best.pth", "--data", colour_data, "--workers", "0",
               "--json", tmp_path / "v.json") == 0
    metrics = json.loads((tmp_path / "v.json").read_text())
    assert metrics["count"] == 16
    assert metrics["top1"] == float(logged["val_top1"])
    assert metrics["loss"] == __import__("pytest").approx(float(logged["val_loss"]), rel=1e-4)


def test_corrupt_images_are_skipped_and_counted(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", {"train": [8, 8], "val": [3, 3]})
    (data / "train/c0/000.png").write_bytes(b"this is not a png")
    good = (data / "train/c1/000.png").read_bytes()
    (data / "train/c1/000.png").write_bytes(good[: len(good) // 2])  # truncated
    (data / "val/c0/000.png").write_bytes(b"")
    code = cli("train", "--model", TINY, "--data", data, "--output", tmp_path / "run",
               *fast_flags(**{"--batch-size": 4, "--epochs": 2}))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "skipped 3 unreadable image file(s)" in captured.out + captured.err
    rows = read_log(tmp_path / "run")
    assert len(rows) == 2 and int(rows[-1]["val_images"]) == 5  # 6 val files, one unreadable


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(colour_data, tmp_path, capsys):
    run = tmp_path / "run"
    code = cli("train", "--model", TINY, "--data", colour_data, "--output", run,
               *fast_flags(**{"--lr": "1e30", "--checkpoint-every-steps": 1, "--epochs": 3}))
    err = capsys.readouterr().err
    assert code == 2
    assert "loss became" in err and "at step" in err and "last good checkpoint" in err
    bad_step = int(err.split("at step ")[1].split()[0])
    last = torch.load(run / "last.pth", weights_only=True)
    assert last["step"] == bad_step - 1
    assert "Traceback" not in err


def test_distillation_from_an_sret_checkpoint(colour_data, tmp_path):
    teacher = tmp_path / "teacher"
    assert cli("train", "--model", TINY, "--data", colour_data, "--output", teacher, *fast_flags(**{"--epochs": 1})) == 0
    student = tmp_path / "student"
    assert cli("train", "--model", TINY, "--data", colour_data, "--output", student, "--teacher", teacher / "last.pth",
               "--kd-temperature", 2, *fast_flags(**{"--epochs": 1})) == 0
    state = torch.load(student / "last.pth", weights_only=True)
    assert state["config"]["teacher"] == str(teacher / "last.pth") and state["step"] == 8
    # a teacher whose classes differ from the data is refused
    other = make_image_folder(tmp_path / "three", {"train": [8] * 3, "val": [2] * 3})
    assert cli("train", "--model", TINY, "--data", other, "--output", tmp_path / "s2", "--teacher",
               teacher / "last.pth", *fast_flags(**{"--epochs": 1})) == 2


def test_ema_is_evaluated_and_checkpointed_and_runs_are_not_overwritten(colour_data, tmp_path, capsys):
    run = tmp_path / "ema"
    assert cli("train", "--model", TINY, "--data", colour_data, "--output", run, "--ema", "--ema-decay", 0.9,
               *fast_flags(**{"--epochs": 1})) == 0
    rows = read_log(run)
    assert rows[0]["ema_top1"] != ""
    assert torch.load(run / "last.pth", weights_only=True)["ema"] is not None
    capsys.readouterr()
    assert cli("train", "--model", TINY, "--data", colour_data, "--output", run, *fast_flags()) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_cuda_graph_refuses_what_it_cannot_capture(colour_data, tmp_path, capsys):
    """``--cuda-graph`` (CUDA, bf16/no autocast, Adam/AdamW): every other setup is a clear exit 2."""
    base = ("train", "--model", TINY, "--data", colour_data, "--cuda-graph")
    cases = [
        (("--output", tmp_path / "a", "--amp", "fp16"), "--amp bf16 or none"),
        (("--output", tmp_path / "b", "--opt", "sgd"), "--opt adam or adamw"),
        (("--output", tmp_path / "c", "--grad-checkpointing"), "exclude each other"),
        (("--output", tmp_path / "d", "--device", "cpu"), "--cuda-graph needs CUDA; this run is on cpu"),
    ]
    for extra, message in cases:
        assert cli(*base, *extra, *fast_flags()) == 2
        err = capsys.readouterr().err
        assert message in err, (extra, err)
