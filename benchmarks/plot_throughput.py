"""Plot img/s against GMACs from a ``sret benchmark`` / ``gpu_suite.py`` results JSON.

One panel per bench (inference, training); SReT models and timm models in different colours; eager runs filled,
compiled runs hollow, CUDA-graph replays of the eager step (``--cuda-graph``) as small diamonds; SReT-T's
explicit-attention baseline (``attn_impl="math"``) as a cross. Lines of equal
MAC throughput (TMAC/s) through DeiT-Tiny's eager point show the per-MAC comparison of issue 3: a model above the
line does more useful work per second than DeiT-Tiny. ``--graph-only``: the CUDA-graph rows alone, drawn as the main
points, with the line through DeiT-Tiny's graph point (for a call whose eager half drew a slow host).

    python benchmarks/plot_throughput.py benchmarks/results/h100_run2_after.json docs/img/throughput_vs_gmacs.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SHORT = {"deit_tiny_patch16_224": "DeiT-Ti", "deit_small_patch16_224": "DeiT-S", "pit_ti_224": "PiT-Ti"}


def label(row: dict) -> str:
    name = SHORT.get(row["model"], row["model"])
    if row["attn_impl"] == "math":
        name += " (math)"
    return name


def plot(results: list[dict], env: dict, out: Path, graph_only: bool = False) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    modes = ("eager+cudagraph",) if graph_only else ("eager", "compile", "eager+cudagraph")
    ref_mode = "eager+cudagraph" if graph_only else "eager"
    for ax, bench in zip(axes, ("infer", "train")):
        rows = [r for r in results if r["bench"] == bench and r["samples_per_s"] and not r.get("error")
                and not r["channels_last"] and r["mode"] in modes]
        for r in rows:
            sret = r["model"].startswith("sret")
            color = "tab:red" if sret else "tab:blue"
            compiled = r["mode"] == "compile"
            graph = r["mode"] == "eager+cudagraph" and not graph_only
            marker = "x" if r["attn_impl"] == "math" else ("o" if sret else "s")
            if graph:  # the eager step's GPU time (CUDA-graph replay): a small diamond, no label
                ax.scatter(r["gmacs"], r["samples_per_s"], s=25, marker="d", color=color, alpha=0.5, zorder=2)
                continue
            if marker == "x":
                ax.scatter(r["gmacs"], r["samples_per_s"], s=60, marker=marker, color=color, zorder=3)
            else:
                face = "none" if compiled else color
                ax.scatter(r["gmacs"], r["samples_per_s"], s=60, marker=marker, facecolors=face, edgecolors=color,
                           zorder=3)
            # above right, unless another marker lies close above (then below, if that side is clear) or close to
            # the right (then left): the label would run into it (sret_s, DeiT-S and sret_s_wo_slice sit together)
            near = [(o["gmacs"] - r["gmacs"], float(np.log(o["samples_per_s"] / r["samples_per_s"]))) for o in rows
                    if o is not r and abs(o["gmacs"] - r["gmacs"]) < 0.6
                    and abs(np.log(o["samples_per_s"] / r["samples_per_s"])) < 0.25]
            below = any(dy > 0 for _, dy in near) and not any(dy < 0 for _, dy in near)
            left = any(dx > 0 for dx, _ in near)
            ax.annotate(label(r) + (" [compiled]" if compiled else ""), (r["gmacs"], r["samples_per_s"]),
                        textcoords="offset points", xytext=(-5 if left else 5, -11 if below else 4),
                        ha="right" if left else "left", fontsize=7)
        ref = [r for r in rows if r["model"] == "deit_tiny_patch16_224" and r["mode"] == ref_mode]
        if ref:
            tmacs = ref[0]["samples_per_s"] * ref[0]["gmacs"]
            xs = np.linspace(0.5, 5.0, 50)
            ax.plot(xs, tmacs / xs, "--", color="gray", lw=1,
                    label=f"same MAC/s as DeiT-Ti ({'CUDA graph' if graph_only else 'eager'})")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xlabel("GMACs per image (fvcore convention)")
        ax.set_ylabel("images / s")
        ax.set_title({"infer": "inference", "train": "training step (fwd + bwd + AdamW)"}[bench])
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    batch = results[0]["batch_size"] if results else "?"
    key = ("every step replayed as a CUDA graph (GPU time, no host)" if graph_only else
           "filled: eager, hollow: torch.compile, small diamonds: eager step replayed as a CUDA graph (GPU time)")
    fig.suptitle(f"{env.get('device', '?')}, torch {env.get('torch', '?')}, batch {batch}, 224 px, bf16 autocast "
                 f"({env.get('date', '')[:10]})\nred: SReT, blue: timm; {key}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--graph-only", action="store_true", help="the CUDA-graph rows alone (see above)")
    args = parser.parse_args()
    data = json.loads(args.results.read_text())
    plot(data["results"], data.get("environment", {}), args.out, args.graph_only)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
