#!/usr/bin/env bash
# Issue 5 evidence (FKD) on one GPU, run from the repo root (PYTHONPATH=src is set below); writes to $OUT:
#   1. teacher: sret_s at 64 px on Fashion-MNIST (light recipe);
#   2. `sret fkd-label` with it (40 crops/image, top-5): bytes/image and images/s as printed;
#   3. student sret_t, same light recipe and the same epochs(-equivalent), three ways: FKD replay (--fkd-labels,
#      4 crops/image: one pass = 4 epochs-equivalent), online KD (--teacher best.pth), no KD;
#   4. $OUT/fkd_evidence.json: per run final/best val top-1 and wall-clock (process start to exit), plus the labels'
#      cost; log.csv of every run copied to $OUT.
# Budget: ~9 minutes on one H100. Label generation costs images x crops teacher forwards, so every run uses the first
# N_TRAIN training images (a gz IDX copy read through $SRET_FASHION_MNIST) and N_VAL validation images.
# Worst-case estimate at N_TRAIN=10000 (sret_t 3k img/s train, sret_s ~1k train / 3k inference): teacher ~80 s,
# labels ~130 s, students ~35 / 60 / 35 s, start-ups ~6 x 12 s: ~7 min. Override any knob below by env var.
# CPU smoke test: SMOKE=1 bash experiments/fkd_evidence.sh (embedded sample data, tiny subsets, 32 px, 1-2 epochs).
set -u
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ "${SMOKE:-0}" = 1 ]; then DEFAULT_DIR=/tmp/fkd_evidence_smoke; else DEFAULT_DIR=runs; fi
OUT=${OUT:-$DEFAULT_DIR/fkd_evidence_out}; RUNS=${RUNS:-$DEFAULT_DIR/fkd_evidence}; mkdir -p "$OUT"
source experiments/device_env.sh

if [ "${SMOKE:-0}" = 1 ]; then
  SRC_DIR=${SRC_DIR:-src/sret/data/sample}
  : "${N_TRAIN:=64}" "${N_VAL:=32}" "${IMG:=32}" "${T_EPOCHS:=1}" "${S_EPOCHS:=2}" "${LABEL_CROPS:=8}"
  : "${NUM_CROPS:=2}" "${BATCH:=16}" "${WORKERS:=0}" "${LABEL_BATCH:=256}" "${AMP:=}" "${WARMUP:=0}"
else
  SRC_DIR=${SRC_DIR:-.carry/fashion-mnist}
  : "${N_TRAIN:=10000}" "${N_VAL:=5000}" "${IMG:=64}" "${T_EPOCHS:=6}" "${S_EPOCHS:=8}" "${LABEL_CROPS:=40}"
  : "${NUM_CROPS:=4}" "${BATCH:=256}" "${WORKERS:=12}" "${LABEL_BATCH:=2000}" "${AMP:=--amp}" "${WARMUP:=1}"
fi
TEACHER=${TEACHER:-sret_s}; STUDENT=${STUDENT:-sret_t}; TOPK=${TOPK:-5}
if [ $((S_EPOCHS % NUM_CROPS)) != 0 ]; then echo "S_EPOCHS must be a multiple of NUM_CROPS" >&2; exit 2; fi
rm -rf "$RUNS"; mkdir -p "$RUNS"
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null; nproc
  $PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# the first N_TRAIN / N_VAL images of SRC_DIR as gz IDX files: `--data fashion-mnist` reads them via SRET_FASHION_MNIST
export SRET_FASHION_MNIST=$RUNS/fashion-mnist-subset
$PY - "$SRC_DIR" "$SRET_FASHION_MNIST" "$N_TRAIN" "$N_VAL" <<'EOF' || exit 1
import sys
from pathlib import Path
import torch
from sret.data.fashion_mnist import read_idx_split
from sret.data.make_sample import write_idx_gz
src, dst, n_train, n_val = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dst.mkdir(parents=True, exist_ok=True)
for split, n in (("train", n_train), ("t10k", n_val)):
    x, y = read_idx_split(src, split)
    write_idx_gz(dst / f"{split}-images-idx3-ubyte.gz", x[:n])
    write_idx_gz(dst / f"{split}-labels-idx1-ubyte.gz", y[:n].to(torch.uint8))
    print(f"data: {split} {min(n, len(x))} of {len(x)} images from {src}; classes {torch.bincount(y[:n]).tolist()}")
EOF

RECIPE="--data fashion-mnist --img-size $IMG --in-chans 1 --batch-size $BATCH --workers $WORKERS --lr 1e-3 \
  --warmup-epochs $WARMUP --aa '' --mixup 0 --cutmix 0 --reprob 0 --scale 0.5 1.0 --seed 0 --log-every 20"
declare -A WALL RC
step() {  # step NAME COMMAND...: run, time, log to $OUT/NAME.log, print the tail
  local name=$1; shift
  echo "== [$(date -u +%T)] $name: $*" | tee -a "$OUT/commands.txt"
  local start=$SECONDS
  eval "$@" > "$OUT/$name.log" 2>&1
  RC[$name]=$?; WALL[$name]=$((SECONDS - start))
  echo "   rc=${RC[$name]} wall=${WALL[$name]}s" | tee -a "$OUT/commands.txt"
  grep -E "^epoch [0-9]|fkd-label: (wrote|teacher)|best val|Error|error" "$OUT/$name.log" | tail -n 12
  if [ -f "$RUNS/$name/log.csv" ]; then cp "$RUNS/$name/log.csv" "$OUT/log_$name.csv"; fi
}

step teacher $PY -m sret train --model $TEACHER $RECIPE --epochs $T_EPOCHS --output $RUNS/teacher
step labels $PY -m sret fkd-label --teacher $RUNS/teacher/best.pth --teacher-model $TEACHER --num-classes 10 --in-chans 1 \
  --teacher-img-size $IMG --data fashion-mnist --output $RUNS/labels --num-crops $LABEL_CROPS --top-k $TOPK \
  --batch-size $LABEL_BATCH --workers $WORKERS $AMP
step student_fkd $PY -m sret train --model $STUDENT $RECIPE --epochs $S_EPOCHS --fkd-labels $RUNS/labels \
  --num-crops $NUM_CROPS --soft-label marginal --output $RUNS/student_fkd
step student_kd $PY -m sret train --model $STUDENT $RECIPE --epochs $S_EPOCHS --teacher $RUNS/teacher/best.pth \
  --output $RUNS/student_kd
step student_plain $PY -m sret train --model $STUDENT $RECIPE --epochs $S_EPOCHS --output $RUNS/student_plain

WALLS=""; for k in "${!WALL[@]}"; do WALLS="$WALLS $k=${WALL[$k]}:${RC[$k]}"; done
$PY - "$OUT" "$RUNS" "$WALLS" <<EOF
import csv, json, re, sys
from pathlib import Path
out, runs = Path(sys.argv[1]), Path(sys.argv[2])
walls = {k: (int(w), int(rc)) for k, w, rc in (re.split("[=:]", item) for item in sys.argv[3].split())}
result = {"settings": {"teacher": "$TEACHER", "student": "$STUDENT", "img_size": $IMG, "train_images": $N_TRAIN,
                       "val_images": $N_VAL, "teacher_epochs": $T_EPOCHS, "student_epochs_equivalent": $S_EPOCHS,
                       "label_crops": $LABEL_CROPS, "top_k": $TOPK, "replay_crops": $NUM_CROPS, "batch": $BATCH,
                       "workers": $WORKERS, "smoke": "${SMOKE:-0}" == "1"}, "runs": {}}
for name in ("teacher", "student_fkd", "student_kd", "student_plain"):
    rows = list(csv.DictReader(open(runs / name / "log.csv"))) if (runs / name / "log.csv").is_file() else []
    top1 = [float(r["val_top1"]) for r in rows]
    result["runs"][name] = {"final_top1": top1[-1] if top1 else None, "best_top1": max(top1) if top1 else None,
                            "epochs": int(rows[-1]["epoch"]) if rows else None,
                            "steps": int(rows[-1]["step"]) if rows else None,
                            "train_seconds": round(sum(float(r["seconds"]) for r in rows), 1),
                            "wall_s": walls.get(name, (None, None))[0], "rc": walls.get(name, (None, None))[1]}
log = (out / "labels.log").read_text() if (out / "labels.log").is_file() else ""
m = re.search(r"([\d.]+) bytes/image \(([\d.]+) MiB\); ([\d.]+) images/s", log)
result["labels"] = {"wall_s": walls.get("labels", (None, None))[0], "rc": walls.get("labels", (None, None))[1],
                    "bytes_per_image": float(m.group(1)) if m else None, "mib_total": float(m.group(2)) if m else None,
                    "images_per_s": float(m.group(3)) if m else None,
                    "line": next((l for l in log.splitlines() if "fkd-label: wrote" in l), None)}
(out / "fkd_evidence.json").write_text(json.dumps(result, indent=2))
print(json.dumps(result, indent=2))
EOF
