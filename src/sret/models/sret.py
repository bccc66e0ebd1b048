"""Sliced Recursive Transformer (SReT).

Paper: "Sliced Recursive Transformer", Zhiqiang Shen, Zechun Liu, Eric Xing, ECCV 2022 (arXiv:2111.05297).

One general class, :class:`SReT`, expresses every published variant and the paper's ablations (loops, unique blocks,
groups, NLL on/off, learnable residual coefficients on/off, slicing on/off). Variants are short configs registered
with timm in :mod:`sret.models.variants`.

Layout (SReT-T at 224 px): conv stem, stride 8 -> 28x28x64 + pos_embed -> stage 0 (28x28x64) -> depthwise pool ->
stage 1 (14x14x128) -> pool -> stage 2 (7x7x256) -> global average pool -> LayerNorm -> Linear.
"""

from __future__ import annotations

import os

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models._features import feature_take_indices
from torch import nn

from sret.errors import SReTError
from sret.models import batchnorm_kernels, fused, image_layout, pool_kernels, stem_conv
from sret.models.attention import AttnImpl
from sret.models.blocks import NonLinearProjection, RecursiveBlock
from sret.models.stage import EvalPermutation, RecursiveStage

__all__ = ["SReT", "ConvStem", "DepthwisePool", "resample_pos_embed", "stem_grid"]


class _ChannelsLastPosAdd(torch.autograd.Function):
    """``x + pos`` for a channels-last stem map ``x`` (B, C, H, W) and ``pos`` (1, C, H, W), in x's memory order.

    Why: autograd's own add read ``pos`` across x's layout (a strided, unvectorised pass) and summed its gradient over
    the batch of a channels-last gradient into an NCHW result, ~5x what the bytes take; on an H100 at SReT-T's batch
    256 the two took ~70 and ~120 us of a ~25 ms training step (docs/perf_notes.md, change 50). Here ``pos`` is made
    channels-last first (200 KB) and its gradient is the column sum of the gradient viewed as (B, H * W * C) rows. The
    values are the add's; ``pos``'s gradient is summed in another order.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x + pos.contiguous(memory_format=torch.channels_last)  # (B, C, H, W), channels-last

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        B, C, H, W = g.shape
        g = g.contiguous(memory_format=torch.channels_last)  # a no-op for the stage's token gradient
        dpos = None
        if ctx.needs_input_grad[1]:
            rows = g.permute(0, 2, 3, 1).reshape(B, H * W * C)  # (B, H*W*C): a view of the channels-last memory
            dpos = rows.sum(0).view(1, H, W, C).permute(0, 3, 1, 2).contiguous()  # (1, C, H, W), as the parameter
        return g, dpos


def stem_grid(height: int, width: int, num_halvings: int = 3) -> Tuple[int, int]:
    """Grid after ``num_halvings`` stride-2, padding-1, kernel-3 convolutions: ``ceil`` at each step."""
    for _ in range(num_halvings):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


def resample_pos_embed(pos_embed: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resize a ``(1, C, H, W)`` position embedding to ``size`` (bicubic), e.g. 28x28 (224 px) -> 48x48 (384 px)."""
    if tuple(pos_embed.shape[-2:]) == tuple(size):
        return pos_embed
    dtype = pos_embed.dtype
    out = F.interpolate(pos_embed.float(), size=size, mode="bicubic", align_corners=False)
    return out.to(dtype)


class ConvStem(nn.Module):
    """Three 3x3 stride-2 conv-BN-ReLU layers, ``in_chans -> C/2 -> C -> C``: total stride 8."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        mid = embed_dim // 2
        self.conv1 = nn.Conv2d(in_chans, mid, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, embed_dim, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(embed_dim)
        self.conv3 = nn.Conv2d(embed_dim, embed_dim, 3, stride=2, padding=1)
        self.bn3 = nn.BatchNorm2d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = None  # the first conv's output where the Triton kernels made it
        if x.is_cuda and (os.environ.get("SRET_STEM_NHWC_COMPILED") == "1" or not torch.compiler.is_compiling()):
            # NHWC on CUDA in eager mode (Inductor picks its own layouts; NHWC measured slower there): cuDNN's
            # channels-last conv and BatchNorm kernels are what make the stem cheap (its bf16
            # NCHW BatchNorm backward alone was ~8 ms of a 95 ms SReT-T training step at batch 256 on an H100; stem
            # forward + backward 16.9 -> 6.1 ms). The output stays channels-last, which is also exactly the memory
            # order of the (B, N, C) tokens the stages work on, so the token view after it needs no copy.
            if not self.training and not torch.is_grad_enabled() and fused.fused_enabled():
                return self._forward_folded(x)
            # training: the first conv as Triton kernels straight from the NCHW images (stem_conv.py), else cuDNN's
            if fused.fused_enabled() and self.bn1.training:
                # (B, C/2 + pad, H/2, W/2), no bias; the map carried at a multiple of 8 channels (_aligned)
                y = stem_conv.first_conv(x, self.conv1, fused.compute_dtype(x), _aligned(self.conv1.out_channels))
            if y is None:
                if fused.fused_enabled() and _stem_pad(x.shape[1]):
                    x = _padded_input(x, fused.compute_dtype(x))  # (B, C_in + pad, H, W), channels-last
                else:
                    x = x.contiguous(memory_format=torch.channels_last)
        if y is not None:
            x = self._bn_relu(y, self.conv1, self.bn1, kernels=True)  # (B, C/2 (+ pad), H/2, W/2)
        else:
            x = self._conv_bn_relu(x, self.conv1, self.bn1)  # (B, C/2, H/2, W/2)
        x = self._conv_bn_relu(x, self.conv2, self.bn2, aligned=True)  # (B, C (+ pad), H/4, W/4)
        return self._conv_bn_relu(x, self.conv3, self.bn3)  # (B, C, H/8, W/8)

    @staticmethod
    def _conv_bn_relu(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, aligned: bool = False) -> torch.Tensor:
        """``relu(bn(conv(x)))``; in eager training on CUDA the BatchNorm + ReLU are two Triton passes each way
        (``batchnorm_kernels.py``), and the conv runs without its bias, which batch statistics cancel (the kernels
        move the running mean by it instead): no bias add over the conv output, no bias-gradient reduction. There,
        with ``aligned``, the output is carried at a multiple of 8 channels (:func:`_aligned`)."""
        kernels = x.is_cuda and fused.fused_enabled() and bn.training
        out_channels = _aligned(conv.out_channels) if kernels and aligned else conv.out_channels
        return ConvStem._bn_relu(ConvStem._conv(x, conv, bias=not kernels, out_channels=out_channels), conv, bn,
                                 kernels)

    @staticmethod
    def _bn_relu(y: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, kernels: bool) -> torch.Tensor:
        """``relu(bn(y + conv.bias))`` for a conv output ``y``, which lacks the conv's bias where ``kernels`` and may
        then carry zero channels past the BatchNorm's (kept by the kernels, dropped by the fallback)."""
        if kernels:
            out = batchnorm_kernels.batch_norm_relu(y, bn, shift=conv.bias)
            if out is not None:
                return out
            y = y[:, :bn.num_features]  # the kernels declined: without the zero channels
            if conv.bias is not None:  # the bias as the conv adds it (in its output dtype)
                y = y + conv.bias.to(y.dtype).view(1, -1, 1, 1)
        return F.relu(bn(y))

    @staticmethod
    def _conv(x: torch.Tensor, conv: nn.Conv2d, bias: bool = True, out_channels: Optional[int] = None) -> torch.Tensor:
        """``conv(x)`` (without its bias if ``bias`` is False), also over images or maps carrying zero channels (see
        :func:`_stem_pad`, :func:`_aligned`): zero weights there; ``out_channels`` (>= C_out) appends zero output
        channels (zero weights, no bias). Those cases call ``F.conv2d`` directly, so the conv module's forward hooks
        do not see them (eager CUDA training with the fused kernels)."""
        extra = x.shape[1] - conv.in_channels
        extra_out = (out_channels or conv.out_channels) - conv.out_channels
        if extra == 0 and extra_out == 0 and bias:
            return conv(x)  # the module itself: its hooks run as they did
        w = conv.weight if extra == 0 else F.pad(conv.weight, (0, 0, 0, 0, 0, extra))  # (C_out, C_in + extra, 3, 3)
        if extra_out:
            if bias:
                raise ValueError("ConvStem._conv: zero output channels only without the bias")
            w = F.pad(w, (0, 0, 0, 0, 0, 0, 0, extra_out))  # (C_out + extra_out, C_in', 3, 3)
        return F.conv2d(x, w, conv.bias if bias else None, conv.stride, conv.padding)

    def folded(self) -> List[Tuple[torch.Tensor, torch.Tensor, nn.Conv2d]]:
        """Each conv with its eval-mode BatchNorm folded in, computed in float32 (or the weights' wider dtype).

        ``BN(conv(x) + b) = conv(x) * s + (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``: the conv
        weight scaled per output channel, and one bias. Only valid with running statistics (eval mode).
        """
        out = []
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            dtype = torch.promote_types(conv.weight.dtype, torch.float32)
            s = bn.weight.to(dtype) * torch.rsqrt(bn.running_var.to(dtype) + bn.eps)  # (C_out,)
            w = conv.weight.to(dtype) * s[:, None, None, None]  # (C_out, C_in, 3, 3)
            b = (conv.bias.to(dtype) - bn.running_mean.to(dtype)) * s + bn.bias.to(dtype)
            out.append((w, b, conv))
        return out

    def _forward_folded(self, x: torch.Tensor, fused_relu: bool = True) -> torch.Tensor:
        """Inference on CUDA: three conv + bias + ReLU launches instead of conv, bias add, BatchNorm and ReLU each.

        Why: at 224 px the stem's first maps are the largest tensors of the model (B x 112 x 112 x C/2), and in
        eval every extra elementwise pass over them (the conv's separate bias add, the BatchNorm transform, the
        ReLU) is a full read and write of memory. The first layer is one Triton launch that reads the float32 NCHW
        images (``stem_conv.first_conv_folded``); the others, and the first where that kernel does not apply (after
        one copy for the cast and the layout), are cuDNN's fused conv-bias-ReLU (``torch.cudnn_convolution_relu``).
        The maps between the convs are carried at multiples of 8 channels (:func:`_aligned_channels`). The result
        equals the unfused layers up to the rounding of the folded weights in the compute dtype. ``fused_relu=False``
        (and any device or dtype cuDNN refuses) runs ``conv2d`` and ``relu`` separately.
        """
        dtype = fused.compute_dtype(x)
        layers = _aligned_channels(self.folded())
        with torch.autocast(x.device.type, enabled=False):
            w, b, conv = layers[0]
            # The first conv as the Triton kernel that reads the float32 NCHW images (stem_conv.py); else one copy
            # for layout and cast, and cuDNN. No zero input channels for cuDNN here, unlike training: in inference
            # its first conv took as long over 8 channels as over 3 (0.51 ms at batch 256 on an H100), so the
            # padding pass was pure cost (docs/perf_notes.md, run 14).
            y = stem_conv.first_conv_folded(x, w, b, conv, dtype) if fused_relu else None
            if y is None:
                y = x.to(dtype, memory_format=torch.channels_last)  # (B, C, H, W)
                layers = [(w, b, conv)] + layers[1:]
            else:
                layers = layers[1:]
            for w, b, conv in layers:
                w = w.to(dtype).contiguous(memory_format=torch.channels_last)
                y = _conv_bias_relu(y, w, b.to(dtype), conv, fused_relu)  # (B, C_out, ceil(H/2), ceil(W/2))
        return y


_CUDNN_CONV_RELU_FAILED: set = set()


def _aligned(channels: int) -> int:
    """``channels`` rounded up to a multiple of 8: the width a map between two stem convs is carried at (bf16 rows
    16-byte aligned). cuDNN pads a bf16 NHWC map of 63 or 126 channels (SReT-S) in passes of its own, ~0.2 ms a call
    at batch 256 on an H100: 1.75 ms of SReT-S's inference step, 4.0 ms of its training step (docs/perf_notes.md,
    change 53). The added channels are zeros (zero weights, and no bias or a zero one) and stay zeros through the
    BatchNorm + ReLU; the next conv has zero weights there. The same rounding as the token rows' widths
    (``fused.aligned_width``)."""
    return fused.aligned_width(channels)


def _aligned_channels(layers: List[Tuple[torch.Tensor, torch.Tensor, nn.Conv2d]]):
    """The folded stem's layers with every map between two convs carried at :func:`_aligned` channels: zero output
    channels (zero weights and bias: ReLU keeps them 0) and zero input columns in the next conv's weight. The values
    are the same."""
    out, extra_in = [], 0
    for i, (w, b, conv) in enumerate(layers):
        if extra_in:
            w = F.pad(w, (0, 0, 0, 0, 0, extra_in))  # (C_out, C_in + extra_in, 3, 3)
        extra_out = _aligned(w.shape[0]) - w.shape[0] if i < len(layers) - 1 else 0
        if extra_out:
            w = F.pad(w, (0, 0, 0, 0, 0, 0, 0, extra_out))  # (C_out + extra_out, C_in', 3, 3)
            b = F.pad(b, (0, extra_out))
        out.append((w, b, conv))
        extra_in = extra_out
    return out


def _stem_pad(in_chans: int) -> int:
    """Zero channels to add to the images before the first conv (CUDA eager training): up to a multiple of 8.

    Why: with 3 input channels (6-byte bf16 pixels) cuDNN runs the first conv with a generic NHWC kernel; on an H100
    at batch 256 it took ~0.5 ms forward for a layer that moves ~0.3 GB. Eight channels give 16-byte pixels that its
    implicit-GEMM kernels take; measured, the training step gained 0.6-0.9 % (docs/perf_notes.md, run 14).
    ``SRET_STEM_PAD=0`` switches this off.
    """
    if os.environ.get("SRET_STEM_PAD", "1") == "0":
        return 0
    return -in_chans % 8


def _padded_input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Images ``(B, C, H, W)`` as ``dtype``, channels-last, with ``_stem_pad(C)`` zero channels appended."""
    B, C, H, W = x.shape
    out = image_layout.padded_nhwc(x, C + _stem_pad(C), dtype)  # one Triton pass where it applies
    if out is not None:
        return out
    out = x.new_zeros((B, H, W, C + _stem_pad(C)), dtype=dtype)  # (B, H, W, C'), NHWC memory
    out[..., :C] = x.permute(0, 2, 3, 1)  # one strided read of the images, cast on the way
    return out.permute(0, 3, 1, 2)  # (B, C', H, W) view, channels-last strides


def _conv_bias_relu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, conv: nn.Conv2d, fused_relu: bool):
    """``relu(conv2d(x, w, b))`` with ``conv``'s geometry; one cuDNN launch where cuDNN takes it."""
    key = (x.device.type, x.dtype)
    if fused_relu and x.is_cuda and key not in _CUDNN_CONV_RELU_FAILED:
        try:
            return torch.cudnn_convolution_relu(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
        except RuntimeError:  # a dtype or cuDNN build without the fused engine: remember, and use the plain ops
            _CUDNN_CONV_RELU_FAILED.add(key)
    return F.relu(F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups))


class DepthwisePool(nn.Module):
    """Downsampling between stages: 3x3 stride-2 conv with ``groups = C_in``, ``C_in -> C_out``."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1, groups=in_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and not torch.compiler.is_compiling() and x.dtype == torch.float32:
            # In eager mode on CUDA the conv runs in float32, outside autocast. The stage hands over an
            # NHWC-strided float32 map. The Triton kernels read it as it is and write the next stage's tokens (and
            # the gradients the same way round). Where they do not apply, the conv runs on an NCHW copy: cuDNN's
            # grouped NHWC kernels (and its bf16 ones) were the slow choice there, on an H100 at batch 256 SReT-T's
            # two pools took 0.62 ms forward and 1.96 ms forward + backward as bf16 NHWC against 0.29 / 0.99 ms
            # that way, copy included (benchmarks/bench_pool.py, docs/perf_notes.md). float32 is also the more exact
            # of the two; Inductor picks its own layout.
            if fused.fused_enabled():
                out = pool_kernels.depthwise_pool_nhwc(x, self.conv)  # (B, C_out, H/2, W/2), channels-last
                if out is not None:
                    return out
            with torch.autocast("cuda", enabled=False):
                return self.conv(x.contiguous())  # (B, C_out, ceil(H/2), ceil(W/2)), float32
        return self.conv(x)  # (B, C_out, ceil(H/2), ceil(W/2))


def _per_stage(value: Union[int, float, Sequence], name: str, num_stages: int) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * num_stages
    if len(values) != num_stages:
        raise SReTError(f"{name} needs one value per stage ({num_stages}), got {values}")
    return values


class SReT(nn.Module):
    """Sliced Recursive Transformer.

    Args:
        img_size: Input size the position embedding is built for (int or (H, W)).
        in_chans: Input channels.
        num_classes: Classifier outputs; 0 gives a model without head (``forward`` returns pooled features).
        embed_dims: Channels per stage.
        num_heads: Attention heads per stage.
        depths: Block applications per stage (unique blocks x loops); published 4/10/6.
        unique_blocks: Blocks with their own weights per stage; published 2/5/3 (so loops L = 2).
        mlp_ratio: Block MLP hidden size over dim.
        nll_ratio: NLL hidden size over dim.
        groups1: Attention groups of the first application of each block, per stage.
        groups2: Attention groups of the recursive applications, per stage (tokens shuffled when > 1).
        sliced: False forces global attention everywhere (the "wo_slice" models) whatever ``groups1/2`` say.
        use_nll: NLL layers after every application (True, published) or none (naive recursion).
        learnable_coefficients: Learnable residual scalars (True, published) or plain residuals.
        eval_permutation: ``"fixed"`` (deterministic eval, default) or ``"random"`` (published behaviour).
        permutation_seed: Seed of the fixed eval permutations.
        qkv_bias: Bias in the q/k/v projection.
        drop_rate: Dropout after the position embedding and before the classifier.
        proj_drop_rate: Dropout inside blocks (MLP and attention output).
        attn_drop_rate: Attention dropout.
        drop_path_rate: Stochastic depth; unique block r of stage s uses ``rate * (sum(depths[:s]) + r) /
            sum(depths)`` in all its applications (the published schedule).
        global_pool: ``"avg"`` or ``""`` (no pooling; ``forward_head`` then returns the feature map).
        dynamic_img_size: Accept any input size whose grids divide by the groups; ``pos_embed`` is resampled on
            the fly.
        attn_impl: ``"sdpa"`` (fused kernels) or ``"math"`` (explicit attention matrices: baseline and oracle).
        keep_activations: In training on the fused sublayers, keep each sublayer's LayerNorm output and the
            attention's q/k/v for the backward instead of recomputing them there: a faster step for more memory
            (SReT-S at batch 256 on an H100: docs/perf_notes.md, change 58). Off by default, and for the SReT-T
            family, whose training must fit in 5 GiB at batch 256; on for the SReT-S family. Changes no value a
            parameter or its gradient takes beyond rounding. ``set_keep_activations`` switches it later.
    """

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 256),
        num_heads: Sequence[int] = (2, 4, 8),
        depths: Sequence[int] = (4, 10, 6),
        unique_blocks: Sequence[int] = (2, 5, 3),
        mlp_ratio: Union[float, Sequence[float]] = 3.6,
        nll_ratio: Union[float, Sequence[float]] = 1.0,
        groups1: Sequence[int] = (8, 4, 1),
        groups2: Sequence[int] = (2, 1, 1),
        sliced: bool = True,
        use_nll: bool = True,
        learnable_coefficients: bool = True,
        eval_permutation: EvalPermutation = "fixed",
        permutation_seed: int = 0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        dynamic_img_size: bool = False,
        attn_impl: AttnImpl = "sdpa",
        keep_activations: bool = False,
    ) -> None:
        super().__init__()
        if global_pool not in ("avg", ""):
            raise SReTError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        num_stages = len(embed_dims)
        num_heads = _per_stage(num_heads, "num_heads", num_stages)
        depths = _per_stage(depths, "depths", num_stages)
        unique_blocks = _per_stage(unique_blocks, "unique_blocks", num_stages)
        mlp_ratio = _per_stage(mlp_ratio, "mlp_ratio", num_stages)
        nll_ratio = _per_stage(nll_ratio, "nll_ratio", num_stages)
        groups1 = _per_stage(groups1, "groups1", num_stages) if sliced else [1] * num_stages
        groups2 = _per_stage(groups2, "groups2", num_stages) if sliced else [1] * num_stages
        for s in range(1, num_stages):
            if embed_dims[s] % embed_dims[s - 1] != 0:
                raise SReTError(
                    f"embed_dims[{s}]={embed_dims[s]} must be a multiple of embed_dims[{s - 1}]={embed_dims[s - 1]} "
                    f"(the pooling conv is grouped by input channel)"
                )

        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.embed_dims = tuple(embed_dims)
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False
        grid = stem_grid(*self.img_size)
        self.grid_size = grid

        # Registration order = state-dict order of the published checkpoints.
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dims[0], grid[0], grid[1]))
        self.patch_embed = ConvStem(in_chans, embed_dims[0])
        self.pos_drop = nn.Dropout(drop_rate)

        total_depth = sum(depths)
        stages, pools, feature_info = [], [], []
        reduction = 8
        stage_grid = grid
        for s in range(num_stages):
            if s > 0:
                pools.append(DepthwisePool(embed_dims[s - 1], embed_dims[s]))
                stage_grid = stem_grid(*stage_grid, num_halvings=1)
                reduction *= 2
            offset = sum(depths[:s])
            dpr = [drop_path_rate * (offset + r) / total_depth for r in range(unique_blocks[s])]
            stages.append(
                RecursiveStage(
                    s, embed_dims[s], num_heads[s], depths[s], unique_blocks[s], mlp_ratio[s], nll_ratio[s],
                    groups1=groups1[s], groups2=groups2[s], qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate, drop_path=dpr, use_nll=use_nll,
                    learnable_coefficients=learnable_coefficients, eval_permutation=eval_permutation,
                    permutation_seed=permutation_seed, attn_impl=attn_impl, grid_size=stage_grid,
                )
            )
            feature_info.append(dict(num_chs=embed_dims[s], reduction=reduction, module=f"transformers.{s}"))
        self.transformers = nn.ModuleList(stages)
        self.pools = nn.ModuleList(pools)
        self.feature_info = feature_info
        self.norm = nn.LayerNorm(embed_dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_norms)
        self.set_keep_activations(keep_activations)

    @staticmethod
    def _init_norms(module: nn.Module) -> None:
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ----------------------------------------------------------------------------------------------- timm model API
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^pos_embed|^patch_embed",
            blocks=[(r"^transformers\.(\d+)", None), (r"^pools\.(\d+)", (0,)), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.transformers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def set_keep_activations(self, enable: bool = True) -> None:
        """Keep (True) or recompute (False) the fused sublayers' LayerNorm outputs and q/k/v for the backward."""
        self.keep_activations = enable
        for module in self.modules():
            if isinstance(module, (RecursiveBlock, NonLinearProjection)):
                module.keep_activations = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise SReTError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def set_eval_permutation(self, mode: EvalPermutation) -> None:
        """Switch between deterministic (``"fixed"``) and published (``"random"``) eval-time permutations."""
        if mode not in ("fixed", "random"):
            raise SReTError(f"eval_permutation must be 'fixed' or 'random', got {mode!r}")
        for stage in self.transformers:
            stage.eval_permutation = mode

    # ------------------------------------------------------------------------------------------------------ forward
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.dim() == 4, "SReT expects images of shape (B, C, H, W)")
        if x.shape[1] != self.in_chans:
            raise SReTError(f"input has {x.shape[1]} channels but the model was built with in_chans={self.in_chans}")
        in_hw = (x.shape[-2], x.shape[-1])
        x = self.patch_embed(x)  # (B, C0, H/8, W/8)
        grid = (x.shape[-2], x.shape[-1])
        if self.dynamic_img_size:
            pos_embed = resample_pos_embed(self.pos_embed, grid)
        else:
            if grid != tuple(self.pos_embed.shape[-2:]):
                raise SReTError(
                    f"an input of {in_hw[0]}x{in_hw[1]} px gives a {grid[0]}x{grid[1]} token grid, but pos_embed is "
                    f"{self.pos_embed.shape[-2]}x{self.pos_embed.shape[-1]} (the model was built for img_size="
                    f"{self.img_size[0]}x{self.img_size[1]}); build it with img_size={in_hw[0]} or "
                    f"dynamic_img_size=True"
                )
            pos_embed = self.pos_embed
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
                and not torch.compiler.is_compiling():
            return self.pos_drop(_ChannelsLastPosAdd.apply(x, pos_embed))  # the CUDA stem's map (B, C, H, W)
        return self.pos_drop(x + pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> last stage map ``(B, C_last, H/32, W/32)``."""
        x = self._embed(x)
        for s, stage in enumerate(self.transformers):
            if s > 0:
                x = self.pools[s - 1](x)
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))  # (B, C): pool first, then LayerNorm (published order)
            x = self.norm(x)
        else:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (strides 8, 16, 32), as timm's feature API expects.

        Args:
            x: Images.
            indices: Take the last n stages if an int, those indices if a list; all if None.
            norm: Unused (the final norm acts on pooled features, not on maps); kept for API compatibility.
            stop_early: Stop after the last requested stage.
            output_fmt: ``"NCHW"`` or ``"NHWC"``.
            intermediates_only: Return only the intermediates.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise SReTError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.transformers), indices)
        intermediates = []
        x = self._embed(x)
        last = max_index if stop_early else len(self.transformers) - 1
        for s, stage in enumerate(self.transformers[: last + 1]):
            if s > 0:
                x = self.pools[s - 1](x)
            x = stage(x)
            if s in take_indices:
                intermediates.append(x if output_fmt == "NCHW" else x.permute(0, 2, 3, 1))
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.transformers), indices)
        self.transformers = self.transformers[: max_index + 1]
        self.pools = self.pools[:max_index]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices
