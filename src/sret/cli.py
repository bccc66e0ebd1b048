"""`sret` command line: one sub-command per module, imported lazily so `sret --help` stays fast.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int | None``. Any
:class:`sret.errors.SReTError` raised by a command becomes a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sret.demo", "train a small SReT on the embedded sample, then validate and predict"),
    "models": ("sret.models.table", "list every variant: paper row, params, GMACs, paper accuracy"),
    "macs": ("sret.models.macs", "count parameters and GMACs of a model at an input size"),
    "train": ("sret.train.command", "train a model (from scratch, with KD, FKD, or fine-tuning)"),
    "validate": ("sret.train.validate", "evaluate a checkpoint: top-1, top-5, loss, img/s"),
    "predict": ("sret.train.predict", "top-5 labels for image files"),
    "fkd-label": ("sret.fkd.command", "precompute FKD region soft labels with a teacher"),
    "benchmark": ("sret.benchmark", "inference / training throughput, memory, params, GMACs"),
    "export": ("sret.models.export", "export a model to ONNX and check it against PyTorch"),
    "ablate": ("sret.ablate", "run the paper's ablation studies at small scale"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sret", description="Sliced Recursive Transformer tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"sret: error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"sret {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)  # argparse exits with code 2 on bad flags
    from sret.errors import SReTError

    try:
        code = module.run(args)
    except SReTError as err:
        print(f"sret {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sret {name}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
