"""Issue 3's targets, checked against one results JSON (numbers from one run on one GPU).

    python benchmarks/targets.py benchmarks/results/h100_run2_after.json
    python benchmarks/targets.py benchmarks/results/h100_run90_final.json \
        --plain benchmarks/results/h100_run90_plain.json

Target 1's baseline is an explicit-attention implementation of the same model. Without ``--plain`` that is the
model's own ``attn_impl="math"`` rows (every other kernel of ours still on); ``--plain`` names a file of rows
measured on the plain modules with every kernel of ours off (``SRET_FUSED=0 SRET_FUSED_KERNELS=0 SRET_FAST_LN=0
--attn-impl math``, as ``run_final_suite.sh`` runs them), which is then the baseline.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional


# The modes (eager, compile) and the GPU-time view of the eager step (eager+cudagraph: the same kernels
# replayed as one CUDA graph, without the host's dispatch), which the issue does not name but which shows the GPU work.
MODES = ("eager", "compile", "eager+cudagraph")


def find(rows: list[dict], model: str, bench: str, mode: str = "eager", attn: Optional[str] = None) -> Optional[dict]:
    for r in rows:
        if (r["model"] == model and r["bench"] == bench and r["mode"] == mode and not r["channels_last"]
                and (r["attn_impl"] == attn if attn else r["attn_impl"] != "math") and r["samples_per_s"]):
            return r
    return None


def check(rows: list[dict],
          plain: Optional[list[dict]] = None) -> list[tuple[str, Optional[float], str, Optional[bool]]]:
    """(target, measured ratio, required, met) for every target the file has the rows for; ``plain``: target 1's
    baseline rows (else the math rows of ``rows``)."""
    out = []
    for mode in MODES:
        for bench in ("infer", "train"):
            fast = find(rows, "sret_t", bench, mode, attn="sdpa")
            base = find(plain if plain is not None else rows, "sret_t", bench, mode, attn="math")
            if fast and base:
                ratio = fast["samples_per_s"] / base["samples_per_s"]
                against = "plain modules, math" if plain is not None else "math"
                out.append((f"1. sret_t {bench} sdpa / {against} ({mode})", ratio, ">= 4.0", ratio >= 4.0))
    train = find(rows, "sret_t", "train", attn="sdpa")
    if train and train["peak_mem_gib"] is not None:
        out.append(("1. sret_t train peak memory GiB (eager)", train["peak_mem_gib"], "<= 5.0",
                    train["peak_mem_gib"] <= 5.0))
    for small, ref in (("sret_t", "deit_tiny_patch16_224"), ("sret_s", "deit_small_patch16_224")):
        for mode in MODES:
            for bench in ("infer", "train"):
                a, b = find(rows, small, bench, mode), find(rows, ref, bench, mode)
                if a and b:
                    ratio = (a["samples_per_s"] * a["gmacs"]) / (b["samples_per_s"] * b["gmacs"])
                    out.append((f"2. {small} / {ref} MAC/s, {bench}, {mode}", ratio, ">= 1.0", ratio >= 1.0))
    for sliced, plain in (("sret_t", "sret_t_wo_slice"), ("sret_s", "sret_s_wo_slice")):
        for mode in MODES:
            for bench in ("infer", "train"):
                a, b = find(rows, sliced, bench, mode), find(rows, plain, bench, mode)
                if a and b:
                    ratio = a["step_ms"] / b["step_ms"]
                    out.append((f"3. time {sliced} / {plain}, {bench}, {mode}", ratio, "<= 0.85", ratio <= 0.85))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--plain", type=Path, default=None,
                        help="target 1's baseline rows: the plain modules with every kernel of ours off")
    args = parser.parse_args()
    plain = json.loads(args.plain.read_text())["results"] if args.plain else None
    for path in args.results:
        data = json.loads(path.read_text())
        print(f"## {path} ({data['environment']['device']}, {data['environment']['date']})")
        print("| target | measured | required | met |\n|---|---|---|---|")
        for name, value, need, met in check(data["results"], plain):
            print(f"| {name} | {value:.2f} | {need} | {'yes' if met else 'no'} |")
        for name, info in data.get("cudagraph", {}).items():
            print(f"| 4. {name} eval, mode=reduce-overhead (CUDA graphs) | rel. err vs eager "
                  f"{info['rel_err_vs_eager']:.1e}, {info['samples_per_s']:,.0f} img/s | works | yes |")


if __name__ == "__main__":
    main()
