"""``sret ablate``: the paper's ablations at small scale, one YAML file per study.

A study is a fixed training recipe (flags of ``sret train``), a list of arms (a model name plus model kwargs, e.g.
``use_nll: false``) and a list of seeds. Every arm x seed is one ``sret train`` run in its own folder; a finished run
(its ``log.csv`` has the last epoch) is never redone, so an interrupted study resumes where it stopped. The summary is
one markdown table (mean +- std of the final top-1 over seeds, params, GMACs, train img/s, peak memory) and one plot
per study.

The recipe is the same for every arm of a study: nothing is tuned per arm. ``--smoke`` swaps in the study's tiny
recipe (embedded sample, one epoch) so the test suite keeps every study runnable on a CPU.

    sret ablate --study experiments/ablations/recursion.yaml --output runs/ablate --docs docs
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sret.errors import SReTError


@dataclass
class Arm:
    """One configuration of a study."""

    name: str
    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # extra flags for this arm only (e.g. grad checkpointing)

    @property
    def slug(self) -> str:
        keep = [c if c.isalnum() else "-" for c in self.name.lower()]
        return "-".join(filter(None, "".join(keep).split("-")))


@dataclass
class Study:
    """A claim of the paper, the arms that test it, and the one recipe they all share."""

    name: str
    title: str
    claim: str
    recipe: dict[str, Any]
    smoke: dict[str, Any]
    seeds: list[int]
    arms: list[Arm]
    eval_permutations: bool = False  # also evaluate sliced arms with eval_permutation fixed vs random
    random_eval_repeats: int = 3
    path: Path | None = None


def load_study(path: str | os.PathLike) -> Study:
    """Read and check a study file; every problem names the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise SReTError(f"study file {path}: cannot be read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise SReTError(f"study file {path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise SReTError(f"study file {path}: must be a mapping with name, recipe, arms")
    for key in ("name", "recipe", "arms"):
        if key not in raw:
            raise SReTError(f"study file {path}: missing key {key!r}")
    arms = []
    for i, a in enumerate(raw["arms"]):
        if not isinstance(a, dict) or "name" not in a or "model" not in a:
            raise SReTError(f"study file {path}: arm {i} needs 'name' and 'model'")
        arms.append(Arm(a["name"], a["model"], dict(a.get("model_kwargs") or {}), dict(a.get("train") or {})))
    slugs = [a.slug for a in arms]
    if len(set(slugs)) != len(slugs):
        raise SReTError(f"study file {path}: arm names must be distinct")
    return Study(
        name=str(raw["name"]), title=str(raw.get("title", raw["name"])), claim=str(raw.get("claim", "")),
        recipe=dict(raw["recipe"]), smoke=dict(raw.get("smoke") or {}), seeds=list(raw.get("seeds") or [0]),
        arms=arms, eval_permutations=bool(raw.get("eval_permutations", False)),
        random_eval_repeats=int(raw.get("random_eval_repeats", 3)), path=path,
    )


def _flags(options: dict[str, Any]) -> list[str]:
    """``{"img_size": 64, "grad_checkpointing": True}`` -> ``["--img-size", "64", "--grad-checkpointing"]``."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        elif value is None:
            continue
        else:
            argv += [flag, str(value)]
    return argv


def train_argv(study: Study, arm: Arm, seed: int, run_dir: Path, smoke: bool) -> list[str]:
    recipe = dict(study.recipe)
    if smoke:
        recipe.update(study.smoke)
    recipe.update(arm.train)
    recipe.update(model=arm.model, seed=seed, output=str(run_dir))
    if arm.model_kwargs:
        recipe["model_kwargs"] = arm.model_kwargs
    return ["train", *_flags(recipe)]


def _job_argv(study: Study, job: tuple[Arm, int, Path], smoke: bool) -> list[str]:
    """A fresh run, or ``--resume`` of one that was interrupted (its ``last.pth`` is there)."""
    arm, seed, run_dir = job
    if (run_dir / "last.pth").is_file():
        recipe = dict(study.recipe, **(study.smoke if smoke else {}), **arm.train)
        return ["train", "--resume", str(run_dir), *_flags({"workers": recipe.get("workers")})]
    return train_argv(study, arm, seed, run_dir, smoke)


def read_log(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "log.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def is_finished(run_dir: Path, epochs: int) -> bool:
    rows = read_log(run_dir)
    return bool(rows) and int(rows[-1].get("epoch", 0)) >= epochs


def _run_one(argv: list[str], in_process: bool, log_path: Path) -> int:
    if in_process:
        from sret.cli import main

        return main(argv)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        return subprocess.call([sys.executable, "-m", "sret", *argv], stdout=log, stderr=subprocess.STDOUT)


def _arm_stats(arm: Arm, img_size: int, in_chans: int, num_classes: int) -> tuple[int, float]:
    from sret.models.macs import count_macs, count_params
    from sret.train.factory import build_model

    model = build_model(arm.model, num_classes, in_chans, img_size, model_kwargs=arm.model_kwargs)
    return count_params(model), count_macs(model, img_size, in_chans) / 1e9


def _eval_permutation(run_dir: Path, study: Study, smoke: bool) -> dict[str, Any]:
    """Top-1 of the final checkpoint with fixed eval permutations (once) and random ones (several draws)."""
    from sret.cli import main

    recipe = dict(study.recipe, **(study.smoke if smoke else {}))
    out: dict[str, Any] = {}
    for mode, repeats in (("fixed", 1), ("random", study.random_eval_repeats)):
        scores = []
        for r in range(repeats):
            path = run_dir / f"validate-{mode}-{r}.json"
            if not path.is_file():
                argv = ["validate", "--checkpoint", str(run_dir / "last.pth"), "--data", str(recipe["data"]),
                        "--json", str(path), "--model-kwargs", json.dumps({"eval_permutation": mode}),
                        "--workers", str(recipe.get("workers", 2))]
                if main(argv) != 0:
                    raise SReTError(f"validation of {run_dir} with eval_permutation={mode} failed")
            scores.append(json.loads(path.read_text())["top1"])
        out[mode] = scores
    return out


def run_study(study: Study, output: Path, smoke: bool = False, parallel: int = 1,
              seeds: list[int] | None = None) -> dict[str, Any]:
    """Train every arm x seed (skipping finished runs), then gather the results of the study."""
    seeds = list(seeds if seeds is not None else ([study.seeds[0]] if smoke else study.seeds))
    recipe = dict(study.recipe, **(study.smoke if smoke else {}))
    epochs = int(recipe.get("epochs", 1))
    jobs = []
    for arm in study.arms:
        for seed in seeds:
            run_dir = output / study.name / arm.slug / f"seed{seed}"
            arm_epochs = int(arm.train.get("epochs", epochs))
            if not is_finished(run_dir, arm_epochs):
                jobs.append((arm, seed, run_dir))
    print(f"study {study.name}: {len(study.arms)} arms x {len(seeds)} seeds; {len(jobs)} run(s) to do")
    in_process = parallel <= 1
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = [(job, pool.submit(_run_one, _job_argv(study, job, smoke), in_process,
                                     job[2].parent / f"seed{job[1]}.out"))
                   for job in jobs]
        failed = {(job[0].name, job[1]) for job, fut in futures if fut.result() != 0}
    if failed:  # a run that stops (e.g. a non-finite loss) is a result too: report it, keep the others
        print(f"study {study.name}: runs that did not finish: {sorted(failed)} (logs under {output / study.name})")

    results: dict[str, Any] = {"study": study.name, "title": study.title, "claim": study.claim, "recipe": recipe,
                               "seeds": seeds, "arms": []}
    img_size = int(recipe.get("img_size", 64))
    in_chans = int(recipe.get("in_chans", 1))
    for arm in study.arms:
        dirs = [output / study.name / arm.slug / f"seed{s}" for s in seeds]
        arm_epochs = int(arm.train.get("epochs", epochs))
        done = [d for d in dirs if is_finished(d, arm_epochs)]
        runs = [read_log(d) for d in done]
        finals = [r[-1]["val_top1"] for r in runs]
        params, gmacs = _arm_stats(arm, img_size, in_chans, int(recipe.get("num_classes", 10)))
        row: dict[str, Any] = {
            "arm": arm.name, "model": arm.model, "model_kwargs": arm.model_kwargs, "params": params, "gmacs": gmacs,
            "top1": finals, "top1_mean": statistics.fmean(finals) if finals else math.nan,
            "top1_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "finished_runs": len(done), "runs": len(dirs),
            "img_per_s": _mean(statistics.fmean(x.get("img_per_s", math.nan) for x in r) for r in runs),
            "epoch_seconds": _mean(statistics.fmean(x.get("seconds", math.nan) for x in r) for r in runs),
            "peak_mem_gib": max((x.get("peak_mem_gib", math.nan) for r in runs for x in r), default=math.nan),
            "train_loss": [[x.get("train_loss", math.nan) for x in r] for r in runs],
            "val_top1": [[x.get("val_top1", math.nan) for x in r] for r in runs],
        }
        if study.eval_permutations and done and arm.model_kwargs.get("sliced", True) and "wo_slice" not in arm.model:
            evals = [_eval_permutation(d, study, smoke) for d in done]
            diffs = [statistics.fmean(e["random"]) - e["fixed"][0] for e in evals]
            row["eval_fixed"] = [e["fixed"][0] for e in evals]
            row["eval_random"] = [e["random"] for e in evals]
            row["random_minus_fixed_mean"] = statistics.fmean(diffs)
            row["random_minus_fixed_std"] = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
            row["random_spread"] = statistics.fmean(max(e["random"]) - min(e["random"]) for e in evals)
        results["arms"].append(row)
    (output / study.name).mkdir(parents=True, exist_ok=True)
    (output / study.name / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _mean(values) -> float:
    values = list(values)
    return statistics.fmean(values) if values else math.nan


def markdown(results: dict[str, Any], command: str, device: str, date: str, plot: str | None) -> str:
    """One study's section for docs/results.md."""
    lines = [f"### {results['title']}", "", f"Claim: {results['claim']}", "",
             f"- Command: `{command}`", f"- Device: {device}; date: {date}",
             f"- Recipe (same for every arm): `{json.dumps(results['recipe'])}`; seeds {results['seeds']}", "",
             "| arm | params | GMACs | top-1 (mean +- std) | per seed | train img/s | s/epoch | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["arms"]:
        seeds = ", ".join(f"{t:.2f}" for t in r["top1"])
        if r["finished_runs"] < r["runs"]:
            seeds += f" ({r['runs'] - r['finished_runs']} of {r['runs']} runs did not finish: see their logs)"
        mem = f"{r['peak_mem_gib']:.2f}" if not math.isnan(r["peak_mem_gib"]) else "-"
        top1 = f"{r['top1_mean']:.2f} +- {r['top1_std']:.2f}" if r["top1"] else "-"
        lines.append(f"| {r['arm']} | {r['params']:,} | {r['gmacs']:.3f} | {top1} "
                     f"| {seeds} | {r['img_per_s']:.0f} | {r['epoch_seconds']:.1f} | {mem} |")
    perm_rows = [r for r in results["arms"] if "eval_fixed" in r]
    if perm_rows:
        lines += ["", "Eval-time permutation (same checkpoints): fixed (ours, deterministic) vs random (published; "
                      "mean of several draws).", "",
                  "| arm | fixed top-1 per seed | random - fixed (mean +- std over seeds) | spread of random draws |",
                  "|---|---|---|---|"]
        for r in perm_rows:
            lines.append(f"| {r['arm']} | {', '.join(f'{t:.2f}' for t in r['eval_fixed'])} | "
                         f"{r['random_minus_fixed_mean']:+.3f} +- {r['random_minus_fixed_std']:.3f} | "
                         f"{r['random_spread']:.3f} |")
    if plot:
        lines += ["", f"![{results['study']}]({plot})"]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Validation top-1 and training loss per epoch, mean over seeds, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results["arms"]:
        loss = [statistics.fmean(v) for v in zip(*r["train_loss"])]
        acc = [statistics.fmean(v) for v in zip(*r["val_top1"])]
        epochs = range(1, len(acc) + 1)
        ax_loss.plot(epochs, loss, label=r["arm"])
        ax_acc.plot(epochs, acc, label=f"{r['arm']} ({r['top1_mean']:.2f})")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title=f"{results['title']}: training loss")
    ax_acc.set(xlabel="epoch", ylabel="val top-1 (%)", title="validation top-1 (mean over seeds)")
    ax_acc.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", nargs="+", required=True, help="study YAML file(s) (experiments/ablations/*.yaml)")
    parser.add_argument("--output", default="runs/ablate", help="where the runs go (resumable)")
    parser.add_argument("--docs", default=None, help="write <docs>/ablations/<study>.md and <docs>/img/ plots")
    parser.add_argument("--smoke", action="store_true", help="tiny recipe from the study file (CPU, seconds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the study's seeds")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (subprocesses; 1 = in this process)")
    parser.add_argument("--device-name", default=None, help="device description for the docs")
    parser.add_argument("--arms", nargs="+", default=None, help="run only these arms (names or folder names)")


def run(args: argparse.Namespace) -> int:
    import datetime

    for path in args.study:
        study = load_study(path)
        if args.arms:
            study.arms = [a for a in study.arms if a.name in args.arms or a.slug in args.arms]
            if not study.arms:
                raise SReTError(f"study {study.name}: none of the arms {args.arms} exist")
        results = run_study(study, Path(args.output), args.smoke, args.parallel, args.seeds)
        plot_path = Path(args.docs or args.output) / "img" / f"ablation_{study.name}.png"
        plot(results, plot_path)
        device = args.device_name or _device_name()
        command = "sret ablate --study " + str(path) + (" --smoke" if args.smoke else "")
        rel = os.path.relpath(plot_path, Path(args.docs) / "ablations") if args.docs else str(plot_path)
        text = markdown(results, command, device, datetime.date.today().isoformat(), rel)
        target = (Path(args.docs) / "ablations" if args.docs else Path(args.output) / study.name) / f"{study.name}.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(text)
        print(f"wrote {target} and {plot_path}")
    return 0


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"
