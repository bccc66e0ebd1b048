#!/usr/bin/env bash
# The measurements behind docs/benchmarks.md's "fused sublayers" section, one call on one GPU (~8 min on an H100):
# 1. CUDA-graph replays (GPU time of the eager step, host dispatch removed), fused (SRET_FUSED=1) vs plain (=0);
# 2. the same for timm's DeiT-Tiny / DeiT-Small;
# 3. plain eager rows (what a PyTorch loop gets on this host), default (fused) code, SReT and timm models;
# 4. eager with SRET_FUSED=0 for the memory/speed comparison.
# Everything lands in $OUT/fused_suite.tgz (one file) plus $OUT/log.txt.
set -u
source experiments/device_env.sh
OUT=${OUT:-fused_suite_out}
W="$OUT/work"; mkdir -p "$W"
B="python3 -m sret.benchmark --batch-size 256 --warmup 5 --iters 20 --repeats 3"
SRET="sret_t sret_t_wo_slice sret_s sret_s_wo_slice"
{
  for f in 1 0; do
    SRET_FUSED=$f $B --models $SRET --bench both --cuda-graph --results-file "$W/graph_fused$f.json"
  done
  $B --models deit_tiny_patch16_224 deit_small_patch16_224 --bench both --cuda-graph --results-file "$W/graph_timm.json"
  $B --models sret_t --attn-impl math sdpa --bench both --results-file "$W/eager_sret_t.json"
  $B --models sret_t_wo_slice sret_s sret_s_wo_slice deit_tiny_patch16_224 deit_small_patch16_224 pit_ti_224 \
     --bench both --results-file "$W/eager_rest.json"
  SRET_FUSED=0 $B --models sret_t sret_s --bench both --results-file "$W/eager_plain.json"
} 2>&1 | grep -v -i warn | tee "$OUT/log.txt" | grep -E "img/s|rror" 
tar czf "$OUT/fused_suite.tgz" -C "$W" . && rm -rf "$W"
