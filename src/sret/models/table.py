"""``sret models``: the paper's table beside what this package builds and measures now."""

from __future__ import annotations

import argparse

from sret.models.factory import create_model, list_models
from sret.models.macs import count_macs, count_params
from sret.models.variants import VARIANTS


def measure_table(pattern: str = "sret_*", macs: bool = True) -> list[dict]:
    """Build every variant matching ``pattern`` and count its parameters and GMACs at its own input size."""
    rows = []
    for name in list_models(pattern):
        info = VARIANTS[name]
        model = create_model(name)
        rows.append(
            dict(
                name=name, paper_row=info.paper_row, img_size=info.img_size, params=count_params(model),
                paper_params=info.params, gmacs=count_macs(model) / 1e9 if macs else None, paper_gmacs=info.gmacs,
                top1=info.top1,
            )
        )
    return rows


def format_table(rows: list[dict]) -> str:
    header = (f"{'model':<38} {'paper row':<28} {'px':>4} {'params':>11} {'match':>5} {'GMACs':>7} {'paper':>7} "
              f"{'top-1':>5}")
    lines = [header, "-" * len(header)]
    for r in rows:
        gmacs = f"{r['gmacs']:.3f}" if r["gmacs"] is not None else "-"
        match = "yes" if r["params"] == r["paper_params"] else "NO"
        top1 = f"{r['top1']:.1f}" if r["top1"] is not None else "-"
        lines.append(
            f"{r['name']:<38} {r['paper_row']:<28} {r['img_size']:>4} {r['params']:>11,} {match:>5} {gmacs:>7} "
            f"{r['paper_gmacs']:>7.3f} {top1:>5}"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--filter", default="sret_*", help="model name pattern (fnmatch), e.g. 'sret_s*'")
    parser.add_argument("--no-macs", action="store_true", help="skip the (slower) GMAC count")


def run(args: argparse.Namespace) -> int:
    print(format_table(measure_table(args.filter, macs=not args.no_macs)))
    print("\nparams: unique parameters (shared blocks once); GMACs: fvcore convention, one forward at the row's size;")
    print("top-1: ImageNet-1K, from the paper (not measured here).")
    return 0
