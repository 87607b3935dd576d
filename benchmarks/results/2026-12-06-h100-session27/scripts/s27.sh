#!/bin/bash
# Device call written in session 26 for main (its GPU code passed `pytest -m gpu` in session 26 on branch layer-split,
# which main then took; if GPU code has changed since, run `pytest -m gpu` first, split over two calls: see session
# 26's s26b.sh). Run from a checkout of main. Before the call, here: .whl with the server's wheels (13 MB; session
# 24's s24b.sh header). carry [".whl"].
#   1: target 9 confirmed: serve_targets now gives the streams 1,536 tokens, so they decode for the whole 32k read,
#      and counts a repeat only if they do; without the layers divided, with 12 a step at caps 256 and 512 (~7 min)
#   2: target 10 (decode through the paged cache, with transformers in the same run), then where a decode step's
#      GPU time goes (profile_decode.py)
#   3: on an H200, target 10 (bench_infer with transformers); on any card, batch-1 decode with the decode
#      attention's key splits chosen by other rules (nsplit.py: is the merge kernel worth its splits?)
#   4: on an H200, target 10 (bench_infer with transformers); on an H100, what the latency setting of target 9
#      (cap 512, 12 layers a step) costs target 7's load (256 x (512 + 256) over HTTP at max_model_len 65,536),
#      against the defaults, alternated
#   5: on an H200, target 10 (bench_infer with transformers); on any card, the small-batch projections in a graph
#      (gemm32.py: cuBLAS, today's tuner choice, a wider tile list), then where a decode step's time goes
#   6: only on an H200 (else it stops at once): target 10 (bench_infer with transformers), then target 9 with the
#      latency setting and without (one repeat each)
#   7: on an H200, target 10 (bench_infer with transformers) first; on any card, 32-stream decode under other key
#      split rules and with gemv's tuner timing in a graph (batch32.py)
#   8: the engine's decode steps on the device's timeline (step_gaps.py): idle inside a step's graph and between steps
exec > >(tee -a $OUT/log-s27-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
if [ "$1" = 1 ]; then
  M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
  PYTHONPATH=/tmp/site:src timeout 560 python3 benchmarks/serve_targets.py --model $M --only 9 \
    --t9-configs 2048:256:12,2048:512:12,2048:256 --t9-repeat 2 --out $OUT/t9.json 2>&1 | grep -vE "^INFO|it/s" | tail -80
fi
if [ "$1" = 2 ]; then
  PYTHONPATH=/tmp/site:src timeout 360 python3 benchmarks/bench_infer.py --out $OUT/bench_infer.json 2>&1 | grep -vE "it/s" | tail -40
  PYTHONPATH=/tmp/site:src timeout 200 python3 benchmarks/profile_decode.py --out $OUT/profile_decode.json 2>&1 | tail -70
fi
if [ "$1" = 3 ]; then
  if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    PYTHONPATH=/tmp/site:src timeout 330 python3 benchmarks/bench_infer.py --out $OUT/bench_infer.json 2>&1 | grep -vE "it/s" | tail -30
  fi
  PYTHONPATH=/tmp/site:src timeout 400 python3 $(dirname $0)/nsplit.py $OUT/nsplit.json 2>&1 | tail -40
fi
if [ "$1" = 4 ]; then
  if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    PYTHONPATH=/tmp/site:src timeout 500 python3 benchmarks/bench_infer.py --out $OUT/bench_infer.json 2>&1 | grep -vE "it/s" | tail -30
  else
    M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
    LAT="--max-prefill-tokens-during-decode 512 --max-prefill-layers-during-decode 12"
    for cfg in default latency default latency; do
      PYTHONPATH=/tmp/site:src timeout 150 python3 benchmarks/bench_serve.py --model $M --max-model-len 65536 \
        --input-len 512 --output-len 256 --num-prompts 256 $([ $cfg = latency ] && echo $LAT) \
        --out $OUT/t7-$cfg-$(date +%H%M%S).json 2>&1 | grep -vE "^INFO|it/s" | grep -iE "tok/s|ttft|itl|error" | head -8
      echo "== $cfg done $(date +%T)"
    done
  fi
fi
if [ "$1" = 5 ]; then
  if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    PYTHONPATH=/tmp/site:src timeout 330 python3 benchmarks/bench_infer.py --out $OUT/bench_infer.json 2>&1 | grep -vE "it/s" | tail -30
  fi
  PYTHONPATH=/tmp/site:src timeout 300 python3 $(dirname $0)/gemm32.py $OUT/gemm32.json 2>&1 | tail -12
  PYTHONPATH=/tmp/site:src timeout 200 python3 benchmarks/profile_decode.py --out $OUT/profile_decode.json 2>&1 | tail -70
fi
if [ "$1" = 6 ]; then
  if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    PYTHONPATH=/tmp/site:src timeout 300 python3 benchmarks/bench_infer.py --out $OUT/bench_infer.json 2>&1 | grep -vE "it/s" | tail -30
    M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
    PYTHONPATH=/tmp/site:src timeout 270 python3 benchmarks/serve_targets.py --model $M --only 9 \
      --t9-configs 2048:512:12,2048:256 --out $OUT/t9.json 2>&1 | grep -vE "^INFO|it/s" | tail -60
  else
    echo "not an H200: nothing run"
  fi
fi
if [ "$1" = 7 ]; then
  if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    PYTHONPATH=/tmp/site:src timeout 300 python3 benchmarks/bench_infer.py --out $OUT/bench_infer.json 2>&1 | grep -vE "it/s" | tail -30
  fi
  PYTHONPATH=/tmp/site:src timeout 280 python3 $(dirname $0)/batch32.py $OUT/batch32.json 2>&1 | tail -20
fi
if [ "$1" = 8 ]; then
  PYTHONPATH=/tmp/site:src timeout 240 python3 $(dirname $0)/step_gaps.py $OUT 2>&1 | tail -20
fi
echo "end $(date +%T)"
