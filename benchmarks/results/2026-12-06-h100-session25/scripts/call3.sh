#!/bin/bash
# session 25, call 3 as it ran (inline): the nine GPU tests call 1's pytest had not reached, then target 11 on the
# auto backend (cuDNN for whole rows of 32,768) beside transformers
exec > >(tee -a $OUT/log-s25-3.txt) 2>&1; nvidia-smi --query-gpu=name --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
echo "pytest rest $(date +%T)"
PYTHONPATH=/tmp/site:src timeout 230 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout=150 -rfs \
  "tests/train/test_compile_gpu.py::test_compiled_layers_match_eager_without_graph_breaks[selective-cudnn]" \
  tests/train/test_graphs.py tests/train/test_precision.py tests/train/test_trainer.py > $OUT/pytest-gpu-rest.txt 2>&1
echo "pytest rc $?" >> $OUT/pytest-gpu-rest.txt; tail -5 $OUT/pytest-gpu-rest.txt
echo "bench_train $(date +%T)"
PYTHONPATH=src:benchmarks timeout 320 python3 benchmarks/bench_train.py --seq 32768 --docs full --hf-reference \
  --variants compile-ac-ga2 --steps 6 --out $OUT/bench_train_32k_full.json 2>&1 | tail -14
echo "end $(date +%T)"
