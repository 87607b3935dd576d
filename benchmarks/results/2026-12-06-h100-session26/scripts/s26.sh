#!/bin/bash
# Device calls written in session 25 for main (no GPU code has changed on main since session 25's `pytest -m gpu`
# passed at aa3beff; if any has, run `pytest -m gpu` first: ~470 s + the rest, see session 25's scripts). Run from a
# checkout of main. Before the first call, here: .whl with the server's wheels (13 MB; session 24's s24b.sh header).
# carry [".whl"]; each call within 30 s of the last keeps the lease.
#   1: targets 11: the trainer's step at 32,768 on cuDNN (auto), selective against full checkpointing, transformers
#      beside (~7 min)
#   2: target 12: the same at 65,536 (micro-batch 1), peak memory of each (~7 min)
#   3: target 9 with serve_targets' one-server protocol (--with-baseline, 3 repeats), caps 256 and 128 (~5 min)
exec > >(tee -a $OUT/log-s26-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
if [ "$1" = 1 ]; then
  PYTHONPATH=src:benchmarks timeout 560 python3 benchmarks/bench_train.py --seq 32768 --docs full --hf-reference \
    --variants compile-sac-ga2,compile-ac-ga2 --steps 6 --out $OUT/bench_train_32k_full.json 2>&1 | grep -v "it/s\]" | tail -14
elif [ "$1" = 2 ]; then
  PYTHONPATH=src:benchmarks timeout 560 python3 benchmarks/bench_train.py --seq 65536 --docs full \
    --variants compile-sac-ga1,compile-ac-ga1 --steps 3 --out $OUT/bench_train_64k_full.json 2>&1 | grep -v "it/s\]" | tail -10
elif [ "$1" = 3 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
  PYTHONPATH=/tmp/site:src timeout 540 python3 benchmarks/serve_targets.py --model $M --only 9 \
    --t9-configs 2048:256,2048:128 --t9-repeat 3 --out $OUT/t9.json 2>&1 | grep -vE "^INFO|it/s" | tail -40
fi
echo "end $(date +%T)"
