"""Building the FKD teacher: a timm model name, an sret model name, or a checkpoint file, plus its preprocessing.

The teacher's soft labels are only meaningful at the teacher's own resolution and normalisation, so those come from
its timm ``pretrained_cfg`` (``timm.data.resolve_data_config``), not from the student.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import torch

from sret.errors import CheckpointError, SReTError

from .crops import fit_stats

__all__ = ["TeacherConfig", "build_teacher", "teacher_data_config"]


@dataclass
class TeacherConfig:
    """How crops are prepared for the teacher."""

    img_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    in_chans: int


def _register_sret_models() -> None:
    """``import sret.models`` registers the sret variants with timm; absent or partial during development is fine."""
    try:
        importlib.import_module("sret.models")
    except ImportError:
        pass


def _create(name: str, pretrained: bool, img_size: int | None, **kwargs: Any) -> torch.nn.Module:
    import timm

    _register_sret_models()
    if not timm.is_model(name):
        raise SReTError(f"unknown teacher model {name!r}: not a timm or sret model name and not a file")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if img_size is not None:  # ViT-like teachers are built for a resolution; CNNs ignore it (and reject the kwarg)
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=img_size, **kwargs)
        except TypeError:
            pass
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _read_state(path: str) -> dict[str, torch.Tensor]:
    """State dict of a checkpoint, with the lead's reader when present (it knows every layout sret supports)."""
    try:
        from sret.models.weights import read_state_dict  # type: ignore[import-not-found]
    except ImportError:
        read_state_dict = None
    if read_state_dict is not None:
        return read_state_dict(path)
    # Fallback while sret.models.weights is being written: safetensors or a torch file, never unpickling code.
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any read failure is a bad checkpoint for the user
        raise CheckpointError(f"cannot read checkpoint {path!r}: {err}") from None
    for key in ("model_ema", "model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path!r} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_checkpoint(model: torch.nn.Module, path: str, state: dict[str, torch.Tensor]) -> None:
    try:
        from sret.models.weights import load_weights  # type: ignore[import-not-found]
    except ImportError:
        load_weights = None
    if load_weights is not None:
        load_weights(model, path)
        return
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path!r} does not fit the teacher architecture: {err}") from None


def _checkpoint_classes(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """Classifier size stored in a checkpoint, found through the model's timm ``pretrained_cfg['classifier']``."""
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    head = head[0] if isinstance(head, (list, tuple)) else head
    weight = state.get(f"{head}.weight") if head else None
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else None


def _training_config(path: str) -> dict:
    """The ``config`` an ``sret train`` checkpoint stores (empty for other files)."""
    if path.endswith(".safetensors"):
        return {}
    from sret.train.checkpoint import read_metadata

    try:
        return dict(read_metadata(Path(path)).get("config") or {})
    except SReTError:
        return {}


def build_teacher(teacher: str, teacher_model: str | None = None, num_classes: int | None = None,
                  in_chans: int | None = None, img_size: int | None = None,
                  pretrained: bool = True) -> tuple[torch.nn.Module, str, str | None]:
    """Return ``(model in eval mode, architecture name, checkpoint path or None)``.

    Args:
        teacher: a model name (timm or sret) or a checkpoint file.
        teacher_model: the architecture of a checkpoint teacher.
        num_classes: classifier size; for a named pretrained teacher leave ``None`` to keep its own head.
        in_chans: input channels (1 for grey data with a teacher trained that way).
        img_size: teacher resolution for models built for one (ViTs, SReT).
        pretrained: load timm's pretrained weights for a named teacher (a random teacher is only for tests).
    """
    if os.path.isfile(teacher):
        if not teacher_model:
            raise SReTError(f"teacher {teacher!r} is a checkpoint file: give its architecture with "
                            "--teacher-model NAME")
        run_cfg = _training_config(teacher)  # an `sret train` checkpoint records how its images were fed
        img_size = img_size or run_cfg.get("img_size")
        in_chans = in_chans or run_cfg.get("in_chans")
        state = _read_state(teacher)
        model = _create(teacher_model, False, img_size, num_classes=num_classes, in_chans=in_chans,
                        **(run_cfg.get("model_kwargs") or {}))
        fed: dict[str, Any] = {}  # how the run fed its images, in place of the architecture's defaults
        if run_cfg.get("data_mean") and run_cfg.get("data_std"):
            fed.update(mean=tuple(run_cfg["data_mean"]), std=tuple(run_cfg["data_std"]))
        if img_size:  # resolve_data_config reads the size from pretrained_cfg, which still says the default
            fed["input_size"] = (int(in_chans or getattr(model, "in_chans", 3)), int(img_size), int(img_size))
        if fed:
            model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {}, **fed)
        stored = _checkpoint_classes(model, state) if num_classes is None else None
        if stored is not None and stored != getattr(model, "num_classes", stored):
            model.reset_classifier(stored)  # a checkpoint teacher keeps the head it was trained with
        _load_checkpoint(model, teacher, state)
        name, ckpt = teacher_model, os.path.abspath(teacher)
    else:
        if os.sep in teacher or teacher.endswith((".pth", ".pt", ".safetensors", ".bin")):
            raise CheckpointError(f"teacher checkpoint {teacher!r} does not exist")
        try:
            model = _create(teacher, pretrained, img_size, num_classes=num_classes, in_chans=in_chans)
        except SReTError:
            raise
        except Exception as err:  # noqa: BLE001 - e.g. no pretrained weights reachable
            raise SReTError(f"cannot build teacher {teacher!r}: {err}") from None
        name, ckpt = teacher, None
    return model.eval(), name, ckpt


def teacher_data_config(model: torch.nn.Module, in_chans: int | None = None,
                        img_size: int | None = None) -> TeacherConfig:
    """Resolution, mean/std and interpolation of the teacher from its timm ``pretrained_cfg``."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    chans = int(in_chans or getattr(model, "in_chans", None) or cfg["input_size"][0])
    size = (int(img_size), int(img_size)) if img_size else (int(cfg["input_size"][1]), int(cfg["input_size"][2]))
    interpolation = str(cfg.get("interpolation", "bilinear"))
    if interpolation not in ("nearest", "bilinear", "bicubic"):
        interpolation = "bilinear"
    return TeacherConfig(img_size=size, mean=fit_stats(cfg["mean"], chans), std=fit_stats(cfg["std"], chans),
                         interpolation=interpolation, in_chans=chans)
