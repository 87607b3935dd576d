#!/bin/bash
# Session 20 call 1, on a branch merging fast-prefill and deterministic-dkdv (check it out first:
#   git checkout -b combo2 main && git merge --no-edit fast-prefill deterministic-dkdv).
# pytest -m gpu in the background with the golden curve twice at --tol 0 beside it (exactness only), then, alone on
# the GPU, serving target 9 on the branch at 2048, 2048:512, 2048:256. carry [".carry", ".whl"]; ~9 min.
exec > >(tee -a $OUT/log-s20-1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
(PYTHONPATH=src timeout 400 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout=240 tests/ops tests/test_model.py \
   tests/train tests/infer/test_fast_decode.py > $OUT/pytest-gpu.txt 2>&1; echo "pytest rc $?" >> $OUT/pytest-gpu.txt) &
PYTEST=$!
echo "golden 1 $(date +%T)"
PYTHONPATH=src timeout 150 python3 benchmarks/golden_curve.py --out $OUT/golden-1.json 2>&1 | grep -v "train:" | tail -1
echo "golden 2 $(date +%T)"
PYTHONPATH=src timeout 150 python3 benchmarks/golden_curve.py --tol 0 --against $OUT/golden-1.json \
  --out $OUT/golden-2.json 2>&1 | grep -v "train:" | tail -1
wait $PYTEST
tail -4 $OUT/pytest-gpu.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
echo "serve_targets 9 branch $(date +%T)"
PYTHONPATH=/tmp/site:src timeout 300 python3 benchmarks/serve_targets.py --model $M --only 9 \
  --t9-configs 2048,2048:512,2048:256 --out $OUT/t9-branch.json 2>&1 | grep -vE "^INFO|it/s" | tail -24
echo "end $(date +%T)"
