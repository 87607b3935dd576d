#!/bin/bash
# Session 20 call 3 (combo2): why test_engine_with_kernels_decodes_greedily_on_gpu failed/hung in call 1 (recompile
# log + pytest-timeout's stack dump), the 4 GPU tests call 1 never reached, then target 9 at 2048:512 alone.
exec > >(tee -a $OUT/log-s20-3.txt) 2>&1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
echo "t23 $(date +%T)"
TORCH_LOGS=recompiles PYTHONPATH=src timeout 200 python3 -m pytest -x -s -q -p no:cacheprovider --timeout=170 \
  --durations=0 tests/ops/test_decode_kernels.py::test_engine_with_kernels_decodes_greedily_on_gpu > $OUT/t23.txt 2>&1
echo "rc $?"; grep -cE "Recompiling|recompil" $OUT/t23.txt; tail -5 $OUT/t23.txt
echo "rest $(date +%T)"
PYTHONPATH=src timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout=120 -rf \
  "tests/train/test_trainer.py::test_cuda_graphs_track_eager_training" tests/infer/test_fast_decode.py > $OUT/rest.txt 2>&1
tail -6 $OUT/rest.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
echo "serve_targets 9 branch $(date +%T)"
TORCH_LOGS=recompiles PYTHONPATH=/tmp/site:src timeout 190 python3 benchmarks/serve_targets.py --model $M --only 9 \
  --t9-configs 2048:512 --out $OUT/t9-branch.json > $OUT/t9.txt 2>&1
grep -vE "^INFO|it/s" $OUT/t9.txt | grep -v ecompil | tail -12; grep -c ecompil $OUT/t9.txt
echo "end $(date +%T)"
