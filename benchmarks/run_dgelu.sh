#!/usr/bin/env bash
# The fused MLP backward through fc2 and GELU: per-shape sweep, checks, CUDA-graph training A/B; then profiles of
# sret_s (inference and training) for what comes next. ~6 min on an H100.
set -u
source experiments/device_env.sh
OUT=${OUT:-dgelu_out}
W="$OUT/work"; mkdir -p "$W"
{
  python3 benchmarks/tune_sublayer_kernel.py --dgelu --out "$W" --deadline ${DEADLINE:-200}
  python3 benchmarks/ab_dgelu.py "$W/tune_dgelu.json" --out "$W"
  python3 benchmarks/profile_step.py --out "$W" --models sret_s
} 2>&1 | grep -v -i warn | tee "$OUT/log.txt" | grep -E "dgelu|img/s|check|DGELU_TILES|\(|\}|OK|FAIL|rror|Traceback|==="
tar czf "$OUT/dgelu.tgz" -C "$W" . && rm -rf "$W"
