#!/usr/bin/env bash
# A/B of the training step as CUDA graphs in one call (runs 72-74): the GPU checks first (check_fused.py for sret_t
# and sret_s, check_train_graph.py), then base / new / new / base for sret_t and sret_s (base = ab_base/src, a copy
# of the previous commit's src/: `git archive HEAD src | tar -x -C ab_base`, carried to the device), then target 1's
# plain baseline and the default beside it, and a profile of one training step. ~6 min on an H100.
source experiments/device_env.sh; export OUT
{
python3 benchmarks/check_fused.py --batch-size 8
python3 benchmarks/check_fused.py --batch-size 8 --model sret_s
python3 benchmarks/check_train_graph.py --models sret_t
} > $OUT/checks.txt 2>&1
grep -E "OK|FAIL|rror|Traceback" $OUT/checks.txt | head -20
B="python3 -m sret.benchmark --batch-size 256 --warmup 5 --iters 20 --repeats 3 --bench train --cuda-graph --models sret_t sret_s"
r=0
for v in base new new base; do
  r=$((r+1))
  if [ $v = base ]; then pp="$PWD/ab_base/src:$PYTHONPATH"; else pp="$PYTHONPATH"; fi
  echo "=== $v $r"
  PYTHONPATH=$pp $B --results-file $OUT/graph_${v}_$r.json 2>&1 | grep -E "img/s" | head -6
done
SRET_FUSED=0 SRET_FUSED_KERNELS=0 SRET_FAST_LN=0 python3 -m sret.benchmark --batch-size 256 --warmup 5 --iters 20 --repeats 3 --bench train --cuda-graph --models sret_t --attn-impl math --results-file $OUT/plain_train.json 2>&1 | grep -E "img/s"
python3 -m sret.benchmark --batch-size 256 --warmup 5 --iters 20 --repeats 3 --bench train --cuda-graph --models sret_t --results-file $OUT/default_train.json 2>&1 | grep -E "img/s"
python3 benchmarks/profile_step.py --out $OUT --models sret_t --benches train --rows 150 > $OUT/profile_log.txt 2>&1; tail -2 $OUT/profile_log.txt | cut -c1-150
