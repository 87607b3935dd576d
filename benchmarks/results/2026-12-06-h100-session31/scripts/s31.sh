#!/bin/bash
# Session 31's device calls (s30.sh as it was), from main's working tree with .whl (the server's wheels) beside it: carry [".whl"].
#   (decode_ab.py sets fast.GU_PREFETCH_ROWS, which only branch gu-prefetch reads; main ignores it: rows 0)
#   1 (branch keep-matmuls, c8051d8): the whole `pytest -m gpu` (~400 s on an H100)
#   7 (any GPU): the LM head's chunked cross-entropy at 32k rows profiled, and its weight-gradient accumulation timed
#     against the GEMM alone (ce_probe.py)
#   8 (an H100: 80 GB): 7, then target 11's step without and with the LM head keeping d loss / d logits (dlogits8:
#     8 GiB more than session 26's 65.2 GiB), transformers' reference before and after
#   6 (branch gu-prefetch, any GPU): batch-1 decode with the merge kernel also pulling the first 0-3,072 gate and up
#     rows into L2 (decode_ab.py), at prompts 128 and 1,024
#   Only on an H200 (else they stop at once):
#   2 (main, or branch gu-prefetch: rows 0 is main): target 10 (bench_infer with transformers, main's setting), then batch-1 decode with the
#      GEMV tiles picked from main's candidates and from a wider list (decode_ab.py)
#   3: target 11 with transformers' reference, selective checkpointing with all 36 layers keeping their matmul
#      outputs (~115 GiB by session 29's 1.38 GiB a layer: an H200's work), without and with the LM head keeping
#      d loss / d logits (8 GiB more: no logits GEMM redone in the backward)
#   4 [N]: target 12's 64k step, selective checkpointing with 0 and N layers keeping their matmul outputs
#   5: target 9 at the latency setting, one repeat
exec > >(tee -a $OUT/log-s31-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
AB=$(dirname $0)/../../2026-12-06-h100-session30/scripts/decode_ab.py  # session 30's, unchanged
H200=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -c H200)
if [ "$1" = 1 ]; then
  PYTHONPATH=/tmp/site:src timeout 570 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 240 -rs tests 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" | tail -90
elif [ "$1" = 6 ]; then
  PYTHONPATH=src timeout 500 python3 $AB $OUT/decode_ab.json 128,1024 \
    main:0,main:1024,main:2048,main:3072 2>&1 | grep -vE "it/s" | tail -80
elif [ "$1" = 7 ] || [ "$1" = 8 ]; then
  PYTHONPATH=src timeout 200 python3 $(dirname $0)/ce_probe.py $OUT/ce_probe.json 2>&1 | tail -60
  [ "$1" = 8 ] && PYTHONPATH=src:benchmarks timeout 380 python3 benchmarks/bench_train.py --seq 32768 --docs full \
    --hf-reference --variants compile-sac-ga2,compile-sac-dlogits8-ga2 --steps 5 \
    --out $OUT/bench_train_32k_dlogits.json 2>&1 | grep -vE "it/s|^W1|step/s" | tail -30
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
elif [ "$1" = 4 ]; then
  PYTHONPATH=src:benchmarks timeout 580 python3 benchmarks/bench_train.py --seq 65536 --docs full \
    --variants compile-sac-ga1,compile-sac-keepmm${2:-24}-ga1 --steps 3 \
    --out $OUT/bench_train_64k_keepmm.json 2>&1 | grep -vE "it/s|^W1|step/s" | tail -30
elif [ "$1" = 5 ]; then
  M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
  PYTHONPATH=/tmp/site:src timeout 250 python3 benchmarks/serve_targets.py --model $M --only 9 \
    --t9-configs 2048:512:12 --out $OUT/t9.json 2>&1 | grep -vE "^INFO|it/s" | tail -40
fi
echo "end $(date +%T)"
