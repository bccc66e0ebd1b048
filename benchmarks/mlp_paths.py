"""The MLP/NLL sublayer's forward paths side by side, per SReT shape at batch 256, as CUDA-graph replays.

For each shape, inference (``save=False``) and training forward (``save=True``): the PyTorch ops of the fused
sublayer (Triton's MLP kernels off), the path the tables choose now (``CUBLAS_MLP`` / ``PW_TILES`` / ``GEMM_TILES``),
the one-launch kernel and the Triton LN + two GEMM path where a table has a tile for the shape, and the cuBLAS path
over aligned rows (``_mlp_cublas``). Each path's output is compared with the PyTorch ops' (relative to the branch's
norm), and with ``save`` its fc1 output with the one-launch kernel's. Times: ``do_bench_cudagraph`` medians, in ms.

    PYTHONPATH=src python3 benchmarks/mlp_paths.py [--out $OUT] [--shapes S T]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from triton.testing import do_bench_cudagraph

from sret.models import sublayer_kernels as K
from sweep_mlp_kernel import SHAPES, inputs, torch_path  # this script's folder is on sys.path when run as a file


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--shapes", default="S T", help="prefixes of the shape names to run")
    args = parser.parse_args()
    rows = []
    for name, n, C, H in (s for s in SHAPES if s[0].split()[0] in args.shapes.split()):
        x, lw, lb, w1, b1, w2, b2, c1, c2 = inputs(256, n, C, H, seed=1)
        base = (x, lw, lb, w1, b1, w2, b2, c1, c2, None, 1e-6, torch.bfloat16)
        for save in (False, True):
            with torch.no_grad():
                ref = torch_path(base, False)
            branch = (ref - c1 * x).norm()
            paths = {"tables": {}, "cublas": dict(cublas=True)}
            if (C, H, save) in K.PW_TILES:
                paths["one launch"] = dict(cublas=False, pw_tile=K.PW_TILES[(C, H, save)])
            if (C, H, save) in K.GEMM_TILES:
                paths["triton gemms"] = dict(cublas=False, gemm_tile=K.GEMM_TILES[(C, H, save)])
            row = dict(shape=name, M=256 * n, C=C, H=H, save=save,
                       torch_ms=do_bench_cudagraph(lambda: torch_path(base, save), return_mode="median"))
            hidden = {}
            for label, kw in paths.items():
                def run(kw=kw):
                    with torch.no_grad():
                        return K.mlp_residual_forward(*base, save, **kw)

                got = run()
                if got is None:
                    row[label] = None
                    continue
                if save:
                    hidden[label] = got[1][:, :H].float()
                err = float((got[0] - ref).norm() / branch)
                row[label] = dict(ms=do_bench_cudagraph(run, return_mode="median"), err=err)
            if "one launch" in hidden and "cublas" in hidden:
                h_ref = hidden["one launch"]
                row["h_err"] = float((hidden["cublas"] - h_ref).norm() / h_ref.norm())
            rows.append(row)
            text = " ".join(f"{k} {v['ms']:.4f} ({v['err']:.1e})" for k, v in row.items()
                            if isinstance(v, dict))
            print(f"{name:9s} save={int(save)} torch {row['torch_ms']:.4f} | {text}"
                  + (f" | h {row['h_err']:.1e}" if "h_err" in row else ""), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mlp_paths.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(),
                                                             torch=torch.__version__, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
