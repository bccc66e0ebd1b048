"""``sret.create_model`` / ``sret.list_models``: timm's factory, with errors that name the model."""

from __future__ import annotations

from typing import Any, List

import timm
from torch import nn

from sret.errors import SReTError
from sret.models.variants import VARIANTS


def list_models(pattern: str = "sret_*") -> List[str]:
    """Registered SReT variants (timm's ``list_models`` filter syntax), in the paper's table order."""
    import fnmatch

    return [name for name in VARIANTS if fnmatch.fnmatch(name, pattern)]


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build an SReT variant (or any timm model) by name, with timm's usual kwargs.

    Args:
        name: ``sret_t``, ``sret_s_wo_slice``, ... (see :func:`list_models`), any timm model, or
            ``local-dir:PATH`` for a folder written by :func:`sret.save_pretrained`.
        pretrained: Load weights from a local file (``pretrained_cfg_overlay=dict(file=...)`` or ``$SRET_WEIGHTS``).
        **kwargs: ``num_classes``, ``in_chans``, ``img_size``, ``drop_rate``, ``drop_path_rate``, ``features_only``,
            and any :class:`~sret.models.sret.SReT` argument.
    """
    source, _, _ = name.partition(":")
    if source not in ("local-dir", "hf-hub") and not timm.is_model(name.split(".")[0]):
        close = timm.list_models(f"*{name.split('.')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else f"; SReT models: {', '.join(list_models())}"
        raise SReTError(f"unknown model {name!r}{hint}")
    return timm.create_model(name, pretrained=pretrained, **kwargs)
