#!/usr/bin/env bash
# Issue 7 evidence on one host with K GPUs (run from the repo root on the device machine; writes to $OUT).
#   1. sret train under torchrun for K = 1 and K = 2 at the same global batch: loss curves, img/s, scaling efficiency.
#   2. kill one rank mid-epoch: the job stops; --resume continues and ends at the uninterrupted step count.
#   3. fkd-label under torchrun (2 ranks) vs one process: label shards byte-identical.
# NVLink multicast stays off (the device machine's rule): NCCL_NVLS_ENABLE=0 and friends are exported below.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source experiments/device_env.sh
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'gpus', torch.cuda.device_count())"; } > $OUT/env.txt 2>&1
cat $OUT/env.txt
EPOCHS=${EPOCHS:-3}
DATA=${DATA:-fashion-mnist}   # smoke on a CPU: DATA=sample EXTRA="--train-subset 256 --val-subset 128" EPOCHS=1 GLOBAL=64
EXTRA=${EXTRA:-}
KILL_AFTER=${KILL_AFTER:-3}
GLOBAL=${GLOBAL:-512}
RECIPE="--model sret_t --data $DATA $EXTRA --img-size 64 --epochs $EPOCHS --lr 1e-3 --warmup-epochs 1 --aa '' \
  --mixup 0 --cutmix 0 --reprob 0 --scale 0.5 1.0 --log-every 5 --seed 0"
for K in 1 2; do
  B=$((GLOBAL / K))
  cmd="torchrun --standalone --nproc_per_node=$K -m sret train $RECIPE --batch-size $B --workers 7 --output runs/ddp_k$K"
  echo "== K=$K: $cmd" | tee -a $OUT/commands.txt
  start=$SECONDS; eval $cmd > $OUT/train_k$K.log 2>&1; echo "rc=$? wall=$((SECONDS - start))s" | tee -a $OUT/commands.txt
  tail -n 8 $OUT/train_k$K.log
  cp runs/ddp_k$K/log.csv $OUT/log_k$K.csv; ls runs/ddp_k$K > $OUT/files_k$K.txt
  python3 - <<PY > $OUT/steps_k$K.csv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator("runs/ddp_k$K/tb"); acc.Reload()
print("step,loss")
for e in acc.Scalars("step/train_loss"): print(f"{e.step},{e.value:.5f}")
PY
done

# 2. kill one rank mid-epoch, then resume
cmd="torchrun --standalone --nproc_per_node=2 -m sret train $RECIPE --batch-size $((GLOBAL / 2)) --workers 7 --checkpoint-every-steps 20 --output runs/ddp_kill"
echo "== kill test: $cmd" | tee -a $OUT/commands.txt
eval $cmd > $OUT/kill_run.log 2>&1 &
TR=$!
# wait for the first periodic checkpoint, then a little more, so the kill lands mid-epoch after a checkpoint
for _ in $(seq 1 600); do [ -f runs/ddp_kill/last.pth ] && break; sleep 1; done
sleep $KILL_AFTER
TPID=$(pgrep -f "torchrun.*ddp_kill" | head -1)
VICTIM=""
for c in $(pgrep -P "$TPID"); do
  if tr '\0' '\n' < /proc/$c/environ 2>/dev/null | grep -qx LOCAL_RANK=1; then VICTIM=$c; fi
done
echo "killing rank-1 pid $VICTIM (SIGKILL), child of torchrun $TPID" | tee -a $OUT/commands.txt
kill -9 $VICTIM; wait $TR; echo "torchrun rc after kill: $?" | tee -a $OUT/commands.txt
python3 -c "from pathlib import Path; from sret.train.checkpoint import load_checkpoint as L; s=L(Path('runs/ddp_kill/last.pth')); print('last.pth step', s['step'], 'epoch', s['epoch'])" | tee -a $OUT/commands.txt
cmd="torchrun --standalone --nproc_per_node=2 -m sret train --resume runs/ddp_kill --workers 7"
echo "== resume: $cmd" | tee -a $OUT/commands.txt
eval $cmd > $OUT/resume.log 2>&1; echo "rc=$?" | tee -a $OUT/commands.txt
tail -n 6 $OUT/resume.log
cp runs/ddp_kill/log.csv $OUT/log_kill_resumed.csv

# 3. FKD labels: 2 ranks vs 1 process, teacher = the K=1 run's best checkpoint
FKD="--teacher runs/ddp_k1/best.pth --teacher-model sret_t --in-chans 1 --data $DATA --num-crops ${NUM_CROPS:-16} --top-k 5 --shard-size 5000 --amp --workers 6"
python3 -m sret fkd-label $FKD --output runs/fkd_single > $OUT/fkd_single.log 2>&1; echo "single rc=$?" | tee -a $OUT/commands.txt
torchrun --standalone --nproc_per_node=2 -m sret fkd-label $FKD --output runs/fkd_ddp > $OUT/fkd_ddp.log 2>&1; echo "ddp rc=$?" | tee -a $OUT/commands.txt
tail -n 2 $OUT/fkd_single.log $OUT/fkd_ddp.log
python3 - <<'PY' | tee $OUT/fkd_compare.txt
import hashlib, pathlib
a, b = pathlib.Path("runs/fkd_single"), pathlib.Path("runs/fkd_ddp")
fa = sorted(p.name for p in a.iterdir() if p.suffix == ".npy"); fb = sorted(p.name for p in b.iterdir() if p.suffix == ".npy")
same = fa == fb and all(hashlib.sha256((a / n).read_bytes()).digest() == hashlib.sha256((b / n).read_bytes()).digest() for n in fa)
print(f"shards: {len(fa)} vs {len(fb)}; byte-identical: {same}")
PY

# 4. optional (SCALE224=1): the same K = 1 / 2 comparison at 224 px on a subset, where the GPU, not the loader, sets the pace
if [ "${SCALE224:-0}" = 1 ]; then
  for K in 1 2; do
    B=$((GLOBAL / K))
    cmd="torchrun --standalone --nproc_per_node=$K -m sret train ${RECIPE/--img-size 64/--img-size 224} --train-subset 30720 \
      --val-subset 2048 --epochs 2 --batch-size $B --workers 7 --output runs/ddp224_k$K"
    echo "== 224 px K=$K: $cmd" | tee -a $OUT/commands.txt
    start=$SECONDS; eval $cmd > $OUT/train224_k$K.log 2>&1; echo "rc=$? wall=$((SECONDS - start))s" | tee -a $OUT/commands.txt
    cp runs/ddp224_k$K/log.csv $OUT/log224_k$K.csv
  done
fi
ls -la $OUT
