"""The paged prefill attention kernel (ops/prefill_attention.py) against the engine's chunk-by-chunk torch path
(infer/cache.py's PagedCache.attend): one step's packed chunks, fresh prompts and continuations that read earlier
tokens from the cache, chunks longer than a query tile, block sizes below and above the kernel's key tile, block
tables shuffled, GQA 2:1, SmolLM3's 4:1 and 3:1 (a group that is not a power of two), padding tokens after the
chunks, chunks deep in the cache with their keys split across programs and merged; then an engine's greedy tokens with and without it, prefix cache and chunked prompts included. Through
Triton's CPU interpreter in fp16 where Triton is installed, and on the GPU in bf16."""

import dataclasses
import json
import os
import random
import subprocess
import sys

import pytest
import torch
from random_weights import randomise_

from smollm3 import build_model, preset
from smollm3.infer import Engine, SamplingParams
from smollm3.infer.cache import PagedCache
from smollm3.ops.prefill_attention import BLOCK_N, SPLIT_KEYS, key_splits, plan

try:
    import triton  # noqa: F401
except ImportError:
    triton = None

# (chunks as (start, n), block size); starts > 0 read their first tokens from the cache
CASES = [([(0, 1), (0, 70), (37, 5), (100, 130)], 16), ([(3, 64), (0, 9), (64, 64)], 4),
         ([(0, 200), (150, 1)], 128), ([(10, 60), (0, 3)], 64)]
# chunks deep in the cache, attended with their keys split (a launch asked for more programs than they have tiles,
# splits of SPLIT_KEYS_SMALL keys or more): starts that are and are not multiples of BLOCK_N, chunks of several
# tiles, a short chunk beside them that is not split
SPLIT_CASES = [([(700, 40), (0, 5)], 16), ([(1500, 3), (64, 64)], 128), ([(1024, 70), (300, 9)], 16)]
SPLIT_KEYS_SMALL = 2 * BLOCK_N


def errors(device: str, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int = 32,
           split: bool = False) -> list[float]:
    """Relative error of the kernel's output against the torch path, per case (of SPLIT_CASES, with the kernel's
    keys split, if `split`)."""
    cfg = dataclasses.replace(preset("tiny"), num_attention_heads=heads, num_key_value_heads=kv_heads,
                              hidden_size=heads * head_dim, head_dim=head_dim)
    out = []
    for case, (chunks, bs) in enumerate(SPLIT_CASES if split else CASES):
        rng = random.Random(case)
        torch.manual_seed(case)
        nblocks = sum(-(-(s + n) // bs) for s, n in chunks) + 1
        caches = [PagedCache(cfg, nblocks, bs, device, dtype, prefill_kernel=kernel) for kernel in (False, True)]
        if split:
            caches[1].split_programs, caches[1].split_keys = 10_000, SPLIT_KEYS_SMALL
        ids = list(range(nblocks - 1))
        rng.shuffle(ids)  # tables that are not the identity
        plan = []
        for start, n in chunks:
            plan.append(([ids.pop() for _ in range(-(-(start + n) // bs))], start, n))
        earlier_k = torch.randn(caches[0].k[0].shape, dtype=dtype, device=device)  # what earlier steps wrote
        earlier_v = torch.randn_like(earlier_k)
        N = sum(n for _, _, n in plan)
        pad = 7
        q = torch.randn(1, heads, N + pad, head_dim, dtype=dtype, device=device)
        k = torch.randn(1, kv_heads, N + pad, head_dim, dtype=dtype, device=device)
        v = torch.randn_like(k)
        results = []
        for cache in caches:
            cache.k[0].copy_(earlier_k)
            cache.v[0].copy_(earlier_v)
            cache.plan_prefill(plan, device, pad=pad, pad_block=nblocks - 1)
            results.append(cache.attend(0, q, k, v, head_dim ** -0.5)[0, :N].float())
            # the same K/V written (the pool's blocks: padding tokens all write one slot of the scratch block, in
            # no set order on a GPU)
            assert torch.equal(cache.k[0, :-1], caches[0].k[0, :-1])
        assert not split or caches[1]._tiles[3] > 0  # partial slots: the keys were split
        ref, got = results
        out.append(((got - ref).norm() / ref.norm()).item())
    return out


def engine_tokens(device: str, dtype: torch.dtype) -> list[list[list[int]]]:
    """Greedy tokens of an engine without and with the kernel: prompts sharing a 50-token head (served from the
    prefix cache after the first), read in chunks of a 64-token step budget."""
    model = build_model(preset("tiny")).eval()
    g = randomise_(model)  # clear greedy winners: rounding alone cannot flip them
    model.to(device=device, dtype=dtype)
    V = model.config.vocab_size
    head = torch.randint(V, (50,), generator=g).tolist()
    prompts = [head + torch.randint(V, (n,), generator=g).tolist() for n in (3, 40, 90, 7)]
    sp = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    out = []
    for kernel in (False, True):
        engine = Engine(model, None, max_model_len=256, max_num_seqs=4, block_size=16, max_num_batched_tokens=64,
                        cuda_graphs=False, prefill_kernel=kernel)
        done = engine.generate(prompts[:1], sp) + engine.generate(prompts[1:], sp)
        assert [r.num_cached_tokens for r in done] == [0, 48, 48, 48]
        out.append([r.output_ids for r in done])
    return out


@pytest.mark.skipif(triton is None, reason="needs Triton (its CPU interpreter runs the kernel without a GPU)")
def test_prefill_kernel_matches_torch_path_in_interpreter():
    # the interpreter is chosen when the kernel is defined, so it runs in its own process; fp16 (the interpreter
    # emulates bf16 rounding differently from the GPU)
    code = ("import json, runpy, torch; m = runpy.run_path(%r); "
            "print(json.dumps([[m['errors']('cpu', torch.float16, h, kv, split=split) for h, kv in ((4, 2), (8, 2), (6, 2)) "
            "for split in (False, True)], "
            "m['engine_tokens']('cpu', torch.float16)]))" % __file__)
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this file imports tests/random_weights.py
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    errors_by_gqa, (plain, kernel) = json.loads(res.stdout.strip().splitlines()[-1])
    for errs in errors_by_gqa:
        assert max(errs) < 3e-3, errs
    assert kernel == plain and len({t for out in plain for t in out}) > 4  # varied tokens, the same


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prefill_kernel_matches_torch_path_on_gpu():
    for heads, kv_heads, head_dim in ((4, 2, 32), (16, 4, 128)):
        for split in (False, True):
            assert max(errors("cuda", torch.bfloat16, heads, kv_heads, head_dim, split)) < 2e-2
    plain, kernel = engine_tokens("cuda", torch.bfloat16)
    assert kernel == plain


def test_prefill_kernel_refused_where_it_cannot_run():
    with pytest.raises(ValueError, match="prefill_kernel needs Triton on a CUDA device"):
        PagedCache(preset("tiny"), 4, 16, "cpu", torch.float32, prefill_kernel=True)


def test_plan_splits_keys_at_block_cuts_before_each_tile():
    # SmolLM3's tiles (32 tokens, 4 kv heads): a 190-token chunk at depth 32k, a short chunk too shallow to split,
    # a fresh prompt
    chunks = [(list(range(600)), 32_768, 190), (list(range(40)), 2_000, 7), (list(range(2)), 0, 20)]
    tiles, merges, _, slots = plan(chunks, "cpu", 32, 4, min_programs=264)
    assert 200 <= tiles.shape[0] * 4 <= 300  # about min_programs programs, not 8 x 4
    by_tile = {}  # first packed token -> (first position, end, [(k_lo, k_hi, slot)])
    for row0, n, pos0, _, lo, hi, slot in tiles.tolist():
        by_tile.setdefault(row0, (pos0, pos0 + n, []))[2].append((lo, hi, slot))
    assert len(by_tile) == 6 + 1 + 1
    for pos0, end, ranges in by_tile.values():
        ranges.sort()
        assert ranges[0][0] == 0 and ranges[-1][1] == end  # [0, end) ...
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # ... exactly once
        assert all(lo % BLOCK_N == 0 and lo <= pos0 for lo, _, _ in ranges)
        if len(ranges) > 1:
            assert all(hi - lo >= SPLIT_KEYS and slot >= 0 for lo, hi, slot in ranges)
        else:
            assert ranges[0][2] == -1  # the output directly
        assert (len(ranges) > 1) == (pos0 >= 2 * SPLIT_KEYS)  # split where the keys before the tile allow two
    assert slots == int(merges[:, 3].sum()) and merges.shape[0] == 6
    for row0, n, slot0, count in merges.tolist():  # a merge's slots are its tile's splits
        pos0, end, ranges = by_tile[row0]
        assert end - pos0 == n and [slot for _, _, slot in ranges] == list(range(slot0, slot0 + count))
    # programs enough already: nothing split
    tiles, merges, _, slots = plan(chunks, "cpu", 32, 4, min_programs=32)
    assert merges.shape[0] == 0 and slots == 0 and (tiles[:, 6] == -1).all() and (tiles[:, 4] == 0).all()
    # cuts for a start that is not a multiple of BLOCK_N (the last split takes the rest), and a span asking for more
    # splits than the keys before the tile allow
    assert key_splits(700, 740, 128, 128) == [(0, 128), (128, 256), (256, 384), (384, 512), (512, 740)]
    assert key_splits(255, 256, 64, 128) == [(0, 256)]
