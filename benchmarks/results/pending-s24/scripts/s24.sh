#!/bin/bash
# The device calls that test and measure branch cudnn-whole-rows (written in session 23, whose device time ran out
# after its GPU test run showed one wrong threshold). Run from a checkout of the branch. Before the first call, here:
#   mkdir -p .carry && cp benchmarks/results/pending-s24/scripts/* .carry/
#   cp benchmarks/results/2026-12-06-h100-session23/scripts/prefill_bench.py .carry/
#   mkdir -p .carry/unmasked-tree && git archive prefill-unmasked-loads src | tar -x -C .carry/unmasked-tree
#   mkdir -p .carry/overlap-tree && git archive overlap-prefill pyproject.toml src tests benchmarks/serve_targets.py \
#     benchmarks/bench_serve.py | tar -x -C .carry/overlap-tree
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     fastapi uvicorn starlette pydantic pydantic-core annotated-types typing-inspection anyio sniffio h11 httpx \
#     httpcore certifi idna openai distro jiter opentelemetry-api importlib-metadata zipp pytest-timeout \
#     llama-models gguf                                                              # 13 MB
# carry [".carry", ".whl"]; each call within 30 s of the last keeps the lease (a lease left idle still counts).
#   1: pytest -m gpu on the branch; cuDNN against ours on whole documents of 4k-16k (where auto does not take it yet);
#      branch prefill-unmasked-loads: its prefill kernel's GPU test (chunking invariance) and the kernel alone
#      against this branch's (~8 min)
#   2: target 11: the trainer's step at 32,768, full-window documents, cudnn (auto) vs varlen, transformers in the
#      same run (~9 min)
#   3: target 12: the same at 65,536 with selective checkpointing (~6 min)
#   4: branch overlap-prefill: its GPU test (the same tokens with prompt steps on their own stream), then target 9
#      over HTTP with and without --overlap-prefill at caps 256 and 128 (~8 min; issue 23, so before 2-3 if time
#      is short)
exec > >(tee -a $OUT/log-s24-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
if [ "$1" = 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  echo "pytest $(date +%T)"
  PYTHONPATH=/tmp/site:src timeout 340 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout=150 -rfs tests \
    > $OUT/pytest-gpu.txt 2>&1; echo "pytest rc $?" >> $OUT/pytest-gpu.txt
  tail -12 $OUT/pytest-gpu.txt
  for seq in 4096 8192 16384; do
    echo "bench_attention $seq $(date +%T)"
    PYTHONPATH=src timeout 60 python3 benchmarks/bench_attention.py --seq $seq --iters 10 \
      --backends triton,sdpa-cudnn_attention --out $OUT/attention-$seq.json 2>&1 | grep causal
  done
  echo "prefill-unmasked-loads $(date +%T)"
  PYTHONPATH=/tmp/site:.carry/unmasked-tree/src timeout 60 python3 -m pytest -m gpu -q -p no:cacheprovider -rfs \
    tests/ops/test_prefill_attention.py 2>&1 | tail -3
  for tree in .carry/unmasked-tree/src src; do
    PYTHONPATH=$tree timeout 60 python3 .carry/prefill_bench.py 2>&1 | head -14
  done
elif [ "$1" = 2 ]; then
  echo "bench_train 32k $(date +%T)"
  PYTHONPATH=src:benchmarks timeout 560 python3 benchmarks/bench_train.py --seq 32768 --docs full --hf-reference \
    --variants compile-ac-ga2,compile-ac-ga2-varlen --steps 6 --out $OUT/bench_train_32k_full.json 2>&1 | tail -20
elif [ "$1" = 3 ]; then
  echo "bench_train 64k $(date +%T)"
  PYTHONPATH=src:benchmarks timeout 420 python3 benchmarks/bench_train.py --seq 65536 --docs full \
    --variants compile-sac-ga1,compile-sac-ga1-varlen --steps 4 --out $OUT/bench_train_64k_full.json 2>&1 | tail -20
elif [ "$1" = 4 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  T=.carry/overlap-tree
  echo "overlap pytest $(date +%T)"
  (cd $T && PYTHONPATH=/tmp/site:src timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider -rfs \
    tests/infer/test_model_runner.py 2>&1 | tail -4)
  M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
  echo "serve_targets 9 $(date +%T)"
  PYTHONPATH=/tmp/site:$T/src timeout 420 python3 $T/benchmarks/serve_targets.py --model $M --only 9 \
    --t9-configs 2048:256,2048:256:overlap,2048:128:overlap --out $OUT/t9-overlap.json 2>&1 | grep -vE "^INFO|it/s" | tail -30
fi
echo "end $(date +%T)"
