#!/usr/bin/env bash
# A/B of two source trees in one call, GPU time only (CUDA-graph replays of the inference and training steps):
# BASE (default ab_base/src, a copy of the previous commit's src/ made beforehand) against the working tree's src/,
# interleaved base, new, new, base, plus bf16 correctness of the new tree and a profile of its training step.
#   git archive HEAD src | tar -x -C ab_base    # before editing (ab_base/ is git-ignored: carry it to the device)
set -u
source experiments/device_env.sh
OUT=${OUT:-ab_out}
BASE=${BASE:-$PWD/ab_base/src}
MODELS=${MODELS:-sret_t sret_s}
W="$OUT/work"; mkdir -p "$W"
B="python3 -m sret.benchmark --batch-size 256 --warmup 5 --iters 20 --repeats 3 --cuda-graph --bench both"
{
  python3 benchmarks/check_fused.py --batch-size 8
  python3 benchmarks/check_fused.py --batch-size 8 --model sret_s
  for r in 1 2; do
    if [ $r = 1 ]; then order="base new"; else order="new base"; fi
    for v in $order; do
      if [ $v = base ]; then pp="$BASE:$PYTHONPATH"; else pp="$PYTHONPATH"; fi
      echo "=== $v round $r"
      PYTHONPATH=$pp $B --models $MODELS --results-file "$W/graph_${v}_r$r.json"
    done
  done
  python3 benchmarks/profile_step.py --out "$W" --models ${PROFILE_MODELS:-sret_t} ${PROFILE_BENCHES:+--benches $PROFILE_BENCHES}
} 2>&1 | grep -v -i warn | tee "$OUT/log.txt" | grep -E "img/s|rror|OK|FAIL|logits|median|===|Traceback"
tar czf "$OUT/ab.tgz" -C "$W" . && rm -rf "$W"
