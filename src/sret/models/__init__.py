"""SReT models: the general class, its building blocks, and every registered variant."""

from sret.models.attention import SlicedGroupAttention, invert_permutation
from sret.models.blocks import NonLinearProjection, RecursiveBlock, ResidualCoefficient
from sret.models.factory import create_model, list_models
from sret.models.macs import count_macs, count_params
from sret.models.published import PUBLISHED_CONSTRUCTORS
from sret.models import recursive_vit  # noqa: F401  (registers vit_recursive_tiny with timm)
from sret.models.sret import SReT
from sret.models.stage import RecursiveStage
from sret.models.variants import VARIANTS, VariantInfo
from sret.models.weights import load_weights, read_state_dict, save_pretrained

__all__ = [
    "SReT", "RecursiveStage", "RecursiveBlock", "NonLinearProjection", "ResidualCoefficient", "SlicedGroupAttention",
    "invert_permutation", "create_model", "list_models", "count_macs", "count_params", "VARIANTS", "VariantInfo",
    "load_weights", "read_state_dict", "save_pretrained", "PUBLISHED_CONSTRUCTORS",
]
