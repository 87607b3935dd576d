#!/bin/bash
# Issue 25, acceptance 2 on the GPU: the tree before the ops/ refactor (34b9ce3, in .carry/baseline: src and
# benchmarks, with 2f4d597's pipelined-read fix applied by hand) against this one, in one lease.
# Run from the repo root with carry [".carry", ".whl"]:
#   bash .carry/issue25_ab.sh golden   (~4 min: flex attention (fixed-order backward), old, new, new, old, each
#                                       checked against the first; the default backend differs run to run: session 18)
#   bash .carry/issue25_ab.sh train    (~6 min: train target 1 bf16 and FP8, old then new)
#   bash .carry/issue25_ab.sh decode   (~6 min: bench_infer --only-ours, old, new, new, old)
exec > >(tee -a $OUT/log-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv
OLD=.carry/baseline
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
if [ "$1" = golden ]; then
  G="timeout 110 python3 benchmarks/golden_curve.py --attn-backend flex"
  PYTHONPATH=$OLD/src $G --out $OUT/golden-flex-old-1.json | tail -1
  for run in new-1 new-2 old-2; do
    if [[ $run = old* ]]; then P=$OLD; else P=.; fi
    PYTHONPATH=$P/src $G --against $OUT/golden-flex-old-1.json --out $OUT/golden-flex-$run.json | tail -1
  done
elif [ "$1" = train ]; then
  V=compile-noac-ga16-fused-graphs,compile-noac-ga16-fused-graphs-fp8row
  for tree in old new; do
    echo "bench_train $tree $(date +%T)"
    if [ $tree = old ]; then P=$OLD; else P=.; fi
    PYTHONPATH=$P/src:$P/benchmarks timeout 200 python3 $P/benchmarks/bench_train.py --steps 6 --variants $V \
      --out $OUT/train-$tree.json 2>&1 | grep -E "tok/s  MFU|Error"
  done
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  for run in old-1 new-1 new-2 old-2; do
    echo "bench_infer $run $(date +%T)"
    if [[ $run = old* ]]; then P=$OLD; else P=.; fi
    PYTHONPATH=/tmp/site:$P/src:$P/benchmarks timeout 140 python3 $P/benchmarks/bench_infer.py --skip-hf --only-ours \
      --out $OUT/infer-$run.json 2>&1 | grep -E "^ours|Error" | tail -3
  done
fi
echo "end $(date +%T)"
