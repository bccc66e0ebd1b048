"""Every SReT variant of the paper's table, registered with timm.

Each variant is a dict of :class:`~sret.models.sret.SReT` args; its paper metadata (row, params, GMACs, ImageNet
top-1, published file name) sits beside it in :data:`VARIANTS`, and its timm ``pretrained_cfg`` is generated from the
same table. ``pretrained=True`` loads from a local file only: ``pretrained_cfg_overlay=dict(file=PATH)``, or the
published file name inside ``$SRET_WEIGHTS`` (default ``~/.cache/sret``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from sret.errors import CheckpointError
from sret.models.sret import SReT
from sret.models.weights import (
    PUBLISHED_WEIGHTS_URL,
    WEIGHTS_ENV,
    checkpoint_filter_fn,
    default_weights_dir,
    load_weights,
)

# Architecture families (SPEC section 4). Sliced models use groups 8/4/1 (first pass) and 2/1/1 (recursive).
_T = dict(embed_dims=(64, 128, 256), num_heads=(2, 4, 8), mlp_ratio=3.6, nll_ratio=1.0)
_LT = dict(_T, mlp_ratio=4.0)
# keep_activations: the SReT-S family trains faster keeping what its backward would recompute (no 5 GiB bar there)
_S = dict(embed_dims=(126, 252, 504), num_heads=(3, 6, 12), mlp_ratio=3.0, nll_ratio=2.0, keep_activations=True)
_COMMON = dict(depths=(4, 10, 6), unique_blocks=(2, 5, 3))
_SLICED = dict(groups1=(8, 4, 1), groups2=(2, 1, 1), sliced=True)
_NO_SLICE = dict(sliced=False)


@dataclass(frozen=True)
class VariantInfo:
    """What the paper and the published release say about one variant (kept beside the weights)."""

    model_args: Dict[str, Any]
    paper_row: str
    img_size: int
    params: int
    gmacs: float
    top1: Optional[float]
    published_files: Tuple[str, ...] = ()
    constructors: Tuple[str, ...] = ()
    recipe: str = "DeiT recipe, 300 epochs, ImageNet-1K"
    extra: Dict[str, Any] = field(default_factory=dict)


_KD = "soft-label KD (MEAL V2 style), 300 epochs, ImageNet-1K"
VARIANTS: Dict[str, VariantInfo] = {
    "sret_t_wo_slice": VariantInfo(dict(_T, **_COMMON, **_NO_SLICE), "SReT_⋇T", 224, 4_755_979, 1.375, 76.1,
                                   ("SReT_T_wo_slice.pth",), ("SReT_T_wo_slice",)),
    "sret_t": VariantInfo(dict(_T, **_COMMON, **_SLICED), "SReT_T", 224, 4_755_979, 1.122, 76.0,
                          ("SReT_T.pth",), ("SReT_T",)),
    "sret_lt_wo_slice": VariantInfo(dict(_LT, **_COMMON, **_NO_SLICE), "SReT_⋇LT", 224, 4_988_024, 1.427, 76.8,
                                    ("SReT_LT_wo_slice.pth",), ("SReT_LT_wo_slice",)),
    "sret_lt": VariantInfo(dict(_LT, **_COMMON, **_SLICED), "SReT_LT [8-4-1,2-1-1]", 224, 4_988_024, 1.174, 76.7,
                           ("SReT_LT.pth",), ("SReT_LT",)),
    "sret_lt_16_14_1": VariantInfo(dict(_LT, **_COMMON, groups1=(16, 14, 1), groups2=(1, 1, 1), sliced=True),
                                   "SReT_LT [16-14-1,1-1-1]", 224, 4_988_024, 1.234, 76.6, (), ("SReT_LT_16_14_1",)),
    "sret_s_wo_slice": VariantInfo(dict(_S, **_COMMON, **_NO_SLICE), "SReT_⋇S", 224, 20_899_692, 4.690, 82.0,
                                   ("SReT_S_wo_slice.pth",), ("SReT_S_wo_slice",)),
    "sret_s": VariantInfo(dict(_S, **_COMMON, **_SLICED), "SReT_S", 224, 20_899_692, 4.191, 81.9,
                          ("SReT_S.pth",), ("SReT_S",)),
    "sret_t_wo_slice_distill": VariantInfo(dict(_T, **_COMMON, **_NO_SLICE), "SReT_⋇T_Distill", 224, 4_755_979, 1.375,
                                           77.7, ("SReT_T_wo_slice_distill.pth",), ("SReT_T_wo_slice_distill",), _KD),
    "sret_t_distill": VariantInfo(dict(_T, **_COMMON, **_SLICED), "SReT_T_Distill", 224, 4_755_979, 1.122, 77.6,
                                  ("SReT_T_distill.pth",), ("SReT_T_distill",), _KD),
    "sret_lt_wo_slice_distill": VariantInfo(dict(_LT, **_COMMON, **_NO_SLICE), "SReT_⋇LT_Distill", 224, 4_988_024,
                                            1.427, 77.9, ("SReT_LT_wo_slice_distill.pth",),
                                            ("SReT_LT_wo_slice_distill",), _KD),
    "sret_lt_distill": VariantInfo(dict(_LT, **_COMMON, **_SLICED), "SReT_LT_Distill", 224, 4_988_024, 1.174, 77.7,
                                   ("SReT_LT_distill.pth",), ("SReT_LT_distill",), _KD),
    "sret_t_wo_slice_distill_finetune_384": VariantInfo(
        dict(_T, **_COMMON, **_NO_SLICE), "SReT_⋇T_Distill_Finetune384", 384, 4_853_259, 6.435, 79.7,
        ("SReT_T_wo_slice_distill_fineture_384.pth", "SReT_T_wo_slice_fineture_384.pth",
         "SReT_T_wo_slice_distill_finetune_384.pth", "SReT_T_wo_slice_finetune_384.pth"),
        ("SReT_T_wo_slice_distill_finetune_384", "SReT_T_wo_slice_finetune_384"), _KD + ", then fine-tuned at 384 px"),
    "sret_s_wo_slice_distill_finetune_384": VariantInfo(
        dict(_S, **_COMMON, **_NO_SLICE), "SReT_⋇S_Distill_Finetune384", 384, 21_091_212, 18.497, 83.8,
        ("SReT_S_wo_slice_fineture_384.pth", "SReT_S_wo_slice_distill_fineture_384.pth",
         "SReT_S_wo_slice_finetune_384.pth", "SReT_S_wo_slice_distill_finetune_384.pth"),
        ("SReT_S_wo_slice_distill_finetune_384", "SReT_S_wo_slice_finetune_384"), _KD + ", then fine-tuned at 384 px"),
    "sret_s_wo_slice_distill_finetune_512": VariantInfo(
        dict(_S, **_COMMON, **_NO_SLICE), "SReT_⋇S_Distill_Finetune512", 512, 21_317_004, 42.767, 84.3,
        ("SReT_S_wo_slice_fineture_512.pth", "SReT_S_wo_slice_distill_fineture_512.pth",
         "SReT_S_wo_slice_finetune_512.pth", "SReT_S_wo_slice_distill_finetune_512.pth"),
        ("SReT_S_wo_slice_distill_finetune_512", "SReT_S_wo_slice_finetune_512"), _KD + ", then fine-tuned at 512 px"),
    "sret_s_distill": VariantInfo(dict(_S, **_COMMON, **_SLICED), "(published code only)", 224, 20_899_692, 4.191,
                                  None, ("SReT_S_distill.pth",), ("SReT_S_distill",), _KD),
}


def _cfg(name: str, info: VariantInfo) -> Dict[str, Any]:
    size = info.img_size
    return {
        "num_classes": 1000,
        "input_size": (3, size, size),
        "pool_size": (size // 32, size // 32),
        "crop_pct": 0.875 if size == 224 else 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.conv1",
        "classifier": "head",
        # Weights are never downloaded: a local file is resolved in _create_sret and loaded by SReT.load_pretrained.
        "custom_load": True,
        "paper_ids": "arXiv:2111.05297",
        "paper_name": "Sliced Recursive Transformer",
        "origin_url": "https://github.com/szq0214/SReT",
        "license": "unknown (see the published repository)",
        "notes": (f"paper row {info.paper_row}; {info.params:,} params; {info.gmacs} GMACs at {size} px; "
                  f"ImageNet-1K top-1 {info.top1}; {info.recipe}",),
    }


default_cfgs = generate_default_cfgs({f"{name}.in1k": _cfg(name, info) for name, info in VARIANTS.items()})


def find_published_file(name: str) -> Optional[str]:
    """Path of the published checkpoint of ``name`` in the weights directory, or None."""
    directory = default_weights_dir()
    for file_name in VARIANTS[name].published_files:
        candidate = directory / file_name
        if candidate.is_file():
            return str(candidate)
    return None


def _create_sret(name: str, pretrained: bool = False, **kwargs: Any) -> SReT:
    info = VARIANTS[name]
    model_args = dict(info.model_args, img_size=info.img_size)
    model_args.update(kwargs)
    given_cfg = model_args.get("pretrained_cfg")
    given_cfg = given_cfg if isinstance(given_cfg, dict) else getattr(given_cfg, "__dict__", {})
    if pretrained and not (given_cfg.get("file") or given_cfg.get("state_dict")):  # local-dir: timm has the file
        overlay = dict(model_args.pop("pretrained_cfg_overlay", None) or {})
        if not overlay.get("file") and not overlay.get("state_dict"):
            found = find_published_file(name)
            if found is None:
                where = default_weights_dir()
                names = " or ".join(info.published_files) or "(none: this variant has no published checkpoint)"
                raise CheckpointError(
                    f"pretrained weights for {name}: {names} not found in {where} (set ${WEIGHTS_ENV} to the folder "
                    f"holding the published .pth files, which you get from {PUBLISHED_WEIGHTS_URL}, or pass "
                    f"pretrained_cfg_overlay=dict(file=PATH))"
                )
            overlay["file"] = found
        # timm resets custom_load when a file is supplied; our loader is the one that reads published .pth safely.
        overlay.setdefault("custom_load", True)
        model_args["pretrained_cfg_overlay"] = overlay
    return build_model_with_cfg(
        SReT,
        name,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2)),
        **model_args,
    )


def _load_pretrained(self: SReT, path: str) -> None:
    """timm's ``custom_load`` hook: safe, adapting load of a local checkpoint file."""
    load_weights(self, path, strict=True)


SReT.load_pretrained = _load_pretrained  # type: ignore[attr-defined]


@register_model
def sret_t_wo_slice(pretrained: bool = False, **kwargs: Any) -> SReT:
    """SReT-T without slicing (global attention in every application): 4.76M params, 1.375 GMACs."""
    return _create_sret("sret_t_wo_slice", pretrained, **kwargs)


@register_model
def sret_t(pretrained: bool = False, **kwargs: Any) -> SReT:
    """SReT-T, groups 8-4-1 / 2-1-1: 4.76M params, 1.122 GMACs, 76.0 top-1."""
    return _create_sret("sret_t", pretrained, **kwargs)


@register_model
def sret_lt_wo_slice(pretrained: bool = False, **kwargs: Any) -> SReT:
    """SReT-LT (T with MLP ratio 4) without slicing: 4.99M params, 1.427 GMACs."""
    return _create_sret("sret_lt_wo_slice", pretrained, **kwargs)


@register_model
def sret_lt(pretrained: bool = False, **kwargs: Any) -> SReT:
    """SReT-LT, groups 8-4-1 / 2-1-1: 4.99M params, 1.174 GMACs."""
    return _create_sret("sret_lt", pretrained, **kwargs)


@register_model
def sret_lt_16_14_1(pretrained: bool = False, **kwargs: Any) -> SReT:
    """SReT-LT with the paper's [16-14-1, 1-1-1] grouping (no shuffled pass): 1.234 GMACs."""
    return _create_sret("sret_lt_16_14_1", pretrained, **kwargs)


@register_model
def sret_s_wo_slice(pretrained: bool = False, **kwargs: Any) -> SReT:
    """SReT-S without slicing: 20.9M params, 4.690 GMACs."""
    return _create_sret("sret_s_wo_slice", pretrained, **kwargs)


@register_model
def sret_s(pretrained: bool = False, **kwargs: Any) -> SReT:
    """SReT-S, groups 8-4-1 / 2-1-1: 20.9M params, 4.191 GMACs, 81.9 top-1."""
    return _create_sret("sret_s", pretrained, **kwargs)


@register_model
def sret_t_wo_slice_distill(pretrained: bool = False, **kwargs: Any) -> SReT:
    """SReT-T without slicing, weights trained with soft-label KD (architecture of sret_t_wo_slice)."""
    return _create_sret("sret_t_wo_slice_distill", pretrained, **kwargs)


@register_model
def sret_t_distill(pretrained: bool = False, **kwargs: Any) -> SReT:
    """SReT-T, weights trained with soft-label KD (architecture of sret_t)."""
    return _create_sret("sret_t_distill", pretrained, **kwargs)


@register_model
def sret_lt_wo_slice_distill(pretrained: bool = False, **kwargs: Any) -> SReT:
    """SReT-LT without slicing, weights trained with soft-label KD."""
    return _create_sret("sret_lt_wo_slice_distill", pretrained, **kwargs)


@register_model
def sret_lt_distill(pretrained: bool = False, **kwargs: Any) -> SReT:
    """SReT-LT, weights trained with soft-label KD."""
    return _create_sret("sret_lt_distill", pretrained, **kwargs)


@register_model
def sret_t_wo_slice_distill_finetune_384(pretrained: bool = False, **kwargs: Any) -> SReT:
    """SReT-T without slicing, KD weights fine-tuned at 384 px (48x48 pos_embed): 6.435 GMACs."""
    return _create_sret("sret_t_wo_slice_distill_finetune_384", pretrained, **kwargs)


@register_model
def sret_s_wo_slice_distill_finetune_384(pretrained: bool = False, **kwargs: Any) -> SReT:
    """SReT-S without slicing, KD weights fine-tuned at 384 px: 18.497 GMACs, 83.8 top-1."""
    return _create_sret("sret_s_wo_slice_distill_finetune_384", pretrained, **kwargs)


@register_model
def sret_s_wo_slice_distill_finetune_512(pretrained: bool = False, **kwargs: Any) -> SReT:
    """SReT-S without slicing, KD weights fine-tuned at 512 px: 42.767 GMACs, 84.3 top-1."""
    return _create_sret("sret_s_wo_slice_distill_finetune_512", pretrained, **kwargs)


@register_model
def sret_s_distill(pretrained: bool = False, **kwargs: Any) -> SReT:
    """SReT-S with KD weights; in the published code, not in the paper's table."""
    return _create_sret("sret_s_distill", pretrained, **kwargs)
