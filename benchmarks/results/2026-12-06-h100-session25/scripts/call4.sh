#!/bin/bash
# session 25, call 4 as it ran (inline): target 9 again, the branch first this time, then main's tree
exec > >(tee -a $OUT/log-s25-4.txt) 2>&1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
for tree in . .carry/main-tree; do
  echo "serve_targets 9 $tree $(date +%T)"
  PYTHONPATH=/tmp/site:$tree/src timeout 185 python3 $tree/benchmarks/serve_targets.py --model $M --only 9 \
    --t9-configs 2048:256 --out $OUT/t9b-$(basename $tree).json 2>&1 | grep -E "p50_alone|over_p50|p99_during_ms|ttft"
done
echo "end $(date +%T)"
