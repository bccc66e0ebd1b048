#!/usr/bin/env bash
# Training-step CUDA graphs (check against eager, then GPU time of every model in one call, inference and training,
# sdpa and math attention for sret_t) and the pooling-conv variants. ~6 min on an H100.
set -u
source experiments/device_env.sh
OUT=${OUT:-train_graph_out}
W="$OUT/work"; mkdir -p "$W"
B="python3 -m sret.benchmark --batch-size 256 --warmup 5 --iters 20 --repeats 3 --cuda-graph"
{
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv
  python3 benchmarks/check_train_graph.py
  python3 benchmarks/bench_pool.py
  $B --models sret_t --attn-impl sdpa math --bench both --results-file "$W/graph_sret_t.json"
  $B --models sret_t_wo_slice deit_tiny_patch16_224 sret_s sret_s_wo_slice deit_small_patch16_224 pit_ti_224 \
    --bench both --results-file "$W/graph_others.json"
} 2>&1 | grep -v -i warn | tee "$OUT/log.txt" | grep -E "img/s|rror|OK|FAIL|losses|randperm|pool|ms|Traceback"
tar czf "$OUT/train_graph.tgz" -C "$W" . && rm -rf "$W"
