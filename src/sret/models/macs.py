"""Parameter and multiply-accumulate counts, as the paper reports them.

The paper's "FLOPs" are fvcore's counts: one per multiply-accumulate of matmuls and convolutions, plus the
normalisation layers (BatchNorm in eval: 1 per element, 2 with affine; LayerNorm: 5 per element with affine,
4 without). Nothing else (softmax, GELU, residual adds, gathers) is counted. We count with PyTorch's own
``torch.utils.flop_counter.FlopCounterMode`` (which sees fused attention as two matmuls) and add the norm rules that
it lacks; matmul FLOPs are halved to MACs.

CLI: ``sret macs --model sret_t [--img-size 224]``.
"""

from __future__ import annotations

import argparse
from math import prod
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _batch_norm_eval(input_shape: Sequence[int], weight_shape: Optional[Sequence[int]], *args: Any, **kw: Any) -> int:
    return prod(input_shape) * (2 if weight_shape is not None else 1)


def _layer_norm(input_shape: Sequence[int], normalized_shape: Any, weight_shape: Optional[Sequence[int]] = None,
                *args: Any, **kw: Any) -> int:
    return prod(input_shape) * (5 if weight_shape is not None else 4)


def _shape_of(fn):
    """FlopCounterMode passes shapes (tensors replaced by their shapes); norm rules need only these."""

    def rule(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return fn(*args, **kwargs)

    return rule


def _batch_norm(input_shape: Sequence[int], weight_shape: Optional[Sequence[int]], bias_shape: Any, mean_shape: Any,
                var_shape: Any, training: bool, *args: Any, **kw: Any) -> int:
    if training:  # fvcore counts a training-mode batch norm like a layer norm
        return _layer_norm(input_shape, None, weight_shape)
    return _batch_norm_eval(input_shape, weight_shape)


def _attention(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int], *args: Any, **kw: Any) -> int:
    """softmax(QK^T) V as two matmuls: ``B*H*Nq*Nk*D + B*H*Nq*Nk*Dv`` MACs (the softmax is not counted)."""
    *batch, nq, d = q_shape
    nk, dv = k_shape[-2], v_shape[-1]
    return prod(batch) * nq * nk * (d + dv)


# Ops FlopCounterMode misses (norms, the CPU attention kernel) -> MACs. FlopCounterMode reports everything in FLOPs,
# so these are doubled below and halved at the end.
_NORM_RULES = {
    aten._native_batch_norm_legit_no_training: _shape_of(_batch_norm_eval),
    aten.native_batch_norm: _shape_of(_batch_norm),
    aten._scaled_dot_product_flash_attention_for_cpu: _shape_of(_attention),
    aten.native_layer_norm: _shape_of(lambda x, shape, w=None, *a, **k: _layer_norm(x, shape, w)),
}


def _doubled(rule):
    def doubled(*args: Any, **kwargs: Any) -> int:
        return 2 * rule(*args, **kwargs)

    return doubled


def count_params(model: nn.Module) -> int:
    """Unique parameters (a shared recursive block counts once)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, img_size: Optional[int | tuple[int, int]] = None, in_chans: Optional[int] = None,
               batch_size: int = 1) -> int:
    """Multiply-accumulates of one forward pass per image, in eval mode, as fvcore (and the paper) count them.

    Args:
        model: Any model; SReT models default to their own ``img_size`` / ``in_chans``.
        img_size: Input size; int or (H, W).
        in_chans: Input channels.
        batch_size: Images in the counted batch; the result is divided by it.
    """
    size = img_size if img_size is not None else getattr(model, "img_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    chans = in_chans if in_chans is not None else getattr(model, "in_chans", 3)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    mapping = {op: _doubled(rule) for op, rule in _NORM_RULES.items()}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    try:
        with counter:
            model(torch.randn(batch_size, chans, *size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2 // batch_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="sret or timm model name")
    parser.add_argument("--img-size", type=int, default=None, help="input size (default: the model's)")
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    from sret.models.factory import create_model

    kwargs = {"in_chans": args.in_chans}
    if args.img_size:
        kwargs["img_size"] = args.img_size
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    model = create_model(args.model, **kwargs)
    macs = count_macs(model, args.img_size, args.in_chans)
    print(f"{args.model}: {count_params(model):,} params, {macs / 1e9:.3f} GMACs at {args.img_size or 'default'} px")
    return 0
