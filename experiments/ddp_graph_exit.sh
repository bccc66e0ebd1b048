#!/usr/bin/env bash
# Checks that `sret train --cuda-graph` under torchrun (2 ranks) exits by itself after training (the captured graph is
# released before the process group is destroyed). Run from the repo root on a 2-GPU machine; writes to $OUT.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
source experiments/device_env.sh
start=$SECONDS
timeout 150 torchrun --standalone --nproc_per_node=2 -m sret train --model sret_t --data fashion-mnist --img-size 64 --epochs 1 --train-subset 16384 --val-subset 1024 --lr 1e-3 --warmup-epochs 0 --aa '' --mixup 0 --cutmix 0 --reprob 0 --batch-size 256 --workers 7 --seed 0 --cuda-graph --output runs/exit_k2 > $OUT/exit_k2.log 2>&1
echo "rc=$? wall=$((SECONDS-start))s" | tee -a $OUT/exit_k2.log
grep -v "^W1124" $OUT/exit_k2.log | tail -5
