"""Every ablation study runs end to end on the CPU (--smoke: embedded sample, tiny subset, 1 epoch)."""

import json
from pathlib import Path

import pytest

from sret.ablate import Arm, load_study, train_argv
from sret.cli import main
from sret.errors import SReTError

STUDIES = sorted((Path(__file__).resolve().parents[1] / "experiments" / "ablations").glob("*.yaml"))


def test_studies_exist_and_parse():
    names = {load_study(p).name for p in STUDIES}
    assert {"recursion", "components", "slicing", "depth"} <= names


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_study_smoke(path, tmp_path):
    assert main(["ablate", "--study", str(path), "--smoke", "--output", str(tmp_path / "runs"),
                 "--docs", str(tmp_path / "docs")]) == 0
    study = load_study(path)
    results = json.loads((tmp_path / "runs" / study.name / "results.json").read_text())
    assert [r["arm"] for r in results["arms"]] == [a.name for a in study.arms]
    for row in results["arms"]:
        assert 0.0 <= row["top1_mean"] <= 100.0 and row["params"] > 0 and row["gmacs"] > 0
    text = (tmp_path / "docs" / "ablations" / f"{study.name}.md").read_text()
    assert all(a.name in text for a in study.arms)
    assert (tmp_path / "docs" / "img" / f"ablation_{study.name}.png").stat().st_size > 1000
    if study.eval_permutations:
        assert any("eval_fixed" in r for r in results["arms"])
    # a second invocation finds every run finished and trains nothing
    assert main(["ablate", "--study", str(path), "--smoke", "--output", str(tmp_path / "runs")]) == 0


def test_equal_parameters_where_the_claim_is_about_parameters():
    from sret.models.macs import count_params
    from sret.train.factory import build_model

    study = load_study([p for p in STUDIES if p.stem == "recursion"][0])
    vit = {a.name: count_params(build_model(a.model, 10, 1, 64, model_kwargs=a.model_kwargs))
           for a in study.arms if a.model == "vit_recursive_tiny"}
    assert len(set(vit.values())) == 1  # naive recursion: exactly the same parameters
    comps = load_study([p for p in STUDIES if p.stem == "components"][0])
    naive = [a for a in comps.arms if a.model_kwargs.get("use_nll") is False]
    assert naive
    depth = load_study([p for p in STUDIES if p.stem == "depth"][0])
    for arm in depth.arms:
        model = build_model(arm.model, 10, 1, 32, model_kwargs=arm.model_kwargs)
        assert count_params(model) <= 15_000_000
        assert sum(arm.model_kwargs["depths"]) >= 100


def test_bad_study_files_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\narms: []\n")
    with pytest.raises(SReTError, match="bad.yaml: missing key 'recipe'"):
        load_study(bad)
    assert main(["ablate", "--study", str(tmp_path / "none.yaml")]) == 2


def test_flags_from_recipe():
    from sret.ablate import Study

    study = Study("s", "s", "", {"img_size": 64, "aa": "", "grad_checkpointing": True, "scale": [0.5, 1.0]}, {},
                  [0], [])
    argv = train_argv(study, Arm("a b", "sret_t", {"use_nll": False}), 3, Path("out"), smoke=False)
    assert argv[:1] == ["train"]
    assert "--grad-checkpointing" in argv and argv[argv.index("--scale") + 1:argv.index("--scale") + 3] == ["0.5", "1.0"]
    assert json.loads(argv[argv.index("--model-kwargs") + 1]) == {"use_nll": False}
    assert argv[argv.index("--seed") + 1] == "3" and argv[argv.index("--aa") + 1] == ""


def test_interrupted_run_is_resumed_not_refused(tmp_path):
    path = [p for p in STUDIES if p.stem == "components"][0]
    study = load_study(path)
    study.arms = study.arms[:1]
    from sret.ablate import run_study

    out = tmp_path / "runs"
    run_dir = out / study.name / study.arms[0].slug / "seed0"
    # a run interrupted after its first epoch's checkpoint: made by running 1 epoch, then asking for 2
    assert main(train_argv(study, study.arms[0], 0, run_dir, smoke=True)) == 0
    study.smoke = dict(study.smoke, epochs=2)
    import torch

    from sret.train.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "last.pth")
    state["config"]["epochs"] = 2
    torch.save(state, run_dir / "last.pth")
    results = run_study(study, out, smoke=True, seeds=[0])
    assert results["arms"][0]["finished_runs"] == 1
    from sret.ablate import read_log

    assert [int(r["epoch"]) for r in read_log(run_dir)] == [1, 2]
