"""Training losses: the SReT soft-label distillation loss, and the choice of timm loss for a recipe."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn


class KDLoss(nn.Module):
    """Soft-label knowledge distillation as published for the SReT ``*_distill`` models (after MEAL V2).

    ``loss = mean_over_batch( -sum_c softmax(t / T)_c * log_softmax(s / T)_c )`` with student logits ``s`` and
    teacher logits ``t``. There is deliberately no hard-label term and no ``T**2`` factor: the teacher's
    distribution is the only target, which is what the published numbers were trained with.

    Args:
        temperature: softening temperature ``T`` (1.0 as published).
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        # float32 even under bf16 autocast: the log-softmax of low-precision logits loses the small probabilities
        s = student_logits.float() / self.temperature
        t = teacher_logits.detach().float() / self.temperature
        return -(F.softmax(t, dim=-1) * F.log_softmax(s, dim=-1)).sum(dim=-1).mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def build_train_loss(mixup_active: bool, smoothing: float) -> nn.Module:
    """Hard-label train loss: soft-target CE when mixup/cutmix makes the targets soft (mixup applies the label
    smoothing itself then), label-smoothing CE when only smoothing is on, plain CE otherwise."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()
