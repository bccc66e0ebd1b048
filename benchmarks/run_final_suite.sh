#!/usr/bin/env bash
# Every model of issue 3 in one call with the current code: CUDA-graph replays (GPU time) and eager steps, inference
# and training, sret_t with sdpa and math attention, and sret_t as the plain modules with math attention (target 1's
# baseline: every kernel of ours off). ~9 min on an H100; PARTS="graph" or "eager" runs half of it (one call each
# stays under the device tool's 10 minutes). COMPILE=1 instead: the torch.compile rows (COMPILE_MODE=reduce-overhead
# etc. for a torch.compile mode).
set -u
source experiments/device_env.sh
OUT=${OUT:-final_suite_out}
W="$OUT/work"; mkdir -p "$W"
B="python3 -m sret.benchmark --batch-size 256 --warmup 5 --iters 20 --repeats 3 --bench both"
ALL="sret_t_wo_slice sret_s sret_s_wo_slice deit_tiny_patch16_224 deit_small_patch16_224 pit_ti_224"
{
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv
  if [ "${COMPILE:-0}" = 1 ]; then
    C="--compile --warmup 3 ${COMPILE_MODE:+--compile-mode $COMPILE_MODE}"
    $B $C --models sret_t sret_t_wo_slice deit_tiny_patch16_224 --results-file "$W/compile_t.json"
    $B $C --models sret_s deit_small_patch16_224 --bench infer --results-file "$W/compile_s.json"
  else
    PLAIN="env SRET_FUSED=0 SRET_FUSED_KERNELS=0 SRET_FAST_LN=0"
    if [[ "${PARTS:-graph eager}" == *graph* ]]; then
      $B --cuda-graph --models sret_t --attn-impl sdpa math --results-file "$W/graph_sret_t.json"
      $B --cuda-graph --models $ALL --results-file "$W/graph_others.json"
      $PLAIN $B --cuda-graph --models sret_t --attn-impl math --results-file "$W/graph_sret_t_plain.json"
    fi
    if [[ "${PARTS:-graph eager}" == *eager* ]]; then
      $B --models sret_t --attn-impl sdpa math --results-file "$W/eager_sret_t.json"
      $B --models $ALL --results-file "$W/eager_others.json"
      $PLAIN $B --models sret_t --attn-impl math --results-file "$W/eager_sret_t_plain.json"
    fi
  fi
} 2>&1 | grep -v -i warn | tee "$OUT/log.txt" | grep -E "img/s|rror|Traceback"
tar czf "$OUT/final_suite.tgz" -C "$W" . && rm -rf "$W"
