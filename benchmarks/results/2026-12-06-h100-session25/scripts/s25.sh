#!/bin/bash
# The device calls written in session 24 (its device time ran out) for branch prefill-warps: the prefill kernel at
# 4 warps a program on wide grids. Run from a checkout of the branch. Before the first call, here:
#   mkdir -p .carry && cp benchmarks/results/pending-s25/scripts/* .carry/
#   mkdir -p .carry/main-tree && git archive main pyproject.toml src benchmarks/serve_targets.py \
#     benchmarks/bench_serve.py | tar -x -C .carry/main-tree
#   .whl: the server's wheels, as benchmarks/results/2026-12-06-h100-session24's s24b.sh header says (13 MB)
# carry [".carry", ".whl"]; each call within 30 s of the last keeps the lease (a lease left idle still counts).
#   1: pytest -m gpu (the suite takes ~400 s on an H100 since the cudnn tests), then the kernel alone: warps, and
#      16-token tiles or 2,048-key splits for small chunks deep in a prompt (~9 min)
#   2: target 9 over HTTP, main then the branch at cap 256; then the in-process profile on the branch (~8 min)
#   3: target 11: the trainer's step at 32,768, full-window documents, cudnn (auto) vs varlen, transformers beside
exec > >(tee -a $OUT/log-s25-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
if [ "$1" = 1 ]; then
  echo "pytest $(date +%T)"
  PYTHONPATH=/tmp/site:src timeout 470 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout=150 -rfs tests \
    > $OUT/pytest-gpu.txt 2>&1; echo "pytest rc $?" >> $OUT/pytest-gpu.txt
  tail -12 $OUT/pytest-gpu.txt
  echo "prefill_warps_bench $(date +%T)"
  PYTHONPATH=src timeout 80 python3 .carry/prefill_warps_bench.py 2>&1 | tail -24
elif [ "$1" = 2 ]; then
  M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
  for tree in .carry/main-tree .; do
    echo "serve_targets 9 $tree $(date +%T)"
    PYTHONPATH=/tmp/site:$tree/src timeout 190 python3 $tree/benchmarks/serve_targets.py --model $M --only 9 \
      --t9-configs 2048:256 --out $OUT/t9-$(basename $tree).json 2>&1 | grep -vE "^INFO|it/s" | tail -14
  done
  echo "t9_profile $(date +%T)"
  PYTHONPATH=src timeout 150 python3 .carry/t9_profile.py $OUT > $OUT/t9-profile.txt 2>&1
  head -5 $OUT/t9-profile.txt; grep -A30 "Self CUDA %" $OUT/t9-profile.txt | head -30
elif [ "$1" = 3 ]; then
  echo "bench_train 32k $(date +%T)"
  PYTHONPATH=src:benchmarks timeout 560 python3 benchmarks/bench_train.py --seq 32768 --docs full --hf-reference \
    --variants compile-ac-ga2,compile-ac-ga2-varlen --steps 6 --out $OUT/bench_train_32k_full.json 2>&1 | tail -20
fi
echo "end $(date +%T)"
