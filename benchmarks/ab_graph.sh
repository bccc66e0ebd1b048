#!/usr/bin/env bash
# A/B of two source trees in one call: BASE (default ab_base/src, a copy of the previous commit's src/ made
# beforehand) against the working tree's src/, interleaved base, new, new, base, plus bf16 correctness of the new
# tree and a profile of one of its steps.
#   git archive HEAD src | tar -x -C ab_base    # before editing (ab_base/ is git-ignored: carry it to the device)
# MODES: "graph" (CUDA-graph replays: the GPU's time), "eager" (the plain loop: the host's time shows), or both;
# BENCH: infer, train or both.
set -u
source experiments/device_env.sh
OUT=${OUT:-ab_out}
BASE=${BASE:-$PWD/ab_base/src}
MODELS=${MODELS:-sret_t sret_s}
MODES=${MODES:-graph}
BENCH=${BENCH:-both}
W="$OUT/work"; mkdir -p "$W"
B="python3 -m sret.benchmark --batch-size 256 --warmup 5 --iters 20 --repeats 3 --bench $BENCH"
{
  python3 benchmarks/check_fused.py --batch-size 8
  python3 benchmarks/check_fused.py --batch-size 8 --model sret_s
  for check in ${CHECKS:-}; do python3 "$check"; done
  for mode in $MODES; do
    if [ "$mode" = graph ]; then flag=--cuda-graph; else flag=; fi
    for r in 1 2; do
      if [ $r = 1 ]; then order="base new"; else order="new base"; fi
      for v in $order; do
        if [ $v = base ]; then pp="$BASE:$PYTHONPATH"; else pp="$PYTHONPATH"; fi
        echo "=== $mode $v round $r"
        PYTHONPATH=$pp $B $flag --models $MODELS --results-file "$W/${mode}_${v}_r$r.json"
      done
    done
  done
  python3 benchmarks/profile_step.py --out "$W" --models ${PROFILE_MODELS:-sret_t} ${PROFILE_BENCHES:+--benches $PROFILE_BENCHES}
} 2>&1 | grep -v -i warn | tee "$OUT/log.txt" | grep -E "img/s|rror|OK|FAIL|logits|median|===|Traceback|check"
tar czf "$OUT/ab.tgz" -C "$W" . && rm -rf "$W"
