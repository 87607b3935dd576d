#!/bin/bash
# Session 29's device calls: 1 from branch merge-oproj, 3-5 from branch keep-matmuls (carry [".whl"] where pytest runs
# the server tests).
#   1: batch-1 decode with o_proj merging the attention's key splits against main's merge kernel (defer.py), then
#      transformers' forward+backward peak memory without checkpointing (hf_memory.py); on an H200 also bench_infer
#   2: the whole `pytest -m gpu` (~400 s on an H100)
#   4: 2, then 3 without transformers' reference
#   5: 3 without transformers' reference
#   3 (branch keep-matmuls): the 32k step, selective checkpointing with 0 and 6 layers keeping their matmul outputs
exec > >(tee -a $OUT/log-s29-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
H200=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -c H200)
D=$(dirname $0)
if [ "$1" = 1 ]; then
  PYTHONPATH=src timeout 420 python3 $D/defer.py $OUT/defer.json 2>&1 | grep -vE "it/s" | tail -40
  SEQS=4096,8192,16384; [ "$H200" = 1 ] && SEQS=8192,16384,32768
  PYTHONPATH=src:benchmarks timeout 120 python3 $D/hf_memory.py $OUT/hf_memory.json $SEQS 2>&1 | grep -vE "it/s" | tail -8
  if [ "$H200" = 1 ]; then
    PYTHONPATH=/tmp/site:src timeout 300 python3 benchmarks/bench_infer.py --out $OUT/bench_infer.json 2>&1 | grep -vE "it/s" | tail -30
  fi
fi
if [ "$1" = 3 ]; then  # branch keep-matmuls: target 11's step with the last N layers keeping their matmul outputs
  PYTHONPATH=src:benchmarks timeout 580 python3 benchmarks/bench_train.py --seq 32768 --docs full --hf-reference \
    --variants compile-sac-ga2,compile-sac-keepmm6-ga2 --steps 5 \
    --out $OUT/bench_train_32k_keepmm.json 2>&1 | grep -vE "it/s|^W1|step/s" | tail -30
fi
if [ "$1" = 4 ]; then  # 2, then 3 without transformers' reference, in one call (device time ran short)
  PYTHONPATH=/tmp/site:src timeout 420 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 240 -rs tests 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" | tail -90
  PYTHONPATH=src:benchmarks timeout 170 python3 benchmarks/bench_train.py --seq 32768 --docs full \
    --variants compile-sac-ga2,compile-sac-keepmm6-ga2 --steps 5 \
    --out $OUT/bench_train_32k_keepmm.json 2>&1 | grep -vE "it/s|^W1|step/s" | tail -12
fi
if [ "$1" = 5 ]; then  # 3 alone, without transformers' reference (device time left for no more)
  PYTHONPATH=src:benchmarks timeout 220 python3 benchmarks/bench_train.py --seq 32768 --docs full \
    --variants compile-sac-ga2,compile-sac-keepmm6-ga2 --steps 5 \
    --out $OUT/bench_train_32k_keepmm.json 2>&1 | grep -vE "it/s|^W1|step/s" | tail -12
fi
if [ "$1" = 2 ]; then
  PYTHONPATH=/tmp/site:src timeout 560 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 240 -rs tests 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" | tail -90
fi
echo "end $(date +%T)"
