"""DDP on the CPU: torchrun, gloo, 2 processes, a tiny synthetic data set.

Checks the distributed contract: each rank takes half of every epoch (so half the steps of a single process),
validation counts every image exactly once (all-reduced, no sampler padding), only rank 0 writes the run folder,
and its metrics equal a single-process evaluation of the same weights.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from train_helpers import REPO, TINY, cli_subprocess, fast_flags, make_image_folder


def test_torchrun_two_processes_gloo(tmp_path):
    data = make_image_folder(tmp_path / "d", {"train": [10] * 4, "val": [3, 3, 3, 2]})  # 40 train, 11 val (odd)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sret", "train",
           "--model", TINY, "--data", str(data), "--output", str(run), "--device", "cpu",
           *fast_flags(**{"--batch-size": 4, "--epochs": 2})]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("sret train: test_vit") == 1  # only rank 0 reports

    state = torch.load(run / "last.pth", weights_only=True)
    assert state["config"]["world_size"] == 2
    assert state["step"] == 2 * (40 // (2 * 4))  # 5 steps per epoch per rank
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["val_images"]) for r in rows] == [11, 11]

    check = cli_subprocess("validate", "--checkpoint", run / "last.pth", "--data", data, "--workers", "0",
                           "--json", tmp_path / "v.json")
    assert check.returncode == 0, check.stderr
    single = json.loads((tmp_path / "v.json").read_text())
    assert single["count"] == 11
    assert single["top1"] == pytest.approx(float(rows[-1]["val_top1"]), abs=1e-6)
    assert single["loss"] == pytest.approx(float(rows[-1]["val_loss"]), rel=1e-4)
