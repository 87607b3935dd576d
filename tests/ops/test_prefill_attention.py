"""The paged prefill attention kernel (ops/prefill_attention.py) against the engine's chunk-by-chunk torch path
(infer/cache.py's PagedCache.attend): one step's packed chunks, fresh prompts and continuations that read earlier
tokens from the cache, chunks longer than a query tile, block sizes below and above the kernel's key tile, block
tables shuffled, GQA 2:1, SmolLM3's 4:1 and 3:1 (a group that is not a power of two), padding tokens after the
chunks, chunks whose keys are split across programs and merged (rows straddling a cut included), and the same
bits for a prompt however it is chunked; then an engine's greedy tokens with and without it, prefix cache and
chunked prompts included. Through
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
from smollm3.ops.prefill_attention import (BLOCK_N, CONFIG, ROWS, SPLIT_KEYS, _tma, key_splits, plan, prefill_attention,
                                           scratch_bytes, tile_tokens)

try:
    import triton  # noqa: F401
except ImportError:
    triton = None

# (chunks as (start, n), block size); starts > 0 read their first tokens from the cache
CASES = [([(0, 1), (0, 70), (37, 5), (100, 130)], 16), ([(3, 64), (0, 9), (64, 64)], 4),
         ([(0, 200), (150, 1)], 128), ([(10, 60), (0, 3)], 64)]
# chunks attended with their keys split every SPLIT_KEYS_SMALL keys: starts that are and are not multiples of the
# cut, chunks of several tiles, a tile whose first rows see no key of its last split (100 + 40 across the cut at
# 128), a short chunk beside them that is not split
SPLIT_CASES = [([(700, 40), (0, 5), (100, 40)], 16), ([(1500, 3), (64, 64)], 128), ([(1024, 70), (300, 9)], 16)]
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
            caches[1].split_keys = SPLIT_KEYS_SMALL
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
            "print(json.dumps([[m['errors']('cpu', torch.float16, h, kv, split=split) "
            "for h, kv in ((4, 2), (8, 2), (6, 2)) for split in (False, True)], "
            "m['engine_tokens']('cpu', torch.float16), m['chunking_invariance']('cpu', torch.float16)]))" % __file__)
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this file imports tests/random_weights.py
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    errors_by_gqa, (plain, kernel), invariant = json.loads(res.stdout.strip().splitlines()[-1])
    for errs in errors_by_gqa:
        assert max(errs) < 3e-3, errs
    assert kernel == plain and len({t for out in plain for t in out}) > 4  # varied tokens, the same
    assert invariant


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prefill_kernel_matches_torch_path_on_gpu():
    for heads, kv_heads, head_dim in ((4, 2, 32), (16, 4, 128)):
        for split in (False, True):
            assert max(errors("cuda", torch.bfloat16, heads, kv_heads, head_dim, split)) < 2e-2
    plain, kernel = engine_tokens("cuda", torch.bfloat16)
    assert kernel == plain
    assert chunking_invariance("cuda", torch.bfloat16) and chunking_invariance("cuda", torch.bfloat16, bs=64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tma_loads_give_the_pointer_loads_result():
    # SmolLM3's shape, a 300-token chunk at depth 9,000 (three splits, a partial last key block) beside a fresh
    # 40-token prompt: key blocks through TMA descriptors (Hopper) or gathered pointer loads, the same arithmetic
    KV, D, bs = 4, 128, 64
    torch.manual_seed(0)
    kc = torch.randn(200, KV, bs, D, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    tiles, merges, tables, slots = plan([(list(range(150)), 9_000, 300), (list(range(150, 151)), 0, 40)], "cuda",
                                        tile_tokens(16, KV))
    q = torch.randn(340, 16, D, device="cuda", dtype=torch.bfloat16)
    outs = [prefill_attention(q, kc, vc, tiles, merges, tables, slots, D ** -0.5, dict(CONFIG, TMA=tma))
            for tma in (False, True)]
    assert _tma(CONFIG, kc, vc) == (torch.cuda.get_device_capability()[0] >= 9)
    assert torch.isfinite(outs[0]).all()
    assert ((outs[1].float() - outs[0].float()).norm() / outs[0].float().norm()).item() < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_wide_and_narrow_launches_give_the_same_bits():
    # the launch takes fewer warps a program on wide grids, a choice that depends on what the step holds: a prompt
    # chunked two ways may meet both, so the two must agree to the bit (SmolLM3's shape; chunks fresh, deep, split,
    # with partial key blocks; TMA loads and pointer loads)
    KV, D, bs = 4, 128, 64
    torch.manual_seed(0)
    kc = torch.randn(700, KV, bs, D, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    steps = [[(0, 37)], [(0, 300), (5_000, 129)], [(9_000, 300), (100, 40)], [(30_000, 256)], [(12_345, 1_000)]]
    for chunks in steps:
        held, start = [], 0
        for pos, n in chunks:
            blocks = -(-(pos + n) // bs)
            held.append((list(range(start, start + blocks)), pos, n))
            start += blocks
        tiles, merges, tables, slots = plan(held, "cuda", tile_tokens(16, KV))
        q = torch.randn(sum(n for _, n in chunks), 16, D, device="cuda", dtype=torch.bfloat16)
        for tma in (True, False):
            narrow, wide = (prefill_attention(q, kc, vc, tiles, merges, tables, slots, D ** -0.5,
                                              dict(CONFIG, TMA=tma, wide_grid=grid)) for grid in (1 << 30, 1))
            assert torch.isfinite(narrow).all() and torch.equal(narrow, wide), (chunks, tma)


def test_prefill_kernel_refused_where_it_cannot_run():
    with pytest.raises(ValueError, match="prefill_kernel needs Triton on a CUDA device"):
        PagedCache(preset("tiny"), 4, 16, "cpu", torch.float32, prefill_kernel=True)


def chunking_invariance(device: str, dtype: torch.dtype, bs: int = 16) -> bool:
    """Whether one 700-token prompt's attention output is the same bits read in one chunk alone, and in two chunks
    (333 + 367) beside another request's chunk, with keys split every SPLIT_KEYS_SMALL keys, in blocks of bs
    tokens (on Hopper, blocks of BLOCK_N or more load through TMA)."""
    cfg = dataclasses.replace(preset("tiny"), num_attention_heads=8, num_key_value_heads=2, hidden_size=256,
                              head_dim=32)
    n = 700
    torch.manual_seed(0)
    q = torch.randn(1, 8, n, 32, dtype=dtype, device=device)
    k, v = torch.randn(1, 2, n, 32, dtype=dtype, device=device), torch.randn(1, 2, n, 32, dtype=dtype, device=device)
    other = [t.clone()[:, :, :50] for t in (q, k, v)]  # the batch-mate: 50 fresh tokens
    held = -(-n // bs)
    table, mate = list(range(held)), list(range(held, held + -(-50 // bs)))
    outs = []
    for steps in ([[(0, n)]], [[(0, 333)], [(333, n - 333), "mate"]]):
        cache = PagedCache(cfg, len(table) + len(mate) + 1, bs, device, dtype, prefill_kernel=True)
        cache.split_keys = SPLIT_KEYS_SMALL
        rows = []
        for step in steps:
            (start, count), plan, parts = step[0], [], []
            plan.append((table, start, count))
            parts.append([t[:, :, start:start + count] for t in (q, k, v)])
            if "mate" in step:
                plan.append((mate, 0, 50))
                parts.append(other)
            cache.plan_prefill(plan, device)
            out = cache.attend(0, *(torch.cat([p[i] for p in parts], dim=2) for i in range(3)), 32 ** -0.5)
            rows.append(out[0, :count])
        outs.append(torch.cat(rows))
    return torch.equal(*outs)


def test_plan_splits_keys_at_fixed_cuts():
    # SmolLM3's tiles (32 tokens): a 190-token chunk at depth 32k, a short chunk past one cut, a fresh prompt
    chunks = [(list(range(600)), 32_768, 190), (list(range(70)), 4_090, 20), (list(range(2)), 0, 20)]
    tiles, merges, _, slots = plan(chunks, "cpu", 32)
    by_tile = {}  # first packed token -> (first position, end, [(k_lo, k_hi, slot)])
    for row0, n, pos0, _, lo, hi, slot in tiles.tolist():
        by_tile.setdefault(row0, (pos0, pos0 + n, []))[2].append((lo, hi, slot))
    assert len(by_tile) == 6 + 1 + 1
    for _, end, ranges in by_tile.values():
        ranges.sort()
        assert [(lo, hi) for lo, hi, _ in ranges] == key_splits(end)
        # a cut at every multiple of SPLIT_KEYS, whatever the tile: [0, end) exactly once
        assert [lo for lo, _, _ in ranges] == list(range(0, end, SPLIT_KEYS))
        assert all(b[0] == a[1] for a, b in zip(ranges, ranges[1:])) and ranges[-1][1] == end
        assert (len(ranges) > 1) == (end > SPLIT_KEYS) and (ranges[0][2] == -1) == (len(ranges) == 1)
    assert len(by_tile[0][2]) == -(-(32_768 + 32) // SPLIT_KEYS)  # the 32k chunk's first tile: 17 splits
    assert slots == int(merges[:, 3].sum()) and merges.shape[0] == 6 + 1
    for row0, n, slot0, count in merges.tolist():  # a merge's slots are its tile's splits
        pos0, end, ranges = by_tile[row0]
        assert end - pos0 == n and [slot for _, _, slot in ranges] == list(range(slot0, slot0 + count))
    # the engine's reserve for the partials covers a full step's chunk ending at max_model_len, wherever it starts
    for start in (0, 1, 31, 63_488, 65_536 - 2_048):
        _, _, _, slots = plan([(list(range(1024)), start, 2_048)], "cpu", 32)
        assert slots * 4 * ROWS * (128 + 1) * 4 <= scratch_bytes(2_048, 65_536, 16, 4, 128) < 300 * 2**20
    assert key_splits(740, 128) == [(0, 128), (128, 256), (256, 384), (384, 512), (512, 640), (640, 740)]
    assert key_splits(128, 128) == [(0, 128)]
