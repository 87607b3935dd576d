#!/bin/bash
# session 23's device call: pytest -m gpu at the commit (410 s of device time were left)
exec > >(tee -a $OUT/log-s23.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
echo "pytest $(date +%T)"
PYTHONPATH=/tmp/site:src timeout 320 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout=150 -rfs tests \
  > $OUT/pytest-gpu.txt 2>&1; echo "pytest rc $?" >> $OUT/pytest-gpu.txt
tail -15 $OUT/pytest-gpu.txt
echo "end $(date +%T)"
