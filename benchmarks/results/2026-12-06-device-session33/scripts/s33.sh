#!/bin/bash
# Session 33's device calls, from main's working tree with .whl (the server's wheels) beside it: carry [".whl"].
#   1 (any GPU): the whole `pytest -m gpu` (~530 s on an H100), then the autocast path's cross-entropy backward with
#     the head gradient added as before session 31 and as now (ce_autocast.py)
#   6 (any GPU): `pytest -m gpu` over the modules that reach the fp8 refresh, the folded-norm copies and the
#     cross-entropy (branch lazy-compile's change), cut from 440 to 120 s as the budget ran out
#   2, 3, 5 (H200 only: target 10 with the wide-tile decode A/B, target 11, target 9): session 32's s32.sh, unchanged
#     (its log is log-s32-N.txt)
[ "$1" = 1 ] || [ "$1" = 6 ] || exec bash $(dirname $0)/../../2026-12-06-device-session32/scripts/s32.sh "$1"
exec > >(tee -a $OUT/log-s33-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
if [ "$1" = 1 ]; then
  PYTHONPATH=/tmp/site:src timeout 570 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 240 -rs tests 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" | tail -90
  PYTHONPATH=src timeout 60 python3 $(dirname $0)/../../2026-12-06-device-session32/scripts/ce_autocast.py $OUT/ce_autocast.json 2>&1 | tail -8
else
  PYTHONPATH=/tmp/site:src timeout 120 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 240 -rs \
    tests/ops/test_fp8.py tests/train/test_precision.py tests/ops/test_cross_entropy.py tests/train/test_compile_gpu.py \
    tests/ops/test_linear.py tests/ops/test_swiglu.py tests/train/test_trainer.py tests/train/test_graphs.py 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" | tail -90
fi
echo "end $(date +%T)"
