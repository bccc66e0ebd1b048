"""The fused residual sublayers (``models/fused.py``) against the plain modules they replace.

The plain path (``SRET_FUSED=0``) is autograd over ``RecursiveBlock`` / ``NonLinearProjection``; the fused path
writes every gradient by hand, so each one (LayerNorm affine, both Linears, both residual coefficients, drop path,
the token permutation) is compared, in float64 where the two must agree to rounding.
"""

from __future__ import annotations

import copy
import statistics

import pytest
import torch

import sret

# Conv biases in front of BatchNorm have a gradient of zero up to rounding: relative errors mean nothing there.
_SKIP = ("patch_embed.conv1.bias", "patch_embed.conv2.bias", "patch_embed.conv3.bias")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _run(model, x, fused: bool, monkeypatch, autocast: bool = False, seed: int = 3):
    monkeypatch.setenv("SRET_FUSED", "1" if fused else "0")
    torch.manual_seed(seed)  # same training permutations and drop-path masks in both paths
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    (out.double() * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if n not in _SKIP}
    return out.detach(), grads


def _randomise_coefficients(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "coefficient" in name:
                p.uniform_(0.5, 1.5)  # away from 1 so a swapped or dropped coefficient shows


@pytest.mark.parametrize("kwargs", [
    dict(model="sret_t", drop_path_rate=0.0),
    dict(model="sret_t", drop_path_rate=0.3),
    dict(model="sret_t_wo_slice", drop_path_rate=0.0),
    dict(model="sret_t", learnable_coefficients=False, drop_path_rate=0.2),
    dict(model="sret_t", attn_impl="math"),
    dict(model="sret_s", drop_path_rate=0.2),  # head_dim 42: heads carried 48 wide through the fused attention
])
def test_fused_matches_plain_in_float64(kwargs, monkeypatch):
    kwargs = dict(kwargs)
    name = kwargs.pop("model")
    torch.manual_seed(0)
    model = sret.create_model(name, img_size=64, num_classes=10, **kwargs).double().train()
    _randomise_coefficients(model)
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    out_f, grads_f = _run(model, x, True, monkeypatch)
    out_p, grads_p = _run(model, x, False, monkeypatch)
    assert _rel(out_f, out_p) < 1e-12
    assert grads_f.keys() == grads_p.keys() and len(grads_p) > 100
    worst = max(grads_p, key=lambda n: _rel(grads_f[n], grads_p[n]))
    assert _rel(grads_f[worst], grads_p[worst]) < 1e-9, worst


@pytest.mark.parametrize("name", ["sret_t", "sret_t_wo_slice", "sret_s"])
def test_kept_attention_core_matches_plain_in_float64(name, monkeypatch):
    """Training that keeps the attention core's output and log-sum-exp (cuDNN / flash on a GPU) and recomputes q/k/v
    in backward: here with the explicit formula in their place, every gradient against the plain modules."""
    from sret.models import fused as fused_module

    kept = []
    monkeypatch.setattr(fused_module, "_attention_backend", lambda *a: kept.append(1) or "math")
    torch.manual_seed(0)
    model = sret.create_model(name, img_size=64, num_classes=10, drop_path_rate=0.2).double().train()
    _randomise_coefficients(model)
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    out_f, grads_f = _run(model, x, True, monkeypatch)
    assert kept  # the path ran (the unshuffled applications; shuffled ones need the Triton kernels, see
    out_p, grads_p = _run(model, x, False, monkeypatch)  # tests/test_layernorm.py)
    assert _rel(out_f, out_p) < 1e-12
    worst = max(grads_p, key=lambda n: _rel(grads_f[n], grads_p[n]))
    assert _rel(grads_f[worst], grads_p[worst]) < 1e-9, worst


def test_fused_eval_matches_plain(monkeypatch):
    model = sret.create_model("sret_t", img_size=64, num_classes=10).double().eval()
    _randomise_coefficients(model)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        monkeypatch.setenv("SRET_FUSED", "1")
        a = model(x)
        monkeypatch.setenv("SRET_FUSED", "0")
        b = model(x)
    assert _rel(a, b) < 1e-12


def test_fused_bf16_as_close_to_float64_as_plain(monkeypatch):
    """Under bf16 autocast neither path is exact; the fused one must be as close to float64 as the plain one."""
    torch.manual_seed(0)
    model = sret.create_model("sret_t", img_size=64, num_classes=10, drop_path_rate=0.1).train()
    _randomise_coefficients(model)
    x = torch.randn(4, 3, 64, 64)
    ref_out, ref = _run(copy.deepcopy(model).double(), x.double(), False, monkeypatch)
    out_f, fused = _run(model, x, True, monkeypatch, autocast=True)
    out_p, plain = _run(model, x, False, monkeypatch, autocast=True)
    assert _rel(out_f, ref_out) < 1.5 * _rel(out_p, ref_out) + 1e-6 < 0.05
    err_f = statistics.median(_rel(fused[n], ref[n]) for n in ref)
    err_p = statistics.median(_rel(plain[n], ref[n]) for n in ref)
    assert err_f < 1.5 * err_p and err_f < 0.05, (err_f, err_p)
    assert all(torch.isfinite(g).all() for g in fused.values())


def _saved_bytes(model, x, fused: bool, monkeypatch) -> int:
    monkeypatch.setenv("SRET_FUSED", "1" if fused else "0")
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}  # in memory anyway: not activations
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()  # a tensor saved by two ops is stored once
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x).sum()
    return sum(seen.values())


def test_fused_saves_less_than_half_the_activations(monkeypatch):
    """What training keeps for backward (the memory target of issue 3): counted, not timed."""
    model = sret.create_model("sret_t", img_size=128, num_classes=10).train()
    x = torch.randn(4, 3, 128, 128)
    fused, plain = _saved_bytes(model, x, True, monkeypatch), _saved_bytes(model, x, False, monkeypatch)
    assert fused < 0.55 * plain, (fused, plain)


def test_fused_path_off_under_dispatch_modes_and_dropout(monkeypatch):
    """The MAC counter must see the plain ops; a block with active dropout runs its plain modules (only its NLLs,
    which have no dropout, stay fused)."""
    from sret.models import fused

    calls: list[str] = []
    for cls in (fused._MlpResidual, fused._AttnResidual):
        original = cls.apply
        monkeypatch.setattr(cls, "apply", lambda *a, _o=original, _n=cls.__name__: calls.append(_n) or _o(*a))
    model = sret.create_model("sret_t", img_size=64, num_classes=10)
    assert sret.count_macs(model, img_size=64) > 0 and not calls
    model.train()(torch.randn(1, 3, 64, 64))
    assert calls.count("_AttnResidual") == 20 and calls.count("_MlpResidual") == 40  # 20 blocks + 20 NLLs
    calls.clear()
    model = sret.create_model("sret_t", img_size=64, num_classes=10, proj_drop_rate=0.1).train()
    model(torch.randn(1, 3, 64, 64))
    assert calls == ["_MlpResidual"] * 20


def test_inference_does_not_keep_what_only_backward_needs(monkeypatch):
    """Under ``torch.no_grad`` the MLP kernels are asked not to write their hidden layer for a backward, and the
    attention sublayer takes the in-kernel shuffle; with autograd recording, both do what backward needs."""
    from sret.models import fused

    saves: list[bool] = []
    original = fused._kernels.mlp_residual_forward
    monkeypatch.setattr(fused._kernels, "mlp_residual_forward",
                        lambda *a, save, **k: saves.append(save) or original(*a, save=save, **k))
    model = sret.create_model("sret_t", img_size=64, num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.eval()(x)
    assert len(saves) == 40 and not any(saves)
    saves.clear()
    model.eval()(x)  # eval mode, but recording (e.g. saliency maps): the backward must work
    assert len(saves) == 40 and all(saves)
    saves.clear()
    x.requires_grad_(True)
    for p in model.parameters():
        p.requires_grad_(False)
    model(x).sum().backward()  # only the input needs a gradient: still a graph to build
    assert all(saves) and x.grad is not None and x.grad.abs().sum() > 0


def test_backward_kernel_table_has_no_unreachable_shapes():
    """Every ``DA_GELU_TILES`` key is a (C, width of the saved h) that some variant's MLP or NLL produces in training:
    an entry keyed on a width the forward never saves (e.g. H rounded to the wrong tile) would silently never run."""
    import sret
    from sret.models import sublayer_kernels as K

    reachable = set()
    for name in ("sret_t", "sret_lt", "sret_s"):
        model = sret.create_model(name)
        for module_name, module in model.named_modules():
            if module_name.endswith("fc1"):
                C, H = module.in_features, module.out_features
                reachable.add((C, K.saved_hidden_width(C, H)))
    assert set(K.DA_GELU_TILES) <= reachable, set(K.DA_GELU_TILES) - reachable
    assert K.saved_hidden_width(128, 460) == 480  # SReT-T stage 1: the one-launch kernel's 32-wide tiles


def test_layernorm_backward_table_is_keyed_on_sret_widths():
    """Every ``layernorm._BACKWARD_TABLE`` width is the width of some variant's LayerNorm (a key no model has would
    never run), and a width outside the table still gets a launch (the default, per-tile sums)."""
    import sret
    from sret.models import layernorm as L

    widths = set()
    for name in ("sret_t", "sret_lt", "sret_s"):
        widths |= {m.normalized_shape[0] for m in sret.create_model(name).modules() if isinstance(m, L.TokenLayerNorm)}
    assert set(L._BACKWARD_TABLE) <= widths, set(L._BACKWARD_TABLE) - widths
    block_m, warps, per_sm, acc2d = L.backward_config(1000, 96)
    assert block_m * 128 == 4096 and warps == 4 and per_sm == 4 and not acc2d
