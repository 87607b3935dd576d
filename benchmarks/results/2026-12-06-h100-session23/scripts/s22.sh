#!/bin/bash
# The device calls that test and measure branch s22 (written in session 22, which had no device time; run from a
# checkout of s22). Before the first call, here:
#   mkdir -p .carry/main-tree && git archive main src | tar -x -C .carry/main-tree   # the same-lease reference
#   cp benchmarks/results/pending-s22/scripts/* .carry/
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     fastapi uvicorn starlette pydantic pydantic-core annotated-types typing-inspection anyio sniffio h11 httpx \
#     httpcore certifi idna openai distro jiter opentelemetry-api importlib-metadata zipp pytest-timeout \
#     llama-models gguf                                                              # 13 MB
# carry [".carry", ".whl"]; each call within 30 s of the last keeps the lease. Usage: bash .carry/s22.sh N (1-3 first: ~25 min)
#   1: pytest -m gpu on s22 (with durations), the prefill kernel alone on s22 and on main (~9 min)
#   2: mixed steps off/on in the engine at caps 256 and 128 (~6 min)
#   3: target 9 over HTTP, s22 then main, caps 256 and 128 (~9 min)
#   4: target 10 on s22: bench_infer with transformers' generate in the same run (~8 min)
#   5: issue 27: attention backends at 32k and 64k (ours, FA2, cuDNN), the causal block-shape sweep at 64k (~8 min)
#   6: target 7 on s22 (mixed steps change how prompts are read beside decodes) (~4 min)
exec > >(tee -a $OUT/log-s22-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
model() { PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1; }
t9() {  # $1 src dir, $2 tag, $3 configs
  echo "serve_targets 9 $2 $3 $(date +%T)"
  PYTHONPATH=/tmp/site:$1 timeout 280 python3 benchmarks/serve_targets.py --model $M --only 9 --t9-configs $3 \
    --out $OUT/t9-$2.json 2>&1 | grep -vE "^INFO|it/s" | tail -24
  pkill -f bench_serve; pkill -f "smollm3"; sleep 1
}
if [ "$1" = 1 ]; then
  echo "pytest $(date +%T)"
  PYTHONPATH=/tmp/site:src timeout 450 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout=200 -rfs \
    --durations=25 tests > $OUT/pytest-gpu.txt 2>&1; echo "pytest rc $?" >> $OUT/pytest-gpu.txt
  tail -40 $OUT/pytest-gpu.txt
  for tree in src .carry/main-tree/src; do
    echo "prefill_bench $tree $(date +%T)"
    PYTHONPATH=$tree timeout 60 python3 .carry/prefill_bench.py
  done
elif [ "$1" = 2 ]; then
  echo "mixed_prof $(date +%T)"
  PYTHONPATH=src timeout 420 python3 .carry/mixed_prof.py 256,128
elif [ "$1" = 3 ]; then
  M=$(model)
  t9 src s22 2048:256,2048:128
  t9 .carry/main-tree/src main 2048:256,2048:128
elif [ "$1" = 4 ]; then
  echo "bench_infer s22 $(date +%T)"
  PYTHONPATH=/tmp/site:src timeout 540 python3 benchmarks/bench_infer.py --out $OUT/infer-s22.json 2>&1 | tail -20
elif [ "$1" = 6 ]; then
  M=$(model)
  echo "serve_targets 7 s22 $(date +%T)"
  PYTHONPATH=/tmp/site:src timeout 280 python3 benchmarks/serve_targets.py --model $M --only 7 \
    --out $OUT/t7-s22.json 2>&1 | grep -vE "^INFO|it/s" | tail -12
elif [ "$1" = 5 ]; then
  for seq in 32768 65536; do
    echo "bench_attention $seq $(date +%T)"
    PYTHONPATH=src timeout 150 python3 benchmarks/bench_attention.py --seq $seq --iters 10 \
      --backends fa2,triton,sdpa-cudnn_attention --out $OUT/attention-$seq.json 2>&1 | tail -8
  done
  echo "tune_attention 65536 $(date +%T)"
  PYTHONPATH=src timeout 280 python3 benchmarks/tune_attention.py --seq 65536 --packs 1 --grid tma \
    --sweep-on causal --iters 5 --out $OUT/tune-65536.json 2>&1 | tail -25
fi
echo "end $(date +%T)"
