#!/usr/bin/env bash
# Issue 7, second call: DDP scaling with the training step as a CUDA graph (sret train --cuda-graph under torchrun),
# against eager DDP, and fkd-label from a 64 px checkpoint teacher (1 process vs 2 ranks). Run from the repo root on a
# machine with 2 GPUs; writes to $OUT. Sections run in priority order and each is skipped when too little of the
# BUDGET (seconds) is left, so one device call always returns what it finished.
#   0. the training loader alone (benchmarks/bench_loader.py): the img/s that $WORKERS workers deliver, the ceiling
#      of any K=1 figure below.
#   A. 224 px, 30,720-image subset, 2 epochs, global batch 512: --cuda-graph at K = 1, 2 (EAGER=1: also eager).
#   B. 64 px, all of Fashion-MNIST, 3 epochs, global batch 512, --cuda-graph at K = 1, 2 (loss curves, scaling).
#   C. fkd-label with B's K = 1 checkpoint as teacher: 1 process vs torchrun with 2 ranks, shards byte-identical.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source experiments/device_env.sh
BUDGET=${BUDGET:-540}; DEADLINE=$((SECONDS + BUDGET))
left() { echo $((DEADLINE - SECONDS)); }
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'gpus', torch.cuda.device_count(), 'nccl', torch.cuda.nccl.version())"; } > $OUT/env.txt 2>&1
cat $OUT/env.txt
DATA=${DATA:-fashion-mnist}
WORKERS=${WORKERS:-15}  # per rank; 2 x 15 + 2 main processes fill a 32-core host
# Colour jitter off (CJ=0.3 to put it back): on grey Fashion-MNIST at 224 px it is ~45% of a worker's per-image cost
# (docs/benchmarks.md), and with it 7 workers capped the K=1 run below the GPU's pace (2026-11-24 calls).
CJ=${CJ:-0}
GLOBAL=${GLOBAL:-512}
BASE="--model sret_t --data $DATA --lr 1e-3 --warmup-epochs 1 --aa '' --mixup 0 --cutmix 0 --reprob 0 --scale 0.5 1.0 \
  --color-jitter $CJ --log-every 5 --seed 0 --workers $WORKERS"
train() {  # name K need_seconds extra-flags...
  local name=$1 K=$2 need=$3; shift 3
  if [ "$(left)" -lt "$need" ]; then echo "== $name: skipped, $(left) s left" | tee -a $OUT/commands.txt; return; fi
  local cmd="torchrun --standalone --nproc_per_node=$K -m sret train $BASE --batch-size $((GLOBAL / K)) $* --output runs/$name"
  echo "== $name: $cmd" | tee -a $OUT/commands.txt
  local start=$SECONDS
  eval timeout $(left) $cmd > $OUT/$name.log 2>&1
  echo "rc=$? wall=$((SECONDS - start))s" | tee -a $OUT/commands.txt
  [ -f runs/$name/log.csv ] && { echo "-- $name"; cat runs/$name/log.csv; } >> $OUT/logs.csv
  tail -n 4 $OUT/$name.log
}
python3 benchmarks/bench_loader.py --data $DATA --img-size 224 --batch-size $GLOBAL --workers $WORKERS --color-jitter $CJ \
  --batches 30 --results-file $OUT/loader.json 2>&1 | tail -n 3 | tee -a $OUT/commands.txt
S224="--img-size 224 --train-subset 30720 --val-subset 2048 --epochs 2"
train g224_k1 1 60 $S224 --cuda-graph
train g224_k2 2 60 $S224 --cuda-graph
if [ "${EAGER:-0}" = 1 ]; then train e224_k1 1 60 $S224; train e224_k2 2 60 $S224; fi
S64="--img-size 64 --epochs 3"
train g64_k1 1 80 $S64 --cuda-graph
train g64_k2 2 80 $S64 --cuda-graph
for K in 1 2; do
  [ -d runs/g64_k$K/tb ] && python3 - <<PY > $OUT/steps_g64_k$K.csv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator("runs/g64_k$K/tb"); acc.Reload()
print("step,loss")
for e in acc.Scalars("step/train_loss"): print(f"{e.step},{e.value:.5f}")
PY
done

fkd() {  # data num_crops tag
  local data=$1 crops=$2 tag=$3
  if [ ! -f runs/g64_k1/best.pth ] || [ "$(left)" -lt 60 ]; then echo "== fkd $tag: skipped" | tee -a $OUT/commands.txt; return; fi
  local args="--teacher runs/g64_k1/best.pth --teacher-model sret_t --in-chans 1 --data $data --num-crops $crops \
    --top-k 5 --shard-size 500 --amp --workers 6"
  echo "== fkd $tag: fkd-label $args" | tee -a $OUT/commands.txt
  local start=$SECONDS
  timeout $(( $(left) / 2 )) python3 -m sret fkd-label $args --output runs/fkd1_$tag > $OUT/fkd1_$tag.log 2>&1
  echo "single rc=$? wall=$((SECONDS - start))s" | tee -a $OUT/commands.txt; start=$SECONDS
  timeout $(left) torchrun --standalone --nproc_per_node=2 -m sret fkd-label $args --output runs/fkd2_$tag \
    > $OUT/fkd2_$tag.log 2>&1
  echo "2 ranks rc=$? wall=$((SECONDS - start))s" | tee -a $OUT/commands.txt
  tail -n 3 $OUT/fkd1_$tag.log $OUT/fkd2_$tag.log
  python3 - "$tag" <<'PY' | tee -a $OUT/commands.txt
import hashlib, pathlib, sys
tag = sys.argv[1]
a, b = pathlib.Path(f"runs/fkd1_{tag}"), pathlib.Path(f"runs/fkd2_{tag}")
fa = sorted(p.name for p in a.glob("*.npy")); fb = sorted(p.name for p in b.glob("*.npy"))
same = bool(fa) and fa == fb and all(hashlib.sha256((a / n).read_bytes()).digest()
                                     == hashlib.sha256((b / n).read_bytes()).digest() for n in fa)
print(f"fkd {tag}: shards {len(fa)} vs {len(fb)}; byte-identical: {same}")
PY
}
fkd sample 16 sample
fkd "$DATA" 2 full
ls -la $OUT
