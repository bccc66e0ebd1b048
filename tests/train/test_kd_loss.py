"""KDLoss equals SPEC section 5: mean over batch of -sum_c softmax(t/T)_c * log_softmax(s/T)_c (no T^2, no CE)."""

import math

import pytest
import torch

from sret.train.losses import KDLoss


def expected_kd(student: torch.Tensor, teacher: torch.Tensor, T: float) -> float:
    """The formula written out with Python floats (float64), one sample and one class at a time."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        s = [v / T for v in s_row]
        t = [v / T for v in t_row]
        t_max, s_max = max(t), max(s)
        t_z = sum(math.exp(v - t_max) for v in t)
        s_lse = s_max + math.log(sum(math.exp(v - s_max) for v in s))
        total += -sum((math.exp(tv - t_max) / t_z) * (sv - s_lse) for tv, sv in zip(t, s))
    return total / student.shape[0]


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_loss_matches_formula(T):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(6, 9, generator=g) * 3
    teacher = torch.randn(6, 9, generator=g) * 3
    got = KDLoss(temperature=T)(student, teacher).item()
    assert got == pytest.approx(expected_kd(student, teacher, T), rel=1e-5)


def test_kd_loss_gradient_reaches_student_only():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    KDLoss(2.0)(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    # minimum at student == teacher: the gradient vanishes there (cross-entropy to a soft target)
    s = teacher.detach().clone().requires_grad_(True)
    KDLoss(2.0)(s, teacher.detach()).backward()
    assert s.grad.abs().max() < 1e-6


def test_kd_loss_is_exported_from_package():
    import sret

    assert sret.KDLoss is KDLoss
