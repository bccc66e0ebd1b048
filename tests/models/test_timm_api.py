"""The timm model API, checked the way timm's own model tests check it."""

import pytest
import timm
import torch
from timm.models import group_parameters

import sret


@pytest.fixture(scope="module")
def model():
    return sret.create_model("sret_t", img_size=64, num_classes=7).eval()


def test_forward_features_and_head(model):
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 2, 2) and model.num_features == 256
    assert model.forward_head(feats, pre_logits=True).shape == (2, 256)
    logits = model.forward_head(feats)
    assert logits.shape == (2, 7)
    torch.testing.assert_close(logits, model(x))
    # pre-logits: pooled then LayerNorm (pool first, then norm, as published)
    pooled = torch.nn.functional.layer_norm(feats.mean((2, 3)), (256,), model.norm.weight, model.norm.bias, 1e-6)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), pooled)


def test_classifier_reset():
    m = sret.create_model("sret_t", img_size=64, num_classes=7)
    assert m.get_classifier() is m.head and m.head.out_features == 7
    m.reset_classifier(3)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    m.reset_classifier(0)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 256)
    m0 = sret.create_model("sret_t", img_size=64, num_classes=0)
    assert m0(torch.randn(1, 3, 64, 64)).shape == (1, 256)


def test_no_weight_decay_and_group_matcher(model):
    assert model.no_weight_decay() == {"pos_embed"}
    groups = group_parameters(model, model.group_matcher())
    grouped = {n for names in groups.values() for n in names}
    assert grouped == {n for n, _ in model.named_parameters()}
    assert "pos_embed" in groups[0] and "patch_embed.conv1.weight" in groups[0]
    # optimizer factory honours no_weight_decay
    from timm.optim import create_optimizer_v2

    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    no_decay = [g for g in opt.param_groups if g["weight_decay"] == 0.0]
    assert any(p is model.pos_embed for g in no_decay for p in g["params"])


def _saved_activation_bytes(model, x):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return out, total


def test_grad_checkpointing_same_output_less_memory():
    m = sret.create_model("sret_t", img_size=64, num_classes=5).train()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(3)
    ref, ref_bytes = _saved_activation_bytes(m, x)
    ref.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m.set_grad_checkpointing(True)
    torch.manual_seed(3)  # same permutations drawn
    out, ck_bytes = _saved_activation_bytes(m, x)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-5)
    assert ck_bytes < 0.5 * ref_bytes, (ck_bytes, ref_bytes)


@pytest.mark.parametrize("size", [64, 128])
def test_features_only_true_reductions(size):
    f = timm.create_model("sret_t", features_only=True, img_size=size)
    assert f.feature_info.reduction() == [8, 16, 32]
    assert f.feature_info.channels() == [64, 128, 256]
    outs = f(torch.randn(1, 3, size, size))
    for o, red, ch in zip(outs, [8, 16, 32], [64, 128, 256]):
        assert o.shape == (1, ch, size // red, size // red)
    f2 = timm.create_model("sret_s", features_only=True, out_indices=(1, 2), img_size=size)
    assert [o.shape[1] for o in f2(torch.randn(1, 3, size, size))] == [252, 504]


def test_forward_intermediates_matches_forward(model):
    x = torch.randn(1, 3, 64, 64)
    final, inter = model.forward_intermediates(x)
    assert [t.shape[-1] for t in inter] == [8, 4, 2]
    torch.testing.assert_close(final, model.forward_features(x))
    only = model.forward_intermediates(x, indices=1, intermediates_only=True, output_fmt="NHWC")
    assert len(only) == 1 and only[0].shape == (1, 2, 2, 256)


def test_in_chans_one_and_many():
    for c in (1, 5):
        m = sret.create_model("sret_t", img_size=32, in_chans=c, num_classes=10)
        assert m(torch.randn(2, c, 32, 32)).shape == (2, 10)
    with pytest.raises(sret.SReTError, match="3 channels.*in_chans=1"):
        sret.create_model("sret_t", img_size=32, in_chans=1)(torch.randn(1, 3, 32, 32))


def test_dynamic_img_size_resamples_pos_embed():
    m = sret.create_model("sret_t", dynamic_img_size=True, num_classes=4).eval()
    for hw in [(224, 224), (256, 256), (192, 256), (128, 64)]:
        assert m(torch.randn(1, 3, *hw)).shape == (1, 4)
    # at the built size, dynamic and static models agree exactly
    static = sret.create_model("sret_t", num_classes=4).eval()
    static.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(m(x), static(x))
    with pytest.raises(ValueError, match=r"stage 0: a 25x25 grid has 625 tokens.*8 or 2 attention groups"):
        m(torch.randn(1, 3, 200, 200))


def test_fixed_size_model_explains_size_mismatch():
    m = sret.create_model("sret_t")
    with pytest.raises(sret.SReTError, match="256x256 px gives a 32x32 token grid.*28x28.*dynamic_img_size"):
        m(torch.randn(1, 3, 256, 256))


def test_bad_constructor_arguments_are_clear():
    with pytest.raises(sret.SReTError, match="stage 1: depth 10 must be a positive multiple of unique_blocks 3"):
        sret.SReT(depths=(4, 10, 6), unique_blocks=(2, 3, 3))
    with pytest.raises(sret.SReTError, match="eval_permutation"):
        sret.SReT(eval_permutation="sometimes")


def test_ablation_switches():
    naive = sret.SReT(img_size=32, num_classes=3, use_nll=False, learnable_coefficients=False)
    assert not any("coefficient" in k for k in naive.state_dict())
    # without NLLs a stage stores each block application once: 4 + 10 + 6 entries
    assert len({k.split(".")[3] for k in naive.state_dict() if k.startswith("transformers.0.")}) == 4
    assert naive(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    loops3 = sret.SReT(img_size=32, depths=(6, 15, 9), unique_blocks=(2, 5, 3))
    assert sret.count_params(loops3) > sret.count_params(sret.SReT(img_size=32))  # 50% more NLLs, same blocks
    one_loop = sret.SReT(img_size=32, depths=(2, 5, 3), unique_blocks=(2, 5, 3))
    assert one_loop(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_math_and_sdpa_paths_agree():
    a = sret.create_model("sret_t", img_size=64, attn_impl="math").eval()
    b = sret.create_model("sret_t", img_size=64).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-4)


def test_onnx_export_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    m = sret.create_model("sret_t", img_size=64, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / "sret_t.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), m(x).detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available() and not __import__("os").environ.get("SRET_TEST_COMPILE"),
                    reason="torch.compile takes ~100 s on a 2-core CPU; runs on GPU machines or with SRET_TEST_COMPILE=1")
def test_torch_compile_matches_eager():
    m = sret.create_model("sret_t", img_size=64, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(torch.compile(m, fullgraph=True)(x), m(x), rtol=1e-4, atol=1e-4)
