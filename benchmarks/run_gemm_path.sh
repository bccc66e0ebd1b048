#!/usr/bin/env bash
# The LN + two GEMM MLP path: tile sweep per shape, then the chosen table checked and A/B-timed (CUDA graphs).
set -u
source experiments/device_env.sh
OUT=${OUT:-gemm_path_out}
W="$OUT/work"; mkdir -p "$W"
{
  python3 benchmarks/tune_sublayer_kernel.py --out "$W" --deadline ${DEADLINE:-300}
  python3 benchmarks/ab_gemm_tiles.py "$W/tune_gemm_path.json" --out "$W"
} 2>&1 | grep -v -i warn | tee "$OUT/log.txt" | grep -E "save=|img/s|check|GEMM_TILES|\(|\}|rror|Traceback"
tar czf "$OUT/gemm_path.tgz" -C "$W" . && rm -rf "$W"
