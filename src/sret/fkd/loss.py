"""Soft cross-entropy on top-k FKD labels, computed on the logits' device, and mixup/cutmix of those labels.

Stored labels are top-k (indices, probabilities). Two ways to turn them back into a distribution over C classes:

- ``"marginal"`` (marginal smoothing, FKD's default): the k stored probabilities are kept and the remaining mass
  ``1 - sum(top-k)`` is spread evenly over the other ``C - k`` classes;
- ``"renorm"``: the k probabilities divided by their sum; the other classes get 0.

The loss never builds a dense ``[B, C]`` target on the CPU: without mixing it is computed analytically from
``log_softmax`` (``-sum_j p_j log q_{i_j} - r * (sum_c log q_c - sum_j log q_{i_j})`` for marginal smoothing with
``r`` the per-class rest), and with mixup the dense target is built on the logits' device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SOFT_LABEL_MODES", "expand_soft_labels", "FKDSoftTargetCrossEntropy", "mix_fkd_batch"]

SOFT_LABEL_MODES = ("marginal", "renorm")


def _check_mode(mode: str) -> None:
    if mode not in SOFT_LABEL_MODES:
        raise ValueError(f"soft_label must be one of {SOFT_LABEL_MODES}, got {mode!r}")


def _rest(prob: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class probability of the classes outside the top-k under marginal smoothing, ``[B, 1]``."""
    k = prob.shape[-1]
    if num_classes <= k:
        return prob.new_zeros(prob.shape[0], 1)
    # fp16 storage can make the kept mass exceed 1 by a rounding step; never hand out negative probability
    return (1.0 - prob.sum(-1, keepdim=True)).clamp_(min=0.0) / (num_classes - k)


def expand_soft_labels(topk_idx: torch.Tensor, topk_prob: torch.Tensor, num_classes: int,
                       mode: str = "marginal", device: torch.device | str | None = None) -> torch.Tensor:
    """Dense ``[B, num_classes]`` float32 soft labels, built on ``device`` (default: where the inputs are)."""
    _check_mode(mode)
    idx = topk_idx.to(device=device, dtype=torch.long, non_blocking=True)
    prob = topk_prob.to(device=device, dtype=torch.float32, non_blocking=True)
    if mode == "renorm":
        dense = prob.new_zeros(prob.shape[0], num_classes)
        return dense.scatter_(1, idx, prob / prob.sum(-1, keepdim=True).clamp_min(1e-12))
    dense = _rest(prob, num_classes).expand(-1, num_classes).contiguous()
    return dense.scatter_(1, idx, prob)


class FKDSoftTargetCrossEntropy(nn.Module):
    """Mean soft cross-entropy ``-sum_c t_c log softmax(z)_c`` with FKD top-k targets.

    ``forward(logits, target)`` accepts ``target`` as a ``(topk_idx, topk_prob)`` pair (expanded with
    ``soft_label`` analytically, on the logits' device) or as a dense ``[B, C]`` tensor (e.g. from
    :func:`mix_fkd_batch` after mixup/cutmix). It can also be called as ``loss(logits, topk_idx, topk_prob)``.
    """

    def __init__(self, soft_label: str = "marginal") -> None:
        super().__init__()
        _check_mode(soft_label)
        self.soft_label = soft_label

    def forward(self, logits: torch.Tensor, target: Any, topk_prob: torch.Tensor | None = None) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=-1)
        if topk_prob is not None:
            target = (target, topk_prob)
        if isinstance(target, torch.Tensor):
            return -(target.to(logp.device, torch.float32) * logp).sum(-1).mean()
        idx, prob = target
        idx = idx.to(logp.device, torch.long, non_blocking=True)
        prob = prob.to(logp.device, torch.float32, non_blocking=True)
        picked = logp.gather(1, idx)  # [B, k]
        if self.soft_label == "renorm":
            weights = prob / prob.sum(-1, keepdim=True).clamp_min(1e-12)
            return -(weights * picked).sum(-1).mean()
        rest = _rest(prob, logits.shape[-1]).squeeze(-1)
        others = logp.sum(-1) - picked.sum(-1)  # sum of log-probs outside the top-k
        return -((prob * picked).sum(-1) + rest * others).mean()

    def extra_repr(self) -> str:
        return f"soft_label={self.soft_label!r}"


def mix_fkd_batch(mixup: Any, x: torch.Tensor, topk_idx: torch.Tensor, topk_prob: torch.Tensor, num_classes: int,
                  soft_label: str = "marginal") -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a timm ``Mixup`` to ``x`` and mix the FKD soft labels with the same lambda(s) and pairing.

    timm's ``Mixup`` mixes hard labels only. Instead of re-implementing its lambda/permutation logic (modes
    ``batch``/``pair``/``elem``, cutmix lambda correction, switch probability), we let it mix the identity: feeding
    targets ``0..B-1`` with ``B`` "classes" and no smoothing returns the ``[B, B]`` mixing matrix ``M`` it applied to
    the images, and the mixed soft labels are ``M @ dense``. Everything runs on ``x``'s device; the mixup object is
    restored afterwards. Returns ``(mixed x, dense mixed target [B, num_classes])`` for
    :class:`FKDSoftTargetCrossEntropy`.
    """
    batch = x.shape[0]
    dense = expand_soft_labels(topk_idx, topk_prob, num_classes, soft_label, device=x.device)
    saved = (mixup.num_classes, mixup.label_smoothing, getattr(mixup, "multi_label", False))
    try:
        mixup.num_classes, mixup.label_smoothing = batch, 0.0
        if hasattr(mixup, "multi_label"):
            mixup.multi_label = False
        x, matrix = mixup(x, torch.arange(batch, device=x.device))
    finally:
        mixup.num_classes, mixup.label_smoothing = saved[0], saved[1]
        if hasattr(mixup, "multi_label"):
            mixup.multi_label = saved[2]
    return x, matrix.to(dense.dtype) @ dense
