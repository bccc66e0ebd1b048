#!/usr/bin/env bash
# `sret train` eager against `sret train --cuda-graph` on one GPU: same data, seed and recipe, sret_t at 224 px,
# batch 256, one epoch of 100 steps (Fashion-MNIST upsampled, RandAugment off so the loader keeps up). Compares the
# loss curves (log.csv, TensorBoard step scalars) and img/s. ~4 min on an H100.
set -u
source experiments/device_env.sh
OUT=${OUT:-train_cuda_graph_out}
MODEL=${MODEL:-sret_t}
COMMON="--model $MODEL --data fashion-mnist --img-size 224 --batch-size 256 --epochs ${EPOCHS:-2} --warmup-epochs 0
  --train-subset ${SUBSET:-25600} --val-subset 2560 --aa '' --reprob 0 --workers 14 --log-every 5 --seed 0"
{
  for mode in eager graph eager2 graph2; do
    flag=""; [ "${mode#graph}" != "$mode" ] && flag="--cuda-graph"
    echo "=== $mode"
    eval python3 -m sret train $COMMON $flag --output "$OUT/$mode" 2>&1 | tail -4
    cat "$OUT/$mode/log.csv"
  done
} 2>&1 | grep -v -i warn | tee "$OUT/log.txt"
for mode in eager graph eager2 graph2; do rm -f "$OUT/$mode"/*.pth; done
tar czf "$OUT/runs.tgz" -C "$OUT" eager graph eager2 graph2 && rm -rf "$OUT"/eager "$OUT"/graph "$OUT"/eager2 "$OUT"/graph2
