#!/usr/bin/env bash
# All four ablation studies on one GPU machine, in one call (repo root; writes summaries to $OUT).
# Eager SReT at these sizes is bound by the CPU's kernel dispatch, not the GPU, so several runs share the GPU:
# the studies run side by side, each with its own --parallel.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source experiments/device_env.sh
SEEDS=${SEEDS:-0 1}
DEVICE="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), torch $(python3 -c 'import torch; print(torch.__version__)')"
collect() {  # copy what the docs need (small files) to $OUT
  mkdir -p "$OUT/$1"; cp -r docs_out/ablations docs_out/img "$OUT/" 2>/dev/null
  find runs/ablate/$1 -name results.json -o -name log.csv -o -name '*.out' -o -name 'validate-*.json' | \
    while read f; do mkdir -p "$OUT/$(dirname $f)"; cp "$f" "$OUT/$f"; done
}
run() {  # study parallel seeds [arms...]
  python3 -m sret ablate --study experiments/ablations/$1.yaml --seeds $3 --parallel $2 --output runs/ablate ${4:+--arms $4} \
    --docs docs_out --device-name "$DEVICE" > $OUT/ablate_$1.log 2>&1
  echo "$1 rc=$? at ${SECONDS}s"; collect $1
}
if [ -n "${ONLY:-}" ]; then  # e.g. ONLY="components:naive-recursion-neither slicing:sret-t-16-16-1-1-1-1 depth"
  for item in $ONLY; do
    study=${item%%:*}; arm=${item#*:}; [ "$arm" = "$item" ] && arm=""
    run $study 2 "$([ $study = depth ] && echo 0 || echo "$SEEDS")" "$arm" &
  done
else
  run recursion 3 "$SEEDS" &
  run components 2 "$SEEDS" &
  run slicing 2 "$SEEDS" &
  run depth 1 "0" &
fi
wait
ls -R $OUT | head -50
