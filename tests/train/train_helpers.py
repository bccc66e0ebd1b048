"""Helpers for the training tests: tiny synthetic ImageFolder data sets and CLI calls (in-process or not)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
# timm's 268k-parameter test ViT: fast enough for the mechanics tests (resume, DDP, corrupt files)
TINY = "test_vit"
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40), (40, 220, 220), (220, 40, 220), (128, 128, 128)]


def make_image_folder(root: Path, counts: dict[str, list[int]], size: int = 32, seed: int = 0) -> Path:
    """``root/{split}/c{k}/*.png`` with ``counts[split][k]`` images of class k: a class colour plus noise, so a
    model can learn it in a few steps."""
    rng = np.random.default_rng(seed)
    for split, per_class in counts.items():
        for k, n in enumerate(per_class):
            d = root / split / f"c{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.array(COLOURS[k % len(COLOURS)], dtype=np.float32)
                img = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def cli(*argv: str) -> int:
    """Run ``sret ARGV`` in-process (no interpreter start-up) and return its exit code."""
    from sret.cli import main

    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        return int(exc.code)


def cli_subprocess(*argv: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "sret", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def train_then_sigkill(argv: list[str], run_dir: Path, min_step: int, timeout: float = 240) -> int:
    """Start ``sret train ARGV --output RUN_DIR`` in a subprocess and SIGKILL it once ``last.pth`` records a step
    >= ``min_step``. Returns the killed process's return code (``-SIGKILL`` when the kill landed)."""
    import signal
    import time

    import torch

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "sret", "train", *map(str, argv), "--output", str(run_dir)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if (run_dir / "last.pth").exists():
                try:
                    step = torch.load(run_dir / "last.pth", weights_only=True)["step"]
                except Exception:  # noqa: BLE001 (replaced while reading)
                    step = -1
                if step >= min_step:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode


def fast_flags(**overrides) -> list[str]:
    """A short schedule with the heavy augmentations off, so tiny runs are quick and learn."""
    flags = {"--epochs": "2", "--batch-size": "8", "--workers": "0", "--aa": "", "--mixup": "0", "--cutmix": "0",
             "--reprob": "0", "--warmup-epochs": "0", "--lr": "2e-3", "--img-size": "32", "--log-every": "1"}
    flags.update({k: str(v) for k, v in overrides.items()})
    return [x for kv in flags.items() for x in kv]
