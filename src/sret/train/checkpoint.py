"""Training checkpoints: atomic writes, full resumable state, and safe reads.

Layout of ``last.pth`` (a plain dict, readable with ``torch.load(..., weights_only=True)``)::

    model        state_dict of the bare model (the published checkpoints' key, so any sret tool loads it)
    optimizer, scheduler, scaler, ema     their state_dicts (ema/scaler may be None)
    epoch        epochs fully done;  epoch_step: batches done inside epoch ``epoch`` (0 at an epoch boundary)
    step         optimizer-schedule steps done in total
    epoch_state  running sums of the unfinished epoch (loss, samples, seconds), so its log row stays right
    history      one dict per finished epoch (what log.csv holds), so the log is rebuilt, never half-appended
    rng          torch / cuda / numpy / python RNG states
    config       the resolved run configuration;  class_names: label index -> name

Writes go to a temporary file in the same folder, are fsynced, then renamed over the target: a SIGKILL at any
moment leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sret.errors import CheckpointError


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` via temp file + fsync + ``os.replace`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; a checkpoint should be as readable as any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_text(text: str, path: Path) -> None:
    """Small text files (log.csv, config.yaml, JSON) written the same all-or-nothing way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)


def capture_rng() -> dict[str, Any]:
    """All RNG states as tensors / plain types, so the checkpoint stays loadable with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint dict with ``weights_only=True`` (no pickled code runs), with a clear error."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (torch raises many types for truncated/foreign files)
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {first}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a checkpoint dict")
    return obj


def read_metadata(path: Path) -> dict[str, Any]:
    """``config`` and ``class_names`` of an sret training checkpoint, ``{}`` for other checkpoints."""
    if path.suffix == ".safetensors":
        return {}
    obj = load_checkpoint(path)
    return {k: obj[k] for k in ("config", "class_names") if k in obj}


def classifier_out_features(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> int | None:
    """Number of classes a state dict's classifier predicts, using the model's ``pretrained_cfg['classifier']``."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "head")
    names = name if isinstance(name, (list, tuple)) else [name]
    for n in names:
        w = state_dict.get(f"{n}.weight")
        if w is not None:
            return int(w.shape[0])
    return None


def load_model_checkpoint(model: torch.nn.Module, path: Path, num_classes: int | None = None) -> None:
    """Load weights for evaluation: the class count must match (a dropped head would evaluate random weights).

    Uses the model family's loader (``sret.models.weights``), which accepts the published checkpoints, sret
    training checkpoints, ``.safetensors`` and DDP ``module.`` prefixes, and resamples position embeddings.
    """
    from sret.models.weights import load_weights, read_state_dict

    state_dict = read_state_dict(path)
    have = classifier_out_features(state_dict, model)
    want = num_classes if num_classes is not None else getattr(model, "num_classes", None)
    if have is not None and want is not None and have != want:
        raise CheckpointError(f"{path} predicts {have} classes but the data has {want} classes")
    load_weights(model, state_dict, strict=True)
