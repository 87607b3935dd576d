#!/bin/bash
# Session 33's device calls, from main's working tree with .whl (the server's wheels) beside it: carry [".whl"].
#   1 (any GPU): the whole `pytest -m gpu` (~400 s on an H100), then the autocast path's cross-entropy backward with
#     the head gradient added as before session 31 and as now (ce_autocast.py)
#   6 (any GPU): `pytest -m gpu` over the modules that reach the fp8 refresh, the folded-norm copies and the cross-entropy, in 120 s (what the budget left allows)
#   Only on an H200 (else they stop at once):
#   2: target 10 (bench_infer with transformers, main's setting), then batch-1 decode with the GEMV tiles picked from
#      main's candidates and from a wider list (session 30's decode_ab.py)
#   3: target 11 with transformers' reference, selective checkpointing with all 36 layers keeping their matmul
#      outputs (~115 GiB by session 29's 1.38 GiB a layer), without and with the LM head keeping d loss / d logits
#   5: target 9 at the latency setting, one repeat
exec > >(tee -a $OUT/log-s33-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
AB=$(dirname $0)/../../2026-12-06-h100-session30/scripts/decode_ab.py  # session 30's, unchanged
H200=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -c H200)
if [ "$1" = 1 ]; then
  PYTHONPATH=/tmp/site:src timeout 570 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 240 -rs tests 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" | tail -90
  PYTHONPATH=src timeout 60 python3 $(dirname $0)/../../2026-12-06-device-session32/scripts/ce_autocast.py $OUT/ce_autocast.json 2>&1 | tail -8
elif [ "$1" = 6 ]; then  # what this session's change can reach (fp8 refresh, folded-norm copies, cross-entropy), in 120 s
  PYTHONPATH=/tmp/site:src timeout 120 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 240 -rs tests/ops/test_fp8.py tests/train/test_precision.py tests/ops/test_cross_entropy.py tests/train/test_compile_gpu.py tests/ops/test_linear.py tests/ops/test_swiglu.py tests/train/test_trainer.py tests/train/test_graphs.py 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" | tail -90
elif [ "$H200" != 1 ]; then
  echo "not an H200: nothing run"
elif [ "$1" = 2 ]; then
  PYTHONPATH=/tmp/site:src timeout 300 python3 benchmarks/bench_infer.py --out $OUT/bench_infer.json 2>&1 | grep -vE "it/s" | tail -30
  PYTHONPATH=src timeout 270 python3 $AB $OUT/decode_ab.json 128 main:0,wide:0 \
    2>&1 | grep -vE "it/s" | tail -60
elif [ "$1" = 3 ]; then
  PYTHONPATH=src:benchmarks timeout 580 python3 benchmarks/bench_train.py --seq 32768 --docs full --hf-reference \
    --variants compile-sac-keepmm36-ga2,compile-sac-keepmm36-dlogits8-ga2 --steps 5 \
    --out $OUT/bench_train_32k_keepmm.json 2>&1 | grep -vE "it/s|^W1|step/s" | tail -30
elif [ "$1" = 5 ]; then
  M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
  PYTHONPATH=/tmp/site:src timeout 250 python3 benchmarks/serve_targets.py --model $M --only 9 \
    --t9-configs 2048:512:12 --out $OUT/t9.json 2>&1 | grep -vE "^INFO|it/s" | tail -40
fi
echo "end $(date +%T)"
