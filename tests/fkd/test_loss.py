"""Soft-label expansion, the FKD soft cross-entropy and mixup of soft labels, against explicit float64 formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sret.fkd.loss import FKDSoftTargetCrossEntropy, expand_soft_labels, mix_fkd_batch


def random_topk(batch: int, classes: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(batch, classes, generator=g) * 3, -1)
    p, i = probs.topk(k, -1)
    return i, p.half().float()  # as stored: fp16


def reference_dense(idx: torch.Tensor, prob: torch.Tensor, classes: int, mode: str) -> np.ndarray:
    """Independent float64 loops: the definition of the two expansions."""
    idx, prob = idx.numpy(), prob.numpy().astype(np.float64)
    out = np.zeros((idx.shape[0], classes))
    for b in range(idx.shape[0]):
        if mode == "marginal":
            rest = max(0.0, 1.0 - prob[b].sum()) / (classes - idx.shape[1])
            out[b, :] = rest
            for j, c in enumerate(idx[b]):
                out[b, c] = prob[b, j]
        else:
            for j, c in enumerate(idx[b]):
                out[b, c] = prob[b, j] / prob[b].sum()
    return out


def reference_ce(logits: torch.Tensor, dense: np.ndarray) -> float:
    z = logits.double().numpy()
    logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    return float(-(dense * logp).sum(1).mean())


@pytest.mark.parametrize("mode", ["marginal", "renorm"])
def test_expansion_matches_definition(mode: str) -> None:
    idx, prob = random_topk(6, 11, 4)
    dense = expand_soft_labels(idx, prob, 11, mode)
    np.testing.assert_allclose(dense.double().numpy(), reference_dense(idx, prob, 11, mode), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dense.sum(-1).numpy(), 1.0, atol=1e-6)  # both expansions are distributions


def test_marginal_never_negative() -> None:
    idx = torch.tensor([[0, 1]])
    prob = torch.tensor([[0.7, 0.3007]])  # fp16 rounding can push the kept mass over 1
    assert expand_soft_labels(idx, prob, 5, "marginal").min() >= 0


@pytest.mark.parametrize("mode", ["marginal", "renorm"])
def test_loss_matches_formula(mode: str) -> None:
    idx, prob = random_topk(8, 13, 5, seed=1)
    logits = torch.randn(8, 13, generator=torch.Generator().manual_seed(2)) * 4
    loss = FKDSoftTargetCrossEntropy(mode)
    expected = reference_ce(logits, reference_dense(idx, prob, 13, mode))
    assert loss(logits, (idx, prob)).item() == pytest.approx(expected, rel=1e-5)
    assert loss(logits, idx, prob).item() == pytest.approx(expected, rel=1e-5)
    dense = expand_soft_labels(idx, prob, 13, mode)
    assert loss(logits, dense).item() == pytest.approx(expected, rel=1e-5)


def test_loss_gradient_matches_dense() -> None:
    idx, prob = random_topk(4, 9, 3, seed=3)
    logits = torch.randn(4, 9, requires_grad=True)
    FKDSoftTargetCrossEntropy("marginal")(logits, (idx, prob)).backward()
    g_topk = logits.grad.clone()
    logits.grad = None
    FKDSoftTargetCrossEntropy()(logits, expand_soft_labels(idx, prob, 9)).backward()
    torch.testing.assert_close(g_topk, logits.grad, rtol=1e-5, atol=1e-7)


def test_loss_with_k_equal_classes() -> None:
    idx, prob = random_topk(3, 4, 4)
    logits = torch.randn(3, 4)
    expected = reference_ce(logits, reference_dense(idx, prob, 4, "renorm") * prob.sum(-1, keepdim=True).numpy())
    assert FKDSoftTargetCrossEntropy("marginal")(logits, (idx, prob)).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("mode,cutmix", [("batch", False), ("batch", True), ("elem", False), ("pair", False)])
def test_mixup_mixes_soft_labels_like_images(mode: str, cutmix: bool) -> None:
    """Recover each row's lambda from the mixed images and check the targets used the same lambda and partner."""
    from timm.data import Mixup

    torch.manual_seed(0)
    np.random.seed(0)
    batch, classes = 6, 7
    mixup = Mixup(mixup_alpha=0.0 if cutmix else 1.0, cutmix_alpha=1.0 if cutmix else 0.0, prob=1.0, mode=mode,
                  label_smoothing=0.1, num_classes=classes, correct_lam=True)
    # each image constant = its row number + 1, so a mixed pixel reveals the lambda exactly
    x = (torch.arange(batch, dtype=torch.float32) + 1).view(batch, 1, 1, 1).expand(batch, 3, 8, 8).contiguous()
    idx, prob = random_topk(batch, classes, 3, seed=4)
    x_mixed, target = mix_fkd_batch(mixup, x.clone(), idx, prob, classes, "marginal")
    dense = reference_dense(idx, prob, classes, "marginal")
    a = np.arange(batch) + 1.0
    for b in range(batch):
        partner = batch - 1 - b  # timm pairs row b with row B-1-b
        mean_pixel = x_mixed[b].double().mean().item()
        lam = 1.0 if a[b] == a[partner] else (mean_pixel - a[partner]) / (a[b] - a[partner])
        expected = lam * dense[b] + (1 - lam) * dense[partner]
        np.testing.assert_allclose(target[b].double().numpy(), expected, atol=1e-5)
    assert (mixup.num_classes, mixup.label_smoothing) == (classes, 0.1)  # the caller's mixup is left as it was
