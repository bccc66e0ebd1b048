"""The published code's constructors, so ``import sret as SReT`` is a drop-in for its users.

``SReT.SReT_S(pretrained=False)`` builds the same model as ``timm.create_model("sret_s")``; with
``pretrained=True`` the published ``.pth`` is read from ``$SRET_WEIGHTS`` (see :mod:`sret.models.variants`).
Unlike the published code, every row of the table has a constructor and ``SReT_T_wo_slice`` works.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from sret.models.sret import SReT
from sret.models.variants import VARIANTS, _create_sret


def _make_constructor(variant: str, public_name: str) -> Callable[..., SReT]:
    def constructor(pretrained: bool = False, **kwargs: Any) -> SReT:
        return _create_sret(variant, pretrained, **kwargs)

    constructor.__name__ = constructor.__qualname__ = public_name
    constructor.__doc__ = f"Published-code name of ``{variant}`` ({VARIANTS[variant].paper_row})."
    return constructor


PUBLISHED_CONSTRUCTORS: Dict[str, Callable[..., SReT]] = {
    public: _make_constructor(variant, public) for variant, info in VARIANTS.items() for public in info.constructors
}
globals().update(PUBLISHED_CONSTRUCTORS)
__all__ = sorted(PUBLISHED_CONSTRUCTORS)
