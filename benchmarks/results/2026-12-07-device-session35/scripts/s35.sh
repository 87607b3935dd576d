#!/bin/bash
# Session 35: `pytest -m gpu` for a budget that cannot hold the whole suite (~530 s on an H100). The GPU test of the
# module changed since session 34's GPU run (server.py's chunk_writer: tests/infer/test_server.py) goes first, then
# the rest of the suite in its usual order (pytest runs a file named twice once), under `timeout ${T:-300}`.
# carry [".whl"] (the server's wheels). pytest's whole output goes to $OUT as it runs.
exec > >(tee -a $OUT/log-s35.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
PYTHONPATH=/tmp/site:src timeout ${T:-300} python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 240 -rs \
  tests/infer/test_server.py tests > $OUT/pytest-s35.txt 2>&1
grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" $OUT/pytest-s35.txt | tail -90
echo "end $(date +%T)"
