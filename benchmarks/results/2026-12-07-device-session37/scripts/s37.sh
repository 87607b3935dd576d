#!/bin/bash
# Session 37's device calls, from main's working tree with .whl (the server's wheels) beside it: carry [".whl"].
#   t (any GPU): the server-engine test, whose "cuda-kernels" case (new this session) serves a head_dim-64 tiny model
#     through the fused decode kernels, with test_decode_kernels beside it; `timeout ${T:-300}`
#   anything else: session 34's s34.sh with that mode, unchanged (3 and 7: target 11; 2: target 10 and the wide-tile
#     decode A/B; 5: target 9; all H200 only)
[ "$1" = t ] || exec bash $(dirname $0)/../../2026-12-07-device-session34/scripts/s34.sh "$1"
exec > >(tee -a $OUT/log-s37-t.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
PYTHONPATH=/tmp/site:src timeout ${T:-300} python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 240 -rs \
  tests/infer/test_server_engine.py tests/ops/test_decode_kernels.py > $OUT/pytest-t.txt 2>&1
grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error|assert" $OUT/pytest-t.txt | tail -40
echo "end $(date +%T)"
