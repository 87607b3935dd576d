#!/bin/bash
# Session 20 call 4: pytest -m gpu at main's final commit (main + deterministic-dkdv) in the background; beside it,
# the fused prefill's step profile from branch combo2's src (.carry/combo2-tree). carry [".carry"].
exec > >(tee -a $OUT/log-s20-4.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
git log --oneline -1
(PYTHONPATH=src timeout 420 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout=240 -rf tests/ops \
   tests/test_model.py tests/train tests/infer/test_fast_decode.py > $OUT/pytest-gpu-main.txt 2>&1;
 echo "pytest rc $?" >> $OUT/pytest-gpu-main.txt) &
PYTEST=$!
echo "prof $(date +%T)"
PYTHONPATH=.carry/combo2-tree/src timeout 300 python3 .carry/prefill_prof.py 512 > $OUT/prof.txt 2>&1
grep -v "^-\|^ *$" $OUT/prof.txt | cut -c1-200 | head -80
echo "prof done $(date +%T)"
wait $PYTEST
tail -5 $OUT/pytest-gpu-main.txt
echo "end $(date +%T)"
