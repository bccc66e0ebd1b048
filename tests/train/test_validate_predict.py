"""validate / predict on a checkpoint whose predictions are known by construction, and the exit-code-2 cases.

The constructed model is an SReT whose classifier weight is zero: every image gets logits equal to the head bias
``b``, so top-1 is the share of the class with the largest bias, top-5 the share of the five largest, and the loss
``mean(logsumexp(b) - b[y])`` -- all computed here without the package.
"""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
from train_helpers import TINY, cli, fast_flags, make_image_folder

import sret  # noqa: F401  (registers the SReT models)

BIAS = [0.5, 3.0, 2.0, -1.0, 1.0, 0.0, 2.5]  # ranking: class 1, 6, 2, 4, 0, 5, 3
VAL_COUNTS = [3, 1, 2, 4, 1, 2, 2]  # 15 images


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    root = tmp_path_factory.mktemp("known")
    data = make_image_folder(root / "data", {"train": [1] * 7, "val": VAL_COUNTS})
    model = timm.create_model("sret_t", num_classes=7, img_size=32)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(BIAS))
    ckpt = root / "known.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    return data, ckpt


def test_validate_numbers_on_a_known_checkpoint(known, tmp_path, capsys):
    data, ckpt = known
    out = tmp_path / "m.json"
    assert cli("validate", "--model", "sret_t", "--img-size", 32, "--checkpoint", ckpt, "--data", data,
               "--workers", 0, "--batch-size", 4, "--json", out) == 0
    m = json.loads(out.read_text())
    n = sum(VAL_COUNTS)
    order = sorted(range(7), key=lambda c: -BIAS[c])
    lse = math.log(sum(math.exp(b) for b in BIAS))
    expected_loss = sum(cnt * (lse - BIAS[c]) for c, cnt in enumerate(VAL_COUNTS)) / n
    assert m["count"] == n
    assert m["top1"] == pytest.approx(100 * VAL_COUNTS[order[0]] / n)  # class 1: 1/15
    assert m["top5"] == pytest.approx(100 * sum(VAL_COUNTS[c] for c in order[:5]) / n)  # 9/15
    assert m["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert m["img_per_s"] > 0
    assert f"top-1 {100 / n:.2f}" in capsys.readouterr().out


def test_predict_prints_top5_with_probabilities(known, capsys):
    data, ckpt = known
    image = data / "val" / "c3" / "000.png"
    assert cli("predict", "--model", "sret_t", "--img-size", 32, "--checkpoint", ckpt, image) == 0
    lines = capsys.readouterr().out.splitlines()
    z = sum(math.exp(b) for b in BIAS)
    assert lines[0] == str(image)
    assert len(lines) == 6
    assert lines[1].split() == [f"{math.exp(3.0) / z:.2%}", "class", "1"]
    assert lines[2].split()[-1] == "6"


def test_class_count_mismatch_is_exit_2(known, tmp_path, capsys):
    _, ckpt = known
    four = make_image_folder(tmp_path / "four", {"val": [1] * 4})
    code = cli("validate", "--model", "sret_t", "--img-size", 32, "--checkpoint", ckpt, "--data", four / "val",
               "--workers", 0)
    err = capsys.readouterr().err
    assert code == 2 and "7 classes" in err and "4 classes" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--model", "sret_tt", "--data", "sample"], "unknown model 'sret_tt'; did you mean"),
        (["train", "--model", TINY, "--data", "/no/such/folder"], "data folder not found"),
        (["train", "--model", TINY, "--data", "sample", "--batch-size", "5000"], "larger than the training set"),
        (["validate", "--model", TINY, "--checkpoint", "/no/such.pth", "--data", "sample"], "checkpoint not found"),
        (["predict", "--model", "nope_net", "--checkpoint", __file__, "x.png"], "unknown model"),
    ],
)
def test_bad_input_is_a_message_and_exit_2(argv, message, tmp_path, capsys):
    code = cli(*argv, *(["--output", str(tmp_path / "r")] if argv[0] == "train" else []))
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_corrupt_checkpoint_is_exit_2(colour_data, tmp_path, capsys):
    bad = tmp_path / "torn.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    code = cli("validate", "--model", TINY, "--checkpoint", bad, "--data", colour_data, "--img-size", 32)
    err = capsys.readouterr().err
    assert code == 2 and "torn.pth" in err


def test_yaml_config_sets_flags_and_rejects_unknown_keys(colour_data, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nbatch-size: 16\nwarmup_epochs: 0\n")
    assert cli("train", "--config", cfg, "--model", TINY, "--data", colour_data, "--output", tmp_path / "r",
               "--workers", 0, "--img-size", 32, "--aa", "", "--mixup", 0, "--cutmix", 0) == 0
    state = torch.load(tmp_path / "r" / "last.pth", weights_only=True)
    assert state["config"]["epochs"] == 1 and state["config"]["batch_size"] == 16 and state["step"] == 4
    cfg.write_text("epochz: 1\n")
    capsys.readouterr()
    assert cli("train", "--config", cfg, "--model", TINY, "--data", colour_data, "--output", tmp_path / "r2") == 2
    assert "unknown key 'epochz'" in capsys.readouterr().err


def test_finetune_from_smaller_resolution(tmp_path, colour_data):
    model = timm.create_model("sret_t", num_classes=10, img_size=32)
    torch.save({"model": model.state_dict()}, tmp_path / "w32.pth")
    run = tmp_path / "ft"
    assert cli("train", "--model", "sret_t", "--finetune", tmp_path / "w32.pth", "--data", colour_data,
               "--output", run, *fast_flags(**{"--img-size": 64, "--epochs": 1, "--batch-size": 16})) == 0
    sd = torch.load(run / "last.pth", weights_only=True)["model"]
    assert sd["pos_embed"].shape[-1] == 8 and sd["head.weight"].shape[0] == 4
    # the stem came from the file (fine-tuned one epoch, so close to it, unlike a fresh initialisation)
    delta = (sd["patch_embed.conv1.weight"] - model.state_dict()["patch_embed.conv1.weight"]).abs().max()
    assert delta < 0.05
