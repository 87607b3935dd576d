"""Prefill attention over the paged KV cache: every prompt chunk of an engine step in one Triton kernel per layer.

A step packs prompt chunks of several requests into one row (infer/cache.py). Chunk c is tokens [start_c,
start_c + n_c) of its request, and each of its queries sees that request's keys 0..its own position: the keys
before start_c come from the cache (an earlier chunk, or a prefix served by the prefix cache), the chunk's own were
written just before. The torch path attends chunk by chunk (a gather of the request's blocks, one SDPA call, a copy
back, per chunk and layer); a step of 60 short chat chunks made ~2,000 such calls a step
(benchmarks/results/2026-12-05-h100-session16). Here one launch covers them all: the chunks are cut into tiles of
a few tokens, and program (tile, kv head) runs flash attention's online softmax for the tile's tokens times the
query heads sharing that kv head (GQA: each key block is read once for the group, not once per head), over its
request's keys 0..the tile's last position, read through the request's block table BLOCK_N keys at a time (any
block size), the causal mask aligned to each query's position. Scores and the accumulator are fp32.
On an H100 (3B preset, 128 x (512 + 256)) steps that read prompt chunks took 38 ms against the torch path's 55 ms,
and its first pass had no cost for new shapes, where the torch path's cuDNN SDPA built a plan for each
(benchmarks/results/2026-12-05-h100-session17).

`plan(chunks, device, tile_tokens(H, KV))` builds the step's tile table once on the host; `prefill_attention` runs
it per layer.
"""

from __future__ import annotations

import os

import torch

from smollm3.ops.gemv import triton

ROWS = 128  # query rows per program: tokens x the GQA group's heads, so each key block is read once per group
BLOCK_N = 64  # keys per iteration

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _prefill_kernel(q_ptr, kc_ptr, vc_ptr, o_ptr, tile_ptr, table_ptr, s_qn, s_qh, s_on, s_oh, s_tb, s_blk, s_kh,
                        s_ks, qk_scale, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
                        ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
        # program (tile, kv head): ROWS // GP tokens x the G query heads that share the kv head (row r: token r // GP,
        # head r % GP, padded to GP a power of two). tile: (first packed token, tokens, position of the first token
        # in its request, the request's row in tables)
        t = tl.program_id(0)
        kvh = tl.program_id(1)
        row0 = tl.load(tile_ptr + t * 4)
        n = tl.load(tile_ptr + t * 4 + 1)
        pos0 = tl.load(tile_ptr + t * 4 + 2)
        table = table_ptr + tl.load(tile_ptr + t * 4 + 3).to(tl.int64) * s_tb
        r = tl.arange(0, ROWS)
        tok = r // GP
        head = kvh * G + r % GP
        valid = (tok < n) & (r % GP < G)
        rn = tl.arange(0, BLOCK_N)
        rd = tl.arange(0, D)
        rows = (row0 + tok).to(tl.int64)
        q = tl.load(q_ptr + rows[:, None] * s_qn + head[:, None] * s_qh + rd[None, :], mask=valid[:, None], other=0.0)
        qpos = pos0 + tok
        end = pos0 + n  # keys 0..end-1: the last token's
        m = tl.full((ROWS,), float("-inf"), tl.float32)
        lsum = tl.zeros((ROWS,), tl.float32)
        acc = tl.zeros((ROWS, D), tl.float32)
        for k0 in tl.range(0, end, BLOCK_N):
            kpos = k0 + rn
            kmask = kpos < end
            blk = tl.load(table + kpos // BS, mask=kmask, other=0).to(tl.int64)
            at = blk * s_blk + kvh * s_kh + (kpos % BS) * s_ks
            k = tl.load(kc_ptr + at[:, None] + rd[None, :], mask=kmask[:, None], other=0.0)
            v = tl.load(vc_ptr + at[:, None] + rd[None, :], mask=kmask[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * qk_scale  # log2 units: exp2 below
            s = tl.where(kpos[None, :] <= qpos[:, None], s, float("-inf"))
            new = tl.maximum(m, tl.max(s, 1))
            p = tl.exp2(s - new[:, None])
            alpha = tl.exp2(m - new)
            lsum = lsum * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m = new
        out = acc / lsum[:, None]
        tl.store(o_ptr + rows[:, None] * s_on + head[:, None] * s_oh + rd[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=valid[:, None])


def tile_tokens(heads: int, kv_heads: int) -> int:
    """Tokens per tile: ROWS over the GQA group padded to a power of two."""
    return ROWS // (1 << (heads // kv_heads - 1).bit_length())


def available(device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether the kernel runs a cache of this device, dtype and head size: Triton on a CUDA device (or its CPU
    interpreter), bf16/fp16, head_dim a power of two >= 16."""
    return (triton is not None and (torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
            and dtype in (torch.bfloat16, torch.float16) and head_dim >= 16 and head_dim & (head_dim - 1) == 0)


def plan(chunks: list[tuple[list[int], int, int]], device, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's tile table [T, 4] (first packed token, tokens, first token's position, chunk), `tokens` per tile
    at most (tile_tokens), and block tables [chunks, most blocks] (int32, on `device`) for chunks (block table
    holding at least start + n tokens, start, n) packed in this order."""
    tiles, rows, offset = [], [], 0
    for c, (table, start, n) in enumerate(chunks):
        for i in range(0, n, tokens):
            tiles.append((offset + i, min(tokens, n - i), start + i, c))
        rows.append(table)
        offset += n
    nb = max(len(t) for t in rows)
    tables = torch.tensor([t + [0] * (nb - len(t)) for t in rows], dtype=torch.int32)
    return torch.tensor(tiles, dtype=torch.int32).to(device), tables.to(device)


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tiles: torch.Tensor,
                      tables: torch.Tensor, scale: float) -> torch.Tensor:
    """q [N, H, D] (the step's packed queries, after RoPE; any strides with a contiguous last dim); k_cache, v_cache
    [num_blocks, KV, block_size, D] (one layer's, the chunks' own K/V already written); tiles, tables from `plan`
    with tile_tokens(H, KV) tokens per tile. -> [N, H, D]."""
    N, H, D = q.shape
    KV, bs = k_cache.shape[1], k_cache.shape[2]
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1 and k_cache.stride() == v_cache.stride()
    out = torch.empty(N, H, D, dtype=q.dtype, device=q.device)
    g = H // KV
    _prefill_kernel[(tiles.shape[0], KV)](
        q, k_cache, v_cache, out, tiles, tables, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        tables.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), scale * 1.4426950408889634,
        G=g, GP=1 << (g - 1).bit_length(), D=D, BS=bs, ROWS=ROWS, BLOCK_N=BLOCK_N, num_warps=8, num_stages=2)
    return out
