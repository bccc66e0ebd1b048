"""A DeiT-style plain ViT with naive recursion, for the paper's recursion ablation.

The paper's first claim is about recursion itself, on a plain transformer: apply each block L times in a row (same
weights, no NLL, plain residual) and accuracy rises at equal parameters. timm's ``VisionTransformer`` is used as is;
recursion is nothing more than listing each block module L times in its ``blocks`` sequence, so ``loops=1`` is exactly
timm's model and ``loops=2`` shares every block across two consecutive depths.
"""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sret.errors import SReTError


def _recursive_vit(loops: int = 1, **kwargs: Any) -> VisionTransformer:
    if loops < 1:
        raise SReTError(f"loops must be >= 1, got {loops}")
    model = VisionTransformer(**kwargs)
    if loops > 1:
        model.blocks = nn.Sequential(*[block for block in model.blocks for _ in range(loops)])
    model.loops = loops
    return model


default_cfgs = generate_default_cfgs({
    "vit_recursive_tiny.untrained": dict(num_classes=1000, input_size=(3, 224, 224), mean=IMAGENET_DEFAULT_MEAN,
                                         std=IMAGENET_DEFAULT_STD, first_conv="patch_embed.proj", classifier="head"),
})


@register_model
def vit_recursive_tiny(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """DeiT-Tiny-like (192 dims, 3 heads, 6 unique blocks by default) with each block applied ``loops`` times.

    Only for ablations (no pretrained weights). ``depth`` counts unique blocks.
    """
    if pretrained:
        raise SReTError("vit_recursive_tiny is an ablation model and has no pretrained weights")
    args = dict(patch_size=8, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0, class_token=True,
                global_pool="token")
    args.update(kwargs)
    return build_model_with_cfg(_recursive_vit, "vit_recursive_tiny", False, **args)
