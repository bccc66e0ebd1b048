"""Model construction for the commands: timm's registry (with the SReT family registered) plus clear errors."""

from __future__ import annotations

import difflib
from typing import Any

import timm
from torch import nn

from sret.errors import SReTError


def check_model_name(name: str) -> None:
    """Raise :class:`SReTError` with close matches if ``name`` is not a registered timm model."""
    import sret  # noqa: F401  (registers the SReT variants with timm)

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `sret models` lists the SReT variants"
    raise SReTError(f"unknown model {name!r}{hint}")


def build_model(
    name: str,
    num_classes: int,
    in_chans: int,
    img_size: int | None,
    drop_path_rate: float | None = None,
    drop_rate: float = 0.0,
    pretrained: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """``timm.create_model`` with the run's shape arguments.

    ``img_size`` is passed only to models that take it (SReT and ViTs build their position embedding for it; CNNs
    such as ResNets do not accept it), which is decided by trying, since timm's entry points take ``**kwargs``.
    """
    check_model_name(name)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    kwargs.update(model_kwargs or {})
    try:
        if img_size is not None:
            try:
                return timm.create_model(name, pretrained=pretrained, img_size=img_size, **kwargs)
            except TypeError as err:
                if "img_size" not in str(err):
                    raise
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise SReTError(f"cannot build {name} (num_classes={num_classes}, in_chans={in_chans}, "
                        f"img_size={img_size}): {err}") from err


def default_drop_path(name: str) -> float:
    """The SReT recipe's stochastic depth: 0.2 for the S models, 0.1 otherwise (T, LT and other models)."""
    return 0.2 if name.startswith("sret_s") else 0.1
