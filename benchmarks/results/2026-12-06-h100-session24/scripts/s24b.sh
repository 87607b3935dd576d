#!/bin/bash
# Session 24's device calls, run from a checkout of branch s24 (prefill-tma + overlap-prefill + cudnn-whole-rows):
#   carry [".carry", ".whl"]; .carry/main-tree is main's src and serve benchmarks (git archive), the same-lease
#   reference; .whl the server's wheels (see pending-s24/scripts/s24.sh)
#   1: the prefill kernel alone (TMA against pointer loads; main's kernel), then pytest -m gpu, target 9 in one
#      process under torch.profiler (.carry/t9_profile.py), then cuDNN against
#      ours on whole documents of 4k-16k
#   2: target 9 over HTTP: main at cap 256, s24 at cap 256 with and without --overlap-prefill, and at cap 128
#   3: target 11: the trainer's step at 32,768, full-window documents, cudnn (auto) vs varlen, transformers beside
exec > >(tee -a $OUT/log-s24b-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
if [ "$1" = 1 ]; then
  echo "prefill_tma_bench s24 $(date +%T)"
  PYTHONPATH=src timeout 100 python3 .carry/prefill_tma_bench.py 2>&1 | tail -12
  echo "prefill_bench main $(date +%T)"
  PYTHONPATH=.carry/main-tree/src timeout 60 python3 .carry/prefill_bench.py 2>&1 | head -14
  echo "pytest $(date +%T)"
  PYTHONPATH=/tmp/site:src timeout 360 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout=150 -rfs tests \
    > $OUT/pytest-gpu.txt 2>&1; echo "pytest rc $?" >> $OUT/pytest-gpu.txt
  tail -14 $OUT/pytest-gpu.txt
  echo "t9_profile $(date +%T)"
  PYTHONPATH=src timeout 150 python3 .carry/t9_profile.py $OUT > $OUT/t9-profile.txt 2>&1
  head -4 $OUT/t9-profile.txt; grep -A30 "Self CUDA %" $OUT/t9-profile.txt | head -30
  for seq in 4096 16384; do
    echo "bench_attention $seq $(date +%T)"
    PYTHONPATH=src timeout 40 python3 benchmarks/bench_attention.py --seq $seq --iters 10 \
      --backends triton,sdpa-cudnn_attention --out $OUT/attention-$seq.json 2>&1 | grep causal
  done
elif [ "$1" = 2 ]; then
  M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
  echo "serve_targets 9 main $(date +%T)"
  T=.carry/main-tree
  PYTHONPATH=/tmp/site:$T/src timeout 170 python3 $T/benchmarks/serve_targets.py --model $M --only 9 \
    --t9-configs 2048:256 --out $OUT/t9-main.json 2>&1 | grep -vE "^INFO|it/s" | tail -8
  echo "serve_targets 9 s24 $(date +%T)"
  PYTHONPATH=/tmp/site:src timeout 380 python3 benchmarks/serve_targets.py --model $M --only 9 \
    --t9-configs 2048:256,2048:256:overlap,2048:128 --out $OUT/t9-s24.json 2>&1 | grep -vE "^INFO|it/s" | tail -20
elif [ "$1" = 5 ]; then
  echo "pytest touched $(date +%T)"
  PYTHONPATH=/tmp/site:src timeout 230 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout=150 -rfs \
    tests/ops/test_prefill_attention.py tests/infer/test_model_runner.py tests/test_model.py \
    tests/train/test_compile_gpu.py tests/train/test_graphs.py > $OUT/pytest-gpu-touched.txt 2>&1
  echo "pytest rc $?" >> $OUT/pytest-gpu-touched.txt; tail -8 $OUT/pytest-gpu-touched.txt
  M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
  echo "serve_targets 9 main $(date +%T)"
  T=.carry/main-tree
  PYTHONPATH=/tmp/site:$T/src timeout 130 python3 $T/benchmarks/serve_targets.py --model $M --only 9 \
    --t9-configs 2048:256 --out $OUT/t9-main.json 2>&1 | grep -vE "^INFO|it/s" | tail -8
  echo "serve_targets 9 s24 $(date +%T)"
  PYTHONPATH=/tmp/site:src timeout 200 python3 benchmarks/serve_targets.py --model $M --only 9 \
    --t9-configs 2048:256,2048:256:overlap --out $OUT/t9-s24.json 2>&1 | grep -vE "^INFO|it/s" | tail -12
elif [ "$1" = 6 ]; then
  echo "pytest tail $(date +%T)"
  PYTHONPATH=/tmp/site:src timeout 130 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout=100 -rfs \
    tests/train/test_precision.py tests/train/test_trainer.py > $OUT/pytest-gpu-tail.txt 2>&1
  echo "pytest rc $?" >> $OUT/pytest-gpu-tail.txt; tail -4 $OUT/pytest-gpu-tail.txt
  echo "t9_profile $(date +%T)"
  PYTHONPATH=src timeout 150 python3 .carry/t9_profile.py $OUT > $OUT/t9-profile.txt 2>&1
  head -5 $OUT/t9-profile.txt; grep -A30 "Self CUDA %" $OUT/t9-profile.txt | head -30
elif [ "$1" = 3 ]; then
  echo "bench_train 32k $(date +%T)"
  PYTHONPATH=src:benchmarks timeout 560 python3 benchmarks/bench_train.py --seq 32768 --docs full --hf-reference \
    --variants compile-ac-ga2,compile-ac-ga2-varlen --steps 6 --out $OUT/bench_train_32k_full.json 2>&1 | tail -20
fi
echo "end $(date +%T)"
