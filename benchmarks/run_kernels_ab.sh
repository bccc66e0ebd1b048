#!/usr/bin/env bash
# One-launch sublayer kernels (SRET_FUSED_KERNELS=1, default) against the fused sublayers made of PyTorch ops (=0):
# bf16 correctness on the GPU, CUDA-graph inference (GPU time), eager A B A B, and a profile. ~6 min on an H100.
set -u
source experiments/device_env.sh
OUT=${OUT:-kernels_ab_out}
W="$OUT/work"; mkdir -p "$W"
B="python3 -m sret.benchmark --batch-size 256 --warmup 5 --iters 20 --repeats 3"
{
  python3 benchmarks/check_fused.py --batch-size 8
  python3 benchmarks/check_fused.py --batch-size 8 --model sret_s
  for k in 1 0; do
    SRET_FUSED_KERNELS=$k $B --models sret_t sret_t_wo_slice sret_s sret_s_wo_slice --bench infer --cuda-graph \
      --results-file "$W/graph_k$k.json"
  done
  for r in 1 2; do
    for k in 1 0; do
      SRET_FUSED_KERNELS=$k $B --models sret_t sret_s --bench both --results-file "$W/eager_k${k}_r$r.json"
    done
  done
  python3 benchmarks/profile_step.py --out "$W" --models sret_t
} 2>&1 | grep -v -i warn | tee "$OUT/log.txt" | grep -E "img/s|rror|OK|FAIL|logits|median|===" 
tar czf "$OUT/kernels_ab.tgz" -C "$W" . && rm -rf "$W"
