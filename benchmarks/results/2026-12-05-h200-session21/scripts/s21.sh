#!/bin/bash
# Session 21's calls, on branch fast-prefill (check it out first; main's src is .carry/main-tree/src).
# carry [".carry", ".whl"]. Usage: bash .carry/s21.sh 1|2|3
#   1: pytest -m gpu on the branch (alone), the fixed GEMM vs cuBLAS, the engine-level step profile at cap 256 (~8 min)
#   2: target 9 A/B in one lease: branch and main at 2048:512 and 2048:256 (~9 min)
#   3: target 7 on the branch, then target 8 with --invariant-prefill (~8 min)
exec > >(tee -a $OUT/log-s21-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
model() { PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1; }
t9() {  # $1 src dir, $2 tag, $3 configs
  echo "serve_targets 9 $2 $3 $(date +%T)"
  PYTHONPATH=/tmp/site:$1 timeout 270 python3 benchmarks/serve_targets.py --model $M --only 9 --t9-configs $3 \
    --out $OUT/t9-$2.json 2>&1 | grep -vE "^INFO|it/s" | tail -16
  pkill -f bench_serve; pkill -f "smollm3"; sleep 1
}
if [ "$1" = 1 ]; then
  echo "pytest $(date +%T)"
  PYTHONPATH=/tmp/site:src timeout 420 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout=200 -rf tests \
    > $OUT/pytest-gpu.txt 2>&1; echo "pytest rc $?" >> $OUT/pytest-gpu.txt
  tail -6 $OUT/pytest-gpu.txt
  echo "gemm $(date +%T)"
  PYTHONPATH=src timeout 90 python3 .carry/gemm_ab.py 2>&1 | tail -5
  for cap in 256; do  # 512 too if time allows: pytest takes ~300 s of the 600
    echo "prof $cap $(date +%T)"
    PYTHONPATH=src timeout 150 python3 .carry/prefill_prof.py $cap > $OUT/prof-$cap.txt 2>&1
    grep -E "warm_up|decode-only|ttft|Error" $OUT/prof-$cap.txt
  done
elif [ "$1" = 2 ]; then
  M=$(model)
  t9 src branch 2048:512,2048:256
  t9 .carry/main-tree/src main 2048:512,2048:256
elif [ "$1" = 3 ]; then
  M=$(model)
  echo "serve_targets 7 branch $(date +%T)"
  PYTHONPATH=/tmp/site:src timeout 240 python3 benchmarks/serve_targets.py --model $M --only 7 \
    --out $OUT/t7-branch.json 2>&1 | grep -vE "^INFO|it/s" | tail -12
  pkill -f bench_serve; pkill -f "smollm3"; sleep 1
  echo "serve_targets 8 branch $(date +%T)"
  PYTHONPATH=/tmp/site:src timeout 330 python3 benchmarks/serve_targets.py --model $M --only 8 --t8-invariant \
    --out $OUT/t8-branch.json 2>&1 | grep -vE "^INFO|it/s" | tail -16
fi
echo "end $(date +%T)"
