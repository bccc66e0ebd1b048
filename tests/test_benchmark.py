"""``sret benchmark`` on the CPU: tiny models, one step, results files and bad input.

The numbers themselves mean nothing on a CPU; these tests pin the command's contract: rows for every
(model, bench), JSON and CSV written with the same columns, SReT-only options applied to SReT models only, and
an unknown model refused with exit code 2 before anything runs.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from sret.benchmark import RESULT_COLUMNS
from sret.cli import main

TINY = ["--img-size", "32", "--batch-size", "2", "--warmup", "0", "--iters", "1", "--repeats", "1",
        "--amp-dtype", "float32"]


def test_json_results_for_sret_and_timm(tmp_path, capsys):
    out = tmp_path / "res.json"
    code = main(["benchmark", "--models", "sret_t", "deit_tiny_patch16_224", "--attn-impl", "sdpa", "math",
                 "--bench", "both", *TINY, "--results-file", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "running on the CPU" in printed and "img/s" in printed
    data = json.loads(out.read_text())
    assert data["environment"]["torch"] and data["environment"]["device"].startswith("cpu")
    rows = data["results"]
    # sret_t x {sdpa, math} x {infer, train} + deit x {infer, train}; attn_impl only applies to sret models
    assert [(r["model"], r["attn_impl"], r["bench"]) for r in rows] == [
        ("sret_t", "sdpa", "infer"), ("sret_t", "sdpa", "train"), ("sret_t", "math", "infer"),
        ("sret_t", "math", "train"), ("deit_tiny_patch16_224", "-", "infer"), ("deit_tiny_patch16_224", "-", "train"),
    ]
    for r in rows:
        assert set(r) == set(RESULT_COLUMNS)
        assert r["error"] is None and r["samples_per_s"] > 0 and r["step_ms"] > 0
        assert r["batch_size"] == 2 and r["img_size"] == 32 and r["mode"] == "eager"
        assert r["peak_mem_gib"] is None  # no CUDA allocator to ask
    sret_rows = [r for r in rows if r["model"] == "sret_t"]
    assert {r["params"] for r in sret_rows} == {4_706_827}  # 32 px: a 4x4 pos_embed instead of 28x28
    assert len({r["gmacs"] for r in sret_rows}) == 1 and 0 < sret_rows[0]["gmacs"] < 0.1
    assert not list(tmp_path.glob(".res.json.*"))  # atomic write leaves no temporary file


def test_csv_results(tmp_path):
    out = tmp_path / "res.csv"
    code = main(["benchmark", "--models", "sret_t_wo_slice", "--bench", "infer", *TINY, "--results-file", str(out)])
    assert code == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and tuple(rows[0]) == RESULT_COLUMNS
    assert rows[0]["model"] == "sret_t_wo_slice" and rows[0]["bench"] == "infer" and float(rows[0]["samples_per_s"]) > 0


def test_keep_activations_applies_to_sret_models_only(tmp_path):
    out = tmp_path / "res.json"
    assert main(["benchmark", "--models", "sret_s", "sret_t", "deit_tiny_patch16_224", "--bench", "train", *TINY,
                 "--results-file", str(out)]) == 0
    # each sret model's own default (the SReT-S family keeps, SReT-T recomputes), nothing for timm's
    assert [r["keep_activations"] for r in json.loads(out.read_text())["results"]] == [True, False, None]
    assert main(["benchmark", "--models", "sret_s", "sret_t", "deit_tiny_patch16_224", "--bench", "train", *TINY,
                 "--no-keep-activations", "--results-file", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["keep_activations"] for r in rows] == [False, False, None] and all(r["error"] is None for r in rows)


def test_unknown_model_is_refused_before_running(tmp_path, capsys):
    out = tmp_path / "res.json"
    code = main(["benchmark", "--models", "sret_t", "sret_tinyy", *TINY, "--results-file", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown model 'sret_tinyy'" in err and "sret_t" in err
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--results-file", "r.txt"], ".json or .csv"),
    (["--batch-size", "0"], "--batch-size"),
    (["--compile-mode", "reduce-overhead"], "--compile-mode needs --compile"),
    (["--cuda-graph", "--device", "cpu"], "--cuda-graph needs a CUDA device"),
])
def test_bad_options(extra, message, capsys):
    assert main(["benchmark", "--models", "sret_t", "--img-size", "32", *extra]) == 2
    assert message in capsys.readouterr().err


def test_python_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "sret.benchmark", "--models", "no_such_model_xyz"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown model" in proc.stderr
