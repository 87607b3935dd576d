#!/bin/bash
# Device call written in session 26 for main (its GPU code passed `pytest -m gpu` in session 26 on branch layer-split,
# which main then took; if GPU code has changed since, run `pytest -m gpu` first, split over two calls: see session
# 26's s26b.sh). Run from a checkout of main. Before the call, here: .whl with the server's wheels (13 MB; session
# 24's s24b.sh header). carry [".whl"].
#   1: target 9 confirmed: serve_targets now gives the streams 1,536 tokens, so they decode for the whole 32k read,
#      and counts a repeat only if they do; without the layers divided, with 12 a step at caps 256 and 512 (~7 min)
exec > >(tee -a $OUT/log-s27-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
if [ "$1" = 1 ]; then
  M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
  PYTHONPATH=/tmp/site:src timeout 560 python3 benchmarks/serve_targets.py --model $M --only 9 \
    --t9-configs 2048:256:12,2048:512:12,2048:256 --t9-repeat 2 --out $OUT/t9.json 2>&1 | grep -vE "^INFO|it/s" | tail -80
fi
echo "end $(date +%T)"
