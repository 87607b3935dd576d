#!/bin/bash
# Session 26, after calls 1-3 of s26.sh: --max-prefill-layers-during-decode (a prompt step's layers divided over
# engine steps while streams decode). carry [".whl"].
#   a: target 9 at cap 256, every layer in one step against 12 layers a step (3 steps a prompt step), one server
#      each, 2 repeats; the new GPU tests; then `pytest -m gpu` until the call's limit
#   b NODEIDS...: the GPU tests call a did not reach
exec > >(tee -a $OUT/log-s26b-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
if [ "$1" = a ]; then
  M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
  PYTHONPATH=/tmp/site:src timeout 280 python3 benchmarks/serve_targets.py --model $M --only 9 \
    --t9-configs 2048:256,2048:256:12 --t9-repeat 2 --out $OUT/t9.json 2>&1 | grep -vE "^INFO|it/s" | tail -60
  echo "t9 end $(date +%T)"
  PYTHONPATH=/tmp/site:src timeout 60 python3 -m pytest -q -p no:cacheprovider tests/infer/test_fast_prefill.py -m gpu -k divided 2>&1 | tail -3
  PYTHONPATH=/tmp/site:src timeout 200 python3 -m pytest -m gpu -v -p no:cacheprovider -x --timeout 300 2>&1 | grep -E "PASSED|FAILED|ERROR|passed|failed" | tail -80
elif [ "$1" = b ]; then
  shift
  PYTHONPATH=/tmp/site:src timeout 570 python3 -m pytest -v -p no:cacheprovider --timeout 300 "$@" 2>&1 | grep -E "PASSED|FAILED|ERROR|passed|failed|Error" | tail -80
fi
echo "end $(date +%T)"
