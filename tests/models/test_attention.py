"""Sliced group attention and the whole recursive forward against explicit, independent math."""

import pytest
import torch

import sret
from sret.models.attention import SlicedGroupAttention, invert_permutation

from .reference_forward import attention_oracle, reference_forward


def _randomize(model):
    """Move every parameter and BN statistic away from its init (coefficients != 1, biases != 0)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.2 if p.dim() > 1 else 0.5) + (1.0 if "coefficient" in name else 0.0))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.1)
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
    return model


@pytest.mark.parametrize("impl", ["sdpa", "math"])
@pytest.mark.parametrize("tokens,groups,heads,shuffle", [(16, 1, 2, False), (16, 4, 2, False), (24, 3, 3, True),
                                                         (64, 8, 4, True), (36, 2, 1, True)])
def test_grouped_attention_equals_explicit_oracle(impl, tokens, groups, heads, shuffle):
    C = 12 * heads
    attn = SlicedGroupAttention(C, heads, attn_impl=impl).double().eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    x = torch.randn(3, tokens, C, dtype=torch.float64)
    perm = torch.randperm(tokens) if shuffle else None
    got = attn(x, groups, perm)
    want = attention_oracle(x, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias, heads, groups, perm)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_groups_really_restrict_attention():
    # changing a token in group 0 must not change the output of group 1 (no shuffle), and must with one group
    attn = SlicedGroupAttention(16, 2).eval()
    x = torch.randn(1, 8, 16)
    y = x.clone()
    y[0, 0] += 1.0
    grouped = attn(x, 2), attn(y, 2)
    torch.testing.assert_close(grouped[0][0, 4:], grouped[1][0, 4:])
    assert not torch.allclose(attn(x, 1)[0, 4:], attn(y, 1)[0, 4:])


def test_permutation_then_inverse_is_identity():
    for n in (1, 7, 64, 784):
        perm = torch.randperm(n)
        inv = invert_permutation(perm)
        x = torch.randn(2, n, 3)
        torch.testing.assert_close(x[:, perm][:, inv], x)
        torch.testing.assert_close(inv, torch.argsort(perm))


CFG_T = dict(heads=(2, 4, 8), depths=(4, 10, 6), unique=(2, 5, 3), groups1=(8, 4, 1), groups2=(2, 1, 1))


@pytest.mark.parametrize(
    "name,kwargs,cfg",
    [
        ("sret_t", {}, CFG_T),
        ("sret_t_wo_slice", {}, dict(CFG_T, groups1=(1, 1, 1), groups2=(1, 1, 1))),
        ("sret_lt_16_14_1", {"img_size": 224}, dict(CFG_T, groups1=(16, 14, 1), groups2=(1, 1, 1))),
        # 3 loops and shuffled passes in two stages: the general class, beyond the published L = 2
        ("sret_t", dict(depths=(6, 6, 3), unique_blocks=(2, 2, 1), groups1=(4, 2, 1), groups2=(2, 2, 1)),
         dict(CFG_T, depths=(6, 6, 3), unique=(2, 2, 1), groups1=(4, 2, 1), groups2=(2, 2, 1))),
    ],
)
def test_full_forward_equals_reference_implementation(name, kwargs, cfg):
    size = 224 if name == "sret_lt_16_14_1" else 64
    kwargs = dict(dict(img_size=size, num_classes=5), **kwargs)
    model = _randomize(sret.create_model(name, **kwargs)).double().eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    torch.testing.assert_close(model(x), reference_forward(model, x, cfg), rtol=1e-9, atol=1e-9)


def test_eval_is_deterministic_and_train_draws_fresh_permutations():
    model = _randomize(sret.create_model("sret_t", img_size=64, num_classes=5))
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    # a freshly built model with the same weights makes the same fixed permutations (seeded, not stored)
    twin = sret.create_model("sret_t", img_size=64, num_classes=5).eval()
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)
    assert "perm" not in " ".join(model.state_dict())
    model.train()
    for m in model.modules():  # BN in eval so only the permutation can differ between the two calls
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    assert not torch.allclose(model(x), model(x))


def test_random_eval_permutation_is_the_published_behaviour():
    model = _randomize(sret.create_model("sret_t", img_size=64, num_classes=5, eval_permutation="random")).eval()
    x = torch.randn(2, 3, 64, 64)
    assert not torch.allclose(model(x), model(x))
    model.set_eval_permutation("fixed")
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    # without any shuffled pass, the permutation mode makes no difference
    plain = sret.create_model("sret_t_wo_slice", img_size=64, eval_permutation="random").eval()
    torch.testing.assert_close(plain(x), plain(x))


def test_gradients_reach_every_parameter():
    model = _randomize(sret.create_model("sret_t", img_size=64, num_classes=5))
    model(torch.randn(2, 3, 64, 64)).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_token_gather_gradient_is_the_inverse_gather():
    from sret.models.attention import gather_tokens

    x = torch.randn(2, 12, 3, dtype=torch.float64, requires_grad=True)
    perm = torch.randperm(12)
    inv = invert_permutation(perm)
    torch.autograd.gradcheck(lambda t: gather_tokens(t, perm, inv), (x,))
    g = torch.randn(2, 12, 3, dtype=torch.float64)
    (gather_tokens(x, perm, inv) * g).sum().backward()
    # independent expectation: d/dx of sum(x[:, perm] * g) puts g[:, i] at position perm[i]
    expected = torch.zeros_like(g)
    for i, p in enumerate(perm.tolist()):
        expected[:, p] = g[:, i]
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)


@pytest.mark.parametrize("tokens,groups,heads,dim", [(12, 3, 2, 4), (8, 1, 4, 8)])
def test_split_qkv_gradient_is_assembled_in_place(tokens, groups, heads, dim):
    """q/k/v of group g, head h, token t are channels (i * heads + h) * dim ... of token g * n + t; the gradient of
    each lands back exactly there (float64 gradcheck plus an explicit per-element expectation)."""
    from sret.models.attention import split_qkv

    x = torch.randn(2, tokens, 3 * heads * dim, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: split_qkv(t, groups, heads), (x,))
    q, k, v = split_qkv(x, groups, heads)
    n = tokens // groups
    grads = [torch.randn_like(q) for _ in range(3)]
    torch.autograd.backward((q, k, v), grads)
    expected = torch.zeros_like(x)
    for i, g in enumerate(grads):
        for b in range(2):
            for grp in range(groups):
                for h in range(heads):
                    for t in range(n):
                        c0 = (i * heads + h) * dim
                        expected[b, grp * n + t, c0:c0 + dim] = g[b * groups + grp, h, t]
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)
    last = x[0, 2 * n - 1, -dim:] if groups > 1 else x[1, n - 1, -dim:]  # batch row 1 is group 1 of sample 0
    assert torch.equal(q[0, 0, 0], x[0, 0, :dim]) and torch.equal(v[1, heads - 1, n - 1], last)
