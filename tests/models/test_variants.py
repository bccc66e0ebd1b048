"""Every variant against the reference layout (test data from the published checkpoints) and the paper's table."""

import pytest
import timm
import torch

import sret
from sret.models.variants import VARIANTS

ALL = list(VARIANTS)


def test_every_reference_variant_is_registered(reference_layout):
    assert sorted(sret.list_models()) == sorted(reference_layout)
    for name in reference_layout:
        assert timm.is_model(name), name


@pytest.mark.parametrize("name", ALL)
def test_state_dict_layout_params_and_macs(name, reference_layout):
    ref = reference_layout[name]
    model = sret.create_model(name).eval()
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    want = [(k, list(s)) for k, s in ref["state_dict"]]
    assert got == want  # names, order and shapes
    assert sret.count_params(model) == ref["params"]
    gmacs = sret.count_macs(model) / 1e9
    assert abs(gmacs - ref["gmacs_fvcore"]) <= 0.0006, (gmacs, ref["gmacs_fvcore"])
    size = ref["size"]
    if size == 224:  # forward at the table's size (the large ones are covered by the MAC count's forward)
        out = model(torch.randn(2, 3, size, size))
        assert out.shape == (2, 1000) and torch.isfinite(out).all()


def test_published_constructors_are_drop_in():
    # the published names, including those the published code lacks or breaks (wo_slice: TypeError there)
    for public, variant in [
        ("SReT_T", "sret_t"), ("SReT_LT", "sret_lt"), ("SReT_S", "sret_s"), ("SReT_T_wo_slice", "sret_t_wo_slice"),
        ("SReT_LT_wo_slice", "sret_lt_wo_slice"), ("SReT_S_wo_slice", "sret_s_wo_slice"),
        ("SReT_T_distill", "sret_t_distill"), ("SReT_LT_distill", "sret_lt_distill"),
        ("SReT_S_distill", "sret_s_distill"), ("SReT_T_wo_slice_distill", "sret_t_wo_slice_distill"),
        ("SReT_LT_wo_slice_distill", "sret_lt_wo_slice_distill"),
        ("SReT_S_wo_slice_finetune_384", "sret_s_wo_slice_distill_finetune_384"),
        ("SReT_S_wo_slice_finetune_512", "sret_s_wo_slice_distill_finetune_512"),
        ("SReT_T_wo_slice_finetune_384", "sret_t_wo_slice_distill_finetune_384"),
    ]:
        ctor = getattr(sret, public)
        model = ctor(pretrained=False, num_classes=7)
        assert isinstance(model, sret.SReT)
        assert sret.count_params(model) == sret.count_params(sret.create_model(variant, num_classes=7)), public


def test_distill_models_share_their_base_architecture():
    for distill, base in [("sret_t_distill", "sret_t"), ("sret_lt_wo_slice_distill", "sret_lt_wo_slice")]:
        a, b = sret.create_model(distill), sret.create_model(base)
        assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]


def test_weight_sharing_is_real():
    model = sret.create_model("sret_t")
    sd = model.state_dict()
    # blocks.0 and blocks.2 of stage 0 are the same block: a change to one shows in the other
    with torch.no_grad():
        model.transformers[0].blocks[0].attn.qkv.weight.add_(1.0)
    after = model.state_dict()
    assert torch.equal(after["transformers.0.blocks.2.attn.qkv.weight"], sd["transformers.0.blocks.2.attn.qkv.weight"])
    assert torch.equal(after["transformers.0.blocks.0.attn.qkv.weight"], after["transformers.0.blocks.2.attn.qkv.weight"])
    # ... while NLLs are not shared
    with torch.no_grad():
        model.transformers[0].blocks[1].mlp.fc1.weight.zero_()
    assert not torch.equal(model.state_dict()["transformers.0.blocks.3.mlp.fc1.weight"],
                           torch.zeros_like(model.transformers[0].blocks[3].mlp.fc1.weight))
    # unique parameter count < sum over state-dict entries (shared blocks counted once)
    n_sd = sum(v.numel() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k)
    assert sret.count_params(model) < n_sd


def test_model_table_command(capsys):
    from sret.cli import main

    assert main(["models", "--filter", "sret_t", ]) == 0
    out = capsys.readouterr().out
    assert "sret_t " in out and "4,755,979" in out and "1.122" in out


def test_unknown_model_is_a_clear_error():
    with pytest.raises(sret.SReTError, match="unknown model 'sret_xl'"):
        sret.create_model("sret_xl")
