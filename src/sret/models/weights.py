"""Reading, adapting and writing SReT weights safely.

Everything is loaded with ``torch.load(weights_only=True)`` or safetensors: a checkpoint downloaded from the internet
can never execute code here. Every failure is a :class:`sret.errors.CheckpointError` that names the file and says what
is wrong with it (missing, truncated, not a checkpoint, another architecture).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

from sret.errors import CheckpointError
from sret.models.sret import resample_pos_embed

StateDict = Dict[str, torch.Tensor]
PathLike = Union[str, os.PathLike]

WEIGHTS_ENV = "SRET_WEIGHTS"
PUBLISHED_WEIGHTS_URL = "https://github.com/szq0214/SReT (README: 'Pre-trained models' links)"
# Checkpoint containers the published code and common trainers use, in the order they are looked for.
_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "module")


def default_weights_dir() -> Path:
    """Where published checkpoints are looked for: ``$SRET_WEIGHTS``, else ``~/.cache/sret``."""
    return Path(os.environ.get(WEIGHTS_ENV, Path.home() / ".cache" / "sret")).expanduser()


def _load_file(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a directory; pass the .pth/.safetensors file inside it")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path}: not a readable safetensors file ({err})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path}: refused to load; it holds objects other than tensors and plain containers, and "
            f"loading them would run code from the file ({first})"
        ) from None
    except Exception as err:  # noqa: BLE001 - any failure to parse a damaged file is the same user error
        size = path.stat().st_size
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path}: cannot be read as a PyTorch checkpoint ({size} bytes; truncated or corrupt "
            f"download?): {first}"
        ) from None


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> StateDict:
    """Find the weights in a loaded checkpoint: ``{'model': sd}``, ``{'state_dict': sd}``, a bare state dict.

    ``module.`` prefixes (DataParallel / DDP) are removed.
    """
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__
        keys = list(obj.keys())[:5] if isinstance(obj, Mapping) else []
        raise CheckpointError(
            f"{source}: holds no state dict (a {kind}{' with keys ' + str(keys) if keys else ''}); expected "
            f"{{'model': state_dict}}, {{'state_dict': state_dict}} or a bare state dict of tensors"
        )
    out: StateDict = {}
    for k, v in obj.items():
        while k.startswith("module."):
            k = k[len("module.") :]
        out[k] = v
    return out


def read_state_dict(path: PathLike) -> StateDict:
    """Load the weights stored in ``path`` (``.pth``/``.pt``/``.bin``/``.safetensors``), safely."""
    path = Path(path).expanduser()
    return unwrap_state_dict(_load_file(path), source=f"checkpoint {path}")


def _shared_aliases(model: nn.Module) -> Dict[str, str]:
    """Map each state-dict key to the first key naming the same tensor (shared recursive blocks)."""
    first: Dict[int, str] = {}
    aliases: Dict[str, str] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        key = id(v)
        if key in first:
            aliases[k] = first[key]
        else:
            first[key] = k
    return aliases


def adapt_state_dict(state_dict: StateDict, model: nn.Module, source: str = "checkpoint") -> StateDict:
    """Make a checkpoint's weights fit ``model`` where that is well defined, and explain where it is not.

    - shared blocks: a file that stores a shared block once (deduplicated safetensors) gets its other names filled
      in; a file whose two copies of one shared block differ is refused, since it cannot be a recursive model;
    - ``pos_embed`` on another grid is resampled (224-px weights into a 384-px model);
    - a classifier of another size is dropped (the model keeps its freshly initialised head).
    """
    state_dict = dict(state_dict)
    aliases = _shared_aliases(model)
    for key, target in aliases.items():
        if key in state_dict and target in state_dict:
            a, b = state_dict[key], state_dict[target]
            if a.shape == b.shape and not torch.equal(a, b):
                raise CheckpointError(
                    f"{source}: {key} and {target} are one shared block in this model, but the file stores different "
                    f"values for them; it was not saved from a recursive SReT of this configuration"
                )
        elif target in state_dict:
            state_dict[key] = state_dict[target]
    own = model.state_dict()
    pos = state_dict.get("pos_embed")
    if pos is not None and "pos_embed" in own and pos.dim() == 4 and pos.shape[:2] == own["pos_embed"].shape[:2]:
        state_dict["pos_embed"] = resample_pos_embed(pos, tuple(own["pos_embed"].shape[-2:]))
    for name in ("head.weight", "head.bias"):
        if name in state_dict and (name not in own or state_dict[name].shape != own[name].shape):
            del state_dict[name]
    return state_dict


def checkpoint_filter_fn(state_dict: StateDict, model: nn.Module) -> StateDict:
    """timm ``pretrained_filter_fn``: used by ``local-dir:`` / hub-format folders."""
    return adapt_state_dict(unwrap_state_dict(state_dict), model)


def load_weights(
    model: nn.Module, checkpoint: Union[PathLike, Mapping[str, Any]], strict: bool = True
) -> nn.Module:
    """Load a checkpoint (path or already-loaded dict) into ``model``, adapting grid and head as needed.

    Args:
        model: An SReT (or any timm) model.
        checkpoint: File path, or a loaded checkpoint / state dict.
        strict: Refuse missing or unexpected keys (a dropped head is never counted as missing).

    Raises:
        CheckpointError: missing/corrupt file, or weights of another architecture (names the offending keys).
    """
    if isinstance(checkpoint, Mapping):
        source = "checkpoint"
        state_dict = unwrap_state_dict(checkpoint, source)
    else:
        source = f"checkpoint {Path(checkpoint).expanduser()}"
        state_dict = read_state_dict(checkpoint)
    state_dict = adapt_state_dict(state_dict, model, source)
    own = model.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in state_dict and not k.startswith("head.")]
    unexpected = [k for k in state_dict if k not in own]
    arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    if mismatched or (strict and (missing or unexpected)):
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (first: {mismatched[0]})")
        if strict and missing:
            parts.append(f"{len(missing)} keys missing from the file (first: {missing[0]})")
        if strict and unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        raise CheckpointError(f"{source} does not fit {arch}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=False)
    return model


def save_pretrained(model: nn.Module, directory: PathLike, model_args: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model`` as a timm hub-format folder (``config.json`` + ``model.safetensors``).

    Reload it with ``timm.create_model("local-dir:DIR")`` (after ``import sret``). Every state-dict name is written,
    shared blocks included (as separate copies), so the file has the published layout. Both files are written to
    temporary names and renamed, so an interrupted save never leaves a half-written model behind.
    """
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    tmp_weights = directory / "model.safetensors.tmp"
    save_file(tensors, str(tmp_weights), metadata={"format": "pt"})
    tmp_config = directory / "config.json.tmp"
    save_config_for_hf(model, str(tmp_config), model_args=model_args)
    os.replace(tmp_weights, directory / "model.safetensors")
    os.replace(tmp_config, directory / "config.json")
    return directory
