"""Fill ``DGELU_TILES`` from a ``tune_sublayer_kernel.py --dgelu`` result and A/B it in one process on the GPU.

Shapes where the fused backward beat the PyTorch ops by ``--margin`` go in the table; bf16 gradients of sret_t and
sret_s are checked against float64 with the table filled (``benchmarks/check_fused.py``'s comparison); then the
training step is timed as CUDA-graph replays with the table empty and filled, interleaved empty / filled / filled /
empty. Prints the table to paste into ``sublayer_kernels.py``.

    PYTHONPATH=src python3 benchmarks/ab_dgelu.py tune_dgelu.json --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from sret.benchmark import BenchConfig, benchmark
from sret.models import sublayer_kernels as K

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_fused  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("tune_file", type=Path)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--margin", type=float, default=1.05)
    parser.add_argument("--models", nargs="+", default=["sret_t", "sret_s"])
    args = parser.parse_args()
    table = {(r["C"], r["H"]): tuple(r["tile"]) for r in json.loads(args.tune_file.read_text())
             if r["torch_ms"] / r["kernel_ms"] >= args.margin}
    print("DGELU_TILES = {")
    for key, val in table.items():
        print(f"    {key}: {val},")
    print("}")
    ok = True
    for (C, H), tile in table.items():  # each entry against the PyTorch ops on fresh data, bf16
        torch.manual_seed(0)
        g = torch.randn(50176, C, device="cuda")
        w2, c2 = torch.randn(C, H, device="cuda") / H**0.5, torch.full((1,), 0.9, device="cuda")
        h = torch.randn(50176, H, device="cuda", dtype=torch.bfloat16)
        g16, dh, a = K.mlp_fc2_gelu_backward(g, w2, c2, h, torch.bfloat16, tile=tile)
        dh_ref = torch.ops.aten.gelu_backward(torch.mm(g.bfloat16(), (w2 * c2).bfloat16()), h)
        e_dh = float((dh.float() - dh_ref.float()).norm() / dh_ref.float().norm())
        e_a = float((a.float() - F.gelu(h).float()).norm() / F.gelu(h).float().norm())
        good = e_dh < 1e-2 and e_a < 1e-2 and torch.equal(g16, g.bfloat16())
        ok &= good
        print(f"check C={C} H={H}: dh vs ops {e_dh:.2e}, a vs gelu {e_a:.2e} -> {'OK' if good else 'FAIL'}")
    K.DGELU_TILES.update(table)
    for model in args.models:
        ok &= check_fused.main(["--model", model, "--batch-size", "8"]) == 0
    results = []
    for label in ("empty", "filled", "filled", "empty"):
        K.DGELU_TILES.clear()
        if label == "filled":
            K.DGELU_TILES.update(table)
        for model in args.models:
            r = benchmark(BenchConfig(model=model, bench="train", batch_size=256, cuda_graph=True, warmup=5, iters=20,
                                      repeats=3))
            print(f"{label:6s} {model} train: {r.samples_per_s:,.0f} img/s ({r.step_ms:.2f} ms)", flush=True)
            results.append({"table": label, "model": model, "img_s": r.samples_per_s, "step_ms": r.step_ms,
                            "repeats": r.step_ms_repeats})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ab_dgelu.json").write_text(json.dumps({"table": [list(k) + [list(v)] for k, v in table.items()],
                                                       "checks_ok": ok, "results": results}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
