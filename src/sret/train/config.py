"""``sret train`` flags, their SReT/DeiT recipe defaults, and ``--config`` YAML files that may set any of them.

Precedence: command-line flag > YAML file > recipe default. The resolved configuration is a plain dict (YAML- and
``weights_only``-safe) written to ``DIR/config.yaml`` and stored in every checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import yaml

from sret.errors import SReTError

DEFAULT_AA = "rand-m9-mstd0.5-inc1"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """All ``sret train`` flags. Defaults reproduce the SReT recipe (DeiT's, with 30 warm-up epochs)."""
    g = parser.add_argument_group("run")
    g.add_argument("--config", help="YAML file setting any flag below (keys as flag names, '-' or '_')")
    g.add_argument("--model", help="model name, e.g. sret_t, sret_lt_distill, sret_s (any timm model works)")
    g.add_argument("--data", help="'sample' (embedded), 'fashion-mnist', or a folder with train/ and val/")
    g.add_argument("--output", help="run folder (default runs/<model>-<data>)")
    g.add_argument("--resume", metavar="DIR", help="continue the run in DIR from DIR/last.pth (its config is used)")
    g.add_argument("--epochs", type=int, default=300)
    g.add_argument("--batch-size", type=int, default=128, help="per process; global = this x processes")
    g.add_argument("--workers", type=int, default=None, help="data loader processes per rank (default: min(8, cpus))")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda (torchrun ranks take cuda:LOCAL_RANK)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"],
                   help="autocast dtype; auto = bf16 on GPUs that support it, none on CPUs")
    g.add_argument("--checkpoint-every-steps", type=int, default=0,
                   help="also write last.pth every N steps (0: at epoch ends only)")
    g.add_argument("--log-every", type=int, default=50, help="TensorBoard step scalars every N steps")
    g.add_argument("--grad-checkpointing", action="store_true")
    g.add_argument("--cuda-graph", action="store_true",
                   help="replay each training step as one CUDA graph (CUDA, also under torchrun; bf16/none amp, "
                        "adam/adamw): removes the host's per-op cost, 2-3x faster for SReT-T on an H100")
    g.add_argument("--train-subset", type=int, default=None, metavar="N",
                   help="train on the first N training images only (smoke tests, quick studies)")
    g.add_argument("--val-subset", type=int, default=None, metavar="N", help="evaluate on the first N images only")

    g = parser.add_argument_group("model and optimisation")
    g.add_argument("--img-size", type=int, default=None, help="default: the data set's (64 for Fashion-MNIST), "
                   "else the model's (224)")
    g.add_argument("--in-chans", type=int, default=None, help="default: 1 for grey data sets, else 3")
    g.add_argument("--drop-path", type=float, default=None, help="default 0.1 (T, LT) / 0.2 (S)")
    g.add_argument("--drop", type=float, default=0.0)
    g.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help='extra model constructor arguments as a JSON object, e.g. \'{"use_nll": false}\' (ablations)')
    g.add_argument("--opt", default="adamw")
    g.add_argument("--lr", type=float, default=None, help="default: 0.001 x global_batch / 512")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--warmup-epochs", type=float, default=None, help="default: 30 for 300 epochs (10%% of epochs)")
    g.add_argument("--warmup-lr", type=float, default=1e-6)
    g.add_argument("--min-lr", type=float, default=1e-5)
    g.add_argument("--clip-grad", type=float, default=None)
    g.add_argument("--ema", action="store_true", help="keep an EMA of the weights (timm ModelEmaV3)")
    g.add_argument("--ema-decay", type=float, default=0.99996)
    g.add_argument("--finetune", metavar="CHECKPOINT",
                   help="start from these weights (pos_embed resampled to --img-size; head dropped if classes differ)")

    g = parser.add_argument_group("augmentation and regularisation")
    g.add_argument("--aa", default=DEFAULT_AA, help="RandAugment policy ('' for none)")
    g.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    g.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0], help="RandomResizedCrop area range")
    g.add_argument("--hflip", type=float, default=0.5)
    g.add_argument("--color-jitter", type=float, default=0.3)
    g.add_argument("--mixup", type=float, default=0.8, help="mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha (0: off)")
    g.add_argument("--mixup-prob", type=float, default=1.0)
    g.add_argument("--mixup-switch-prob", type=float, default=0.5)
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")

    g = parser.add_argument_group("distillation")
    g.add_argument("--teacher", metavar="MODEL_OR_CHECKPOINT",
                   help="teacher: an sret training checkpoint, or a model name (with --teacher-checkpoint, else "
                        "timm pretrained weights)")
    g.add_argument("--teacher-checkpoint", help="weights for a --teacher given by name")
    g.add_argument("--kd-temperature", type=float, default=1.0)

    g = parser.add_argument_group(
        "fast knowledge distillation (FKD)",
        "Replay region soft labels precomputed by `sret fkd-label` instead of running a teacher: every image "
        "yields --num-crops stored crops per pass, so one pass over the data counts as --num-crops epochs "
        "(FKD's accounting). With --fkd-labels, --epochs E counts epochs-equivalent: the run makes "
        "ceil(E / num_crops) passes (E is rounded up to whole passes), and --warmup-epochs, the cosine LR schedule, "
        "the epoch column of log.csv and the epoch counts printed are epochs-equivalent too (one log.csv row, "
        "validation and checkpoint per pass). --batch-size counts crops per step (a multiple of --num-crops: "
        "batch-size / num-crops images per step). --aa/--reprob/--scale/--hflip/--color-jitter/--smoothing do not "
        "apply (crops, flips and soft labels are the stored ones); --mixup/--cutmix do, mixing the soft labels "
        "with the same lambda. The model gets the label set's class count, which must equal the data set's.")
    g.add_argument("--fkd-labels", metavar="LABELS", default=None,
                   help="label directory from `sret fkd-label` for this training set (its file list is checked)")
    g.add_argument("--num-crops", type=int, default=4,
                   help="stored crops replayed per image and pass (FKD: 4); one pass = this many epochs")
    g.add_argument("--soft-label", default="marginal", choices=["marginal", "renorm"],
                   help="top-k -> distribution: 'marginal' keeps the top-k probabilities and spreads the rest evenly "
                        "over the other classes (FKD's default); 'renorm' divides the top-k by their sum")


# flags that describe where/how this process runs, not the experiment: a resumed run may change them
RUNTIME_KEYS = ("workers", "device", "resume", "config")


def config_from_args(parser: argparse.ArgumentParser, argv_args: argparse.Namespace) -> dict[str, Any]:
    """Merge ``--config`` YAML under the command line; reject YAML keys that are not flags."""
    cfg = vars(argv_args).copy()
    if not cfg.get("config"):
        return cfg
    path = Path(cfg["config"])
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise SReTError(f"cannot read config file {path}: {err}") from err
    if not isinstance(loaded, dict):
        raise SReTError(f"config file {path} must hold a mapping of flag: value")
    defaults = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    for key, value in loaded.items():
        dest = str(key).replace("-", "_")
        if dest not in defaults:
            raise SReTError(f"config file {path}: unknown key {key!r}")
        if cfg[dest] == defaults[dest]:  # the command line wins where it set something
            cfg[dest] = value
    return cfg


def finalize(cfg: dict[str, Any], world_size: int) -> dict[str, Any]:
    """Fill the derived defaults (lr scaling, warm-up, drop path, output folder) and check the values."""
    if not cfg.get("model"):
        raise SReTError("--model is required (or --resume DIR)")
    if not cfg.get("data"):
        raise SReTError("--data is required: 'sample', 'fashion-mnist' or a folder with train/ and val/")
    if cfg["epochs"] < 1 or cfg["batch_size"] < 1:
        raise SReTError("--epochs and --batch-size must be >= 1")
    cfg["world_size"] = world_size
    cfg["model_kwargs"] = parse_model_kwargs(cfg.get("model_kwargs"))
    if cfg.get("fkd_labels"):
        if cfg.get("teacher"):
            raise SReTError("--fkd-labels and --teacher exclude each other: FKD replays precomputed teacher labels "
                            "(no teacher runs in training); drop one of them")
        if cfg["num_crops"] < 1:
            raise SReTError(f"--num-crops must be >= 1, got {cfg['num_crops']}")
        if cfg["batch_size"] % cfg["num_crops"]:
            raise SReTError(f"with --fkd-labels, --batch-size counts crops per step and must be a multiple of "
                            f"--num-crops {cfg['num_crops']} (got {cfg['batch_size']})")
        cfg["fkd_labels"] = str(Path(cfg["fkd_labels"]).expanduser().resolve())
    if cfg.get("cuda_graph"):
        from sret.train.cuda_graph import CAPTURABLE_OPTIMIZERS

        if cfg["amp"] == "fp16":
            raise SReTError("--cuda-graph needs --amp bf16 or none: fp16 loss scaling checks for overflow on the host "
                            "every step")
        if str(cfg["opt"]).lower() not in CAPTURABLE_OPTIMIZERS:
            raise SReTError(f"--cuda-graph needs --opt {' or '.join(CAPTURABLE_OPTIMIZERS)} (capturable optimizers), "
                            f"got {cfg['opt']!r}")
        if cfg.get("grad_checkpointing"):
            raise SReTError("--cuda-graph and --grad-checkpointing exclude each other here; drop one")
    for key in ("train_subset", "val_subset"):
        if cfg.get(key) is not None and cfg[key] < 1:
            raise SReTError(f"--{key.replace('_', '-')} must be >= 1")
    if cfg["lr"] is None:
        cfg["lr"] = 1e-3 * cfg["batch_size"] * world_size / 512
    if cfg["warmup_epochs"] is None:
        cfg["warmup_epochs"] = min(30, cfg["epochs"] // 10)
    if cfg["output"] is None:
        cfg["output"] = str(Path("runs") / f"{cfg['model']}-{Path(str(cfg['data'])).name}")
    if cfg["workers"] is None:
        cfg["workers"] = min(8, max(0, (os.cpu_count() or 1) // max(world_size, 1) - 1))
    cfg["scale"] = [float(s) for s in cfg["scale"]]
    return cfg


def parse_model_kwargs(value: Any) -> dict[str, Any]:
    """``--model-kwargs``: a JSON object (from the command line) or a mapping (from a YAML config)."""
    if value in (None, ""):
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise SReTError(f"--model-kwargs must be a JSON object, e.g. '{{\"use_nll\": false}}': {err}") from None
    if not isinstance(parsed, dict):
        raise SReTError(f"--model-kwargs must be a JSON object, got {type(parsed).__name__}")
    return parsed


def dump_yaml(cfg: dict[str, Any]) -> str:
    return yaml.safe_dump({k: v for k, v in cfg.items() if k not in ("config",)}, sort_keys=False)
