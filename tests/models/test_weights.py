"""Loading published-format checkpoints, adapting them, saving hub folders, and every failure's message."""

import os
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import sret


def published_state_dict(reference_layout, name, seed=0):
    """A checkpoint built from the reference layout alone (names, order, shapes of the published files).

    Shared blocks hold identical values under both indices, as in the published files.
    """
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in reference_layout[name]["state_dict"]:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.1
    stage_loops = {}
    for key in list(sd):  # copy each shared block's values to its other indices: blocks.{2 * (r * L + l)}
        if key.startswith("transformers.") and ".attn." in key:
            s, i = int(key.split(".")[1]), int(key.split(".")[3])
            stage_loops.setdefault(s, set()).add(i)
    for key in list(sd):
        parts = key.split(".")
        if parts[0] == "transformers" and int(parts[3]) % 4 == 2:  # L = 2: application 2 repeats application 0
            src = ".".join(parts[:3] + [str(int(parts[3]) - 2)] + parts[4:])
            sd[key] = sd[src].clone()
    return sd


def _assert_loaded(model, sd):
    own = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(own[k], v), k


@pytest.mark.parametrize("wrap", ["model", "state_dict", "bare", "module_prefix", "safetensors"])
def test_published_file_loads_in_every_container(tmp_path, reference_layout, wrap):
    sd = published_state_dict(reference_layout, "sret_t")
    if wrap == "safetensors":
        path = tmp_path / "SReT_T.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        path = tmp_path / "SReT_T.pth"
        obj = {
            "model": {"model": sd, "optimizer": {"state": {}}, "epoch": 299},
            "state_dict": {"state_dict": sd},
            "bare": sd,
            "module_prefix": {"model": {f"module.{k}": v for k, v in sd.items()}},
        }[wrap]
        torch.save(obj, path)
    model = timm.create_model("sret_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    _assert_loaded(model, sd)


def test_weights_dir_and_camelcase_constructor(tmp_path, reference_layout, monkeypatch):
    sd = published_state_dict(reference_layout, "sret_lt_distill", seed=1)
    torch.save({"model": sd}, tmp_path / "SReT_LT_distill.pth")
    monkeypatch.setenv("SRET_WEIGHTS", str(tmp_path))
    _assert_loaded(sret.SReT_LT_distill(pretrained=True), sd)
    _assert_loaded(sret.create_model("sret_lt_distill", pretrained=True), sd)
    # the published file name with its typo ("fineture") is found for the 384 model
    sd384 = published_state_dict(reference_layout, "sret_s_wo_slice_distill_finetune_384", seed=2)
    torch.save({"model": sd384}, tmp_path / "SReT_S_wo_slice_fineture_384.pth")
    _assert_loaded(sret.SReT_S_wo_slice_finetune_384(pretrained=True), sd384)


def test_pos_embed_resampled_for_384_finetune_and_head_dropped(tmp_path, reference_layout):
    sd = published_state_dict(reference_layout, "sret_t_wo_slice")
    path = tmp_path / "SReT_T_wo_slice.pth"
    torch.save({"model": sd}, path)
    model = sret.create_model("sret_t_wo_slice", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              img_size=384, num_classes=10)
    expected = F.interpolate(sd["pos_embed"], size=(48, 48), mode="bicubic", align_corners=False)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    assert model.head.weight.shape == (10, 256)  # fresh head, the rest loaded
    torch.testing.assert_close(model.state_dict()["transformers.2.blocks.5.mlp.fc2.weight"],
                               sd["transformers.2.blocks.5.mlp.fc2.weight"])
    assert model(torch.randn(1, 3, 384, 384)).shape == (1, 10)


def test_missing_published_file_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SRET_WEIGHTS", str(tmp_path))
    with pytest.raises(sret.CheckpointError, match=r"SReT_S\.pth not found in .*SRET_WEIGHTS.*github"):
        sret.SReT_S(pretrained=True)
    with pytest.raises(sret.CheckpointError, match=r"nothere\.pth: no such file"):
        sret.create_model("sret_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "nothere.pth")))


def test_wrong_architecture_names_file_and_mismatch(tmp_path, reference_layout):
    path = tmp_path / "SReT_T.pth"
    torch.save({"model": published_state_dict(reference_layout, "sret_t")}, path)
    with pytest.raises(sret.CheckpointError, match=r"SReT_T\.pth does not fit sret_s: .*pos_embed: file \(1, 64, 28, 28\)"):
        sret.create_model("sret_s", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(sret.CheckpointError, match="does not fit sret_t.*missing from the file"):
        sd = published_state_dict(reference_layout, "sret_t")
        del sd["norm.weight"]
        sret.load_weights(sret.create_model("sret_t"), sd)


def test_truncated_and_non_checkpoint_files(tmp_path, reference_layout):
    good = tmp_path / "good.pth"
    torch.save({"model": published_state_dict(reference_layout, "sret_t")}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(sret.CheckpointError, match=r"truncated\.pth: cannot be read.*truncated or corrupt"):
        sret.read_state_dict(truncated)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(sret.CheckpointError, match=r"notes\.pth"):
        sret.read_state_dict(text)
    weird = tmp_path / "weird.pth"
    torch.save({"epoch": 3, "lr": 0.1}, weird)
    with pytest.raises(sret.CheckpointError, match=r"weird\.pth: holds no state dict"):
        sret.read_state_dict(weird)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 40)
    with pytest.raises(sret.CheckpointError, match=r"bad\.safetensors: not a readable safetensors file"):
        sret.read_state_dict(bad_st)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create a file if unpickled


def test_pickled_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"model": {"w": torch.zeros(1)}, "x": _Payload(str(marker))}, f, pickle_protocol=2)
    with pytest.raises(sret.CheckpointError, match=r"evil\.pth: refused to load.*run code"):
        sret.read_state_dict(path)
    assert not marker.exists()


def test_shared_block_copies_that_differ_are_refused(reference_layout):
    sd = published_state_dict(reference_layout, "sret_t")
    sd["transformers.0.blocks.2.attn.qkv.weight"] = sd["transformers.0.blocks.2.attn.qkv.weight"] + 1
    with pytest.raises(sret.CheckpointError, match="blocks.2.attn.qkv.weight and .*blocks.0.attn.qkv.weight are one"):
        sret.load_weights(sret.create_model("sret_t"), sd)


def test_save_pretrained_round_trip_via_local_dir(tmp_path):
    model = sret.create_model("sret_t", img_size=64, num_classes=10).eval()
    folder = sret.save_pretrained(model, tmp_path / "my_sret")
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    again = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert again.num_classes == 10 and again.img_size == (64, 64)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    # a deduplicated file (each shared block stored once) is completed on load
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    deduped = {k: v for k, v in tensors.items() if not (k.startswith("transformers.0.blocks.2."))}
    fresh = sret.create_model("sret_t", img_size=64, num_classes=10).eval()
    sret.load_weights(fresh, deduped)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
