"""Sliced Recursive Transformer (SReT, ECCV 2022) for PyTorch and timm.

``import sret`` registers every variant with timm (``timm.create_model("sret_t")``) and exposes the published code's
constructors (``sret.SReT_T(pretrained=False)``), so ``import sret as SReT`` is a drop-in for its users.
"""

from sret.errors import CheckpointError, SReTError
from sret.models import (
    VARIANTS,
    SReT,
    count_macs,
    count_params,
    create_model,
    list_models,
    load_weights,
    read_state_dict,
    save_pretrained,
)
from sret.models.published import *  # noqa: F401,F403  (SReT_T, SReT_LT, SReT_S, ...)
from sret.models.published import PUBLISHED_CONSTRUCTORS

__version__ = "0.1.0"


def __getattr__(name: str):
    # KDLoss lives with the training code; imported on first use so `import sret` stays light.
    if name == "KDLoss":
        from sret.train.losses import KDLoss

        return KDLoss
    raise AttributeError(f"module 'sret' has no attribute {name!r}")


__all__ = [
    "SReT", "create_model", "list_models", "count_macs", "count_params", "load_weights", "read_state_dict",
    "save_pretrained", "VARIANTS", "SReTError", "CheckpointError", "KDLoss", *PUBLISHED_CONSTRUCTORS,
]
