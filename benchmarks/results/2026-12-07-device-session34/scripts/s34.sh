#!/bin/bash
# Session 34's device calls, from the working tree (calls 1-2: branch s34 at c14922b, main 3245973 with branch
# lazy-compile merged and the size-spelling commits; now main) with .whl (the server's wheels) beside it:
# carry [".whl"].
#   1 (any GPU): the whole `pytest -m gpu` (~530 s on an H100) under `timeout ${T:-580}`
#   6 (any GPU): `pytest -m gpu` over the modules the branch's change reaches (the fp8 refresh, the folded-norm
#     copies, the cross-entropy, OpSettings), for when the budget cannot hold the whole suite
#   7 (H200 only): target 11 with one variant, keepmm36 + dlogits8, and transformers' reference, for a budget that
#     cannot hold mode 3's two variants (~580 s); `timeout ${T:-450}`
#   2, 3, 5 (H200 only: target 10 with the wide-tile decode A/B, target 11, target 9): session 32's s32.sh, unchanged
#     (its log is log-s32-N.txt)
# pytest's whole output goes to $OUT as it runs, so a call cut short still returns what passed.
if [ "$1" = 7 ]; then
  exec > >(tee -a $OUT/log-s34-7.txt) 2>&1
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
  nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 || { echo "not an H200: nothing run"; exit 0; }
  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
  PYTHONPATH=src:benchmarks timeout ${T:-450} python3 benchmarks/bench_train.py --seq 32768 --docs full \
    --hf-reference --variants compile-sac-keepmm36-dlogits8-ga2 --steps 5 --out $OUT/bench_train_32k_keepmm.json \
    > $OUT/bench_train-7.txt 2>&1
  grep -vE "it/s|^W1|step/s" $OUT/bench_train-7.txt | tail -30
  exit 0
fi
[ "$1" = 1 ] || [ "$1" = 6 ] || exec bash $(dirname $0)/../../2026-12-06-device-session32/scripts/s32.sh "$1"
exec > >(tee -a $OUT/log-s34-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
TESTS=tests
[ "$1" = 6 ] && TESTS="tests/train/test_precision.py tests/ops/test_fp8.py tests/ops/test_cross_entropy.py
  tests/train/test_graphs.py tests/train/test_trainer.py tests/ops/test_settings.py tests/train/test_compile_gpu.py"
PYTHONPATH=/tmp/site:src timeout ${T:-580} python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 240 -rs $TESTS \
  > $OUT/pytest-$1.txt 2>&1
grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" $OUT/pytest-$1.txt | tail -90
echo "end $(date +%T)"
