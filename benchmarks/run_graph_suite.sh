#!/usr/bin/env bash
# Run 7: the previous commit (BASE, its benchmark allowed to capture training) against the current tree, GPU time
# only, interleaved base / new / base; then every model of issue 3 in one call, CUDA-graph and eager, inference and
# training. ~8 min on an H100.
set -u
source experiments/device_env.sh
OUT=${OUT:-graph_suite_out}
BASE=${BASE:-$PWD/ab_base/src}
W="$OUT/work"; mkdir -p "$W"
B="python3 -m sret.benchmark --batch-size 256 --warmup 5 --iters 20 --repeats 3 --bench both"
{
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv
  for v in base new base2; do
    if [ $v = new ]; then pp="$PYTHONPATH"; else pp="$BASE:$PYTHONPATH"; fi
    echo "=== A/B $v"
    PYTHONPATH=$pp $B --cuda-graph --models sret_t sret_s --results-file "$W/ab_$v.json"
  done
  echo "=== graph table"
  $B --cuda-graph --models sret_t --attn-impl math --results-file "$W/graph_math.json"
  $B --cuda-graph --models sret_t_wo_slice sret_s_wo_slice deit_tiny_patch16_224 deit_small_patch16_224 pit_ti_224 \
    --results-file "$W/graph_table.json"
  echo "=== eager table"
  $B --models sret_t sret_t_wo_slice deit_tiny_patch16_224 sret_s sret_s_wo_slice deit_small_patch16_224 \
    --results-file "$W/eager_table.json"
  $B --models sret_t --attn-impl math --results-file "$W/eager_math.json"
} 2>&1 | grep -v -i warn | tee "$OUT/log.txt" | grep -E "img/s|rror|===|Traceback"
tar czf "$OUT/graph_suite.tgz" -C "$W" . && rm -rf "$W"
