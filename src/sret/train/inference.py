"""An evaluation-ready model from ``--model`` / ``--checkpoint`` flags (shared by ``validate`` and ``predict``).

sret training checkpoints carry their config (model name, input size, channels, normalisation) and class names, so
for them ``--model`` and the size flags are optional; published and other checkpoints need ``--model``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from sret.errors import SReTError
from sret.train.checkpoint import read_metadata


@dataclass
class EvalSpec:
    """What is needed to build and feed the model for evaluation."""

    model: str
    img_size: int | None
    in_chans: int
    class_names: list[str] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    crop_pct: float | None
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def eval_spec(model: str | None, checkpoint: Path, img_size: int | None, in_chans: int | None,
              model_kwargs: dict[str, Any] | None = None) -> EvalSpec:
    """Combine flags with what an sret checkpoint records (flags win; ``model_kwargs`` are merged over the run's)."""
    meta: dict[str, Any] = read_metadata(checkpoint) if checkpoint.suffix != ".safetensors" else {}
    cfg = meta.get("config") or {}
    name = model or cfg.get("model")
    if not name:
        raise SReTError(f"--model is required: {checkpoint} does not record which model it holds")
    mean, std = cfg.get("data_mean"), cfg.get("data_std")
    return EvalSpec(
        model=name,
        img_size=img_size or cfg.get("img_size"),
        in_chans=in_chans or cfg.get("in_chans") or 3,
        class_names=list(meta["class_names"]) if meta.get("class_names") else None,
        mean=tuple(mean) if mean else None,
        std=tuple(std) if std else None,
        crop_pct=cfg.get("crop_pct"),
        model_kwargs={**(cfg.get("model_kwargs") or {}), **(model_kwargs or {})},
    )


def build_eval_model(spec: EvalSpec, checkpoint: Path, num_classes: int) -> nn.Module:
    """The model of ``spec`` with the checkpoint's weights, in eval mode (class count checked)."""
    from sret.train.checkpoint import load_model_checkpoint
    from sret.train.factory import build_model

    model = build_model(spec.model, num_classes, spec.in_chans, spec.img_size, model_kwargs=spec.model_kwargs)
    load_model_checkpoint(model, checkpoint, num_classes)
    return model.eval()


def model_input_size(model: nn.Module, img_size: int | None) -> int:
    """The square input size to feed: the flag/checkpoint's, else the model's default."""
    if img_size:
        return int(img_size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return int(cfg.get("input_size", (3, 224, 224))[-1])
