#!/usr/bin/env bash
# A/B of model code switches read from the environment, interleaved in one call on one GPU (A B A B ...), so drift
# between windows shows as the spread of A vs A. Usage (repository root, device machine):
#   VARIANTS="SRET_FUSED=1 SRET_FUSED=0" MODELS="sret_t sret_t_wo_slice" ROUNDS=2 bash benchmarks/ab_env.sh
# Results: $OUT/ab_<variant>_r<round>.json, one table per run in $OUT/ab_log.txt.
set -u
source experiments/device_env.sh
OUT=${OUT:-ab_out}
mkdir -p "$OUT"
VARIANTS=${VARIANTS:-"SRET_FUSED=1 SRET_FUSED=0"}
MODELS=${MODELS:-"sret_t sret_t_wo_slice"}
ROUNDS=${ROUNDS:-2}
BENCH=${BENCH:-both}
EXTRA=${EXTRA:-}
for r in $(seq 1 "$ROUNDS"); do
  for v in $VARIANTS; do
    tag=$(echo "$v" | tr -c 'A-Za-z0-9_\n' '_')
    echo "=== round $r, $v" | tee -a "$OUT/ab_log.txt"
    env $v python3 -m sret.benchmark --models $MODELS --bench "$BENCH" --batch-size 256 --warmup 5 --iters 20 \
      --repeats 3 --results-file "$OUT/ab_${tag}_r${r}.json" $EXTRA 2>&1 | grep -v Warning | tee -a "$OUT/ab_log.txt"
  done
done
