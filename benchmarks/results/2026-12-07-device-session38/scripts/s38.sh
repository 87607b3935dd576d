#!/bin/bash
# Session 38's device calls, from main's working tree with .whl (the server's wheels) beside it: carry [".whl"].
#   h (any GPU): `pytest -m gpu` over the tests whose fixtures changed this session (the wide tiny model's sizes
#     spelled once: test_decode_kernels, test_server_engine), then batch-1 decode with the GEMV tiles picked from
#     main's candidates and from session 30's wider list (decode_ab.py, unchanged), alternated in one process, at
#     a 128-token prompt: does the wider list lose anything on this card?
#   anything else: session 37's s37.sh with that mode (t: the same tests alone; 3, 7: target 11; 2: target 10 and the
#     wide-tile A/B; 5: target 9; all but t H200 only)
[ "$1" = h ] || exec bash $(dirname $0)/../../2026-12-07-device-session37/scripts/s37.sh "$1"
exec > >(tee -a $OUT/log-s38-h.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
PYTHONPATH=/tmp/site:src timeout 200 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 150 -rs \
  tests/infer/test_server_engine.py tests/ops/test_decode_kernels.py > $OUT/pytest-h.txt 2>&1
grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error|assert" $OUT/pytest-h.txt | tail -40
echo "tests end $(date +%T)"
AB=$(dirname $0)/../../2026-12-06-h100-session30/scripts/decode_ab.py
PYTHONPATH=src timeout ${T:-240} python3 $AB $OUT/decode_ab.json 128 main:0,wide:0 2>&1 | grep -vE "it/s" \
  > $OUT/decode_ab.txt
grep -E "equal|tok_s" $OUT/decode_ab.txt | tail -20
echo "end $(date +%T)"
