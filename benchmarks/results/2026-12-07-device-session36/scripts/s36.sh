#!/bin/bash
# Session 36: the whole `pytest -m gpu`, with the GPU tests that have not run on the device since session 32's full
# run going first (the server-engine test's GPU case never has; then invariant_gemm, linear, prefill_attention,
# swiglu, test_model's backends), then the rest in the usual order. A call cut short by `timeout ${T:-580}` still
# returns what ran: pytest's whole output goes to $OUT as it runs.
# carry [".whl"] (the server's wheels).
exec > >(tee -a $OUT/log-s36.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
git log --oneline -1 2>/dev/null
FIRST="tests/infer/test_server_engine.py tests/ops/test_invariant_gemm.py tests/ops/test_linear.py
  tests/ops/test_prefill_attention.py tests/ops/test_swiglu.py tests/test_model.py"
# pytest 8 folds files named before their folder into the folder's order, so the first ones run as a call of their own
PYTHONPATH=/tmp/site:src timeout ${T:-580} python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 240 -rs $FIRST \
  > $OUT/pytest-s36-first.txt 2>&1
PYTHONPATH=/tmp/site:src timeout $((${T:-580} - SECONDS)) python3 -m pytest -m gpu -v -p no:cacheprovider \
  --timeout 240 -rs $(printf -- "--ignore=%s " $FIRST) tests > $OUT/pytest-s36.txt 2>&1
grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" $OUT/pytest-s36-first.txt | tail -30
grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" $OUT/pytest-s36.txt | tail -90
echo "end $(date +%T)"
