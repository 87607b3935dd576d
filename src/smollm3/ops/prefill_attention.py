"""Prefill attention over the paged KV cache: every prompt chunk of an engine step in one Triton kernel per layer.

A step packs prompt chunks of several requests into one row (infer/cache.py). Chunk c is tokens [start_c,
start_c + n_c) of its request, and each of its queries sees that request's keys 0..its own position: the keys
before start_c come from the cache (an earlier chunk, or a prefix served by the prefix cache), the chunk's own were
written just before. The torch path attends chunk by chunk (a gather of the request's blocks, one SDPA call, a copy
back, per chunk and layer); a step of 60 short chat chunks made ~2,000 such calls a step
(benchmarks/results/2026-12-05-h100-session16). Here one launch covers them all: the chunks are cut into tiles of
BLOCK_M queries, and program (tile, head) runs flash attention's online softmax over its request's keys 0..the
tile's last position, read through the request's block table BLOCK_N keys at a time (any block size), the causal
mask aligned to each query's position. Scores and the accumulator are fp32.

`plan(chunks, block_size)` builds the step's tile table once on the host; `prefill_attention` runs it per layer.
"""

from __future__ import annotations

import os

import torch

from smollm3.ops.gemv import triton

BLOCK_M = 64  # queries per program
BLOCK_N = 64  # keys per iteration

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _prefill_kernel(q_ptr, kc_ptr, vc_ptr, o_ptr, tile_ptr, table_ptr, s_qn, s_qh, s_on, s_oh, s_tb, s_blk, s_kh,
                        s_ks, qk_scale, G: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        # tile: (first packed row, rows, position of the first row in its request, the request's row in tables)
        t = tl.program_id(0)
        h = tl.program_id(1)
        row0 = tl.load(tile_ptr + t * 4)
        n = tl.load(tile_ptr + t * 4 + 1)
        pos0 = tl.load(tile_ptr + t * 4 + 2)
        table = table_ptr + tl.load(tile_ptr + t * 4 + 3).to(tl.int64) * s_tb
        head = (h // G) * s_kh
        rm = tl.arange(0, BLOCK_M)
        rn = tl.arange(0, BLOCK_N)
        rd = tl.arange(0, D)
        rows = (row0 + rm).to(tl.int64)
        q = tl.load(q_ptr + rows[:, None] * s_qn + h * s_qh + rd[None, :], mask=(rm < n)[:, None], other=0.0)
        qpos = pos0 + rm
        end = pos0 + n  # keys 0..end-1: the last row's
        m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        lsum = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, D), tl.float32)
        for k0 in tl.range(0, end, BLOCK_N):
            kpos = k0 + rn
            kmask = kpos < end
            blk = tl.load(table + kpos // BS, mask=kmask, other=0).to(tl.int64)
            at = blk * s_blk + head + (kpos % BS) * s_ks
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
        tl.store(o_ptr + rows[:, None] * s_on + h * s_oh + rd[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=(rm < n)[:, None])


def available(device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether the kernel runs a cache of this device, dtype and head size: Triton on a CUDA device (or its CPU
    interpreter), bf16/fp16, head_dim a power of two >= 16."""
    return (triton is not None and (torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
            and dtype in (torch.bfloat16, torch.float16) and head_dim >= 16 and head_dim & (head_dim - 1) == 0)


def plan(chunks: list[tuple[list[int], int, int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's tile table [T, 4] (first packed row, rows, first row's position, chunk) and block tables
    [chunks, most blocks] (int32, on `device`) for chunks (block table holding at least start + n tokens, start, n)
    packed in this order."""
    tiles, rows, offset = [], [], 0
    for c, (table, start, n) in enumerate(chunks):
        for i in range(0, n, BLOCK_M):
            tiles.append((offset + i, min(BLOCK_M, n - i), start + i, c))
        rows.append(table)
        offset += n
    nb = max(len(t) for t in rows)
    tables = torch.tensor([t + [0] * (nb - len(t)) for t in rows], dtype=torch.int32)
    return torch.tensor(tiles, dtype=torch.int32).to(device), tables.to(device)


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tiles: torch.Tensor,
                      tables: torch.Tensor, scale: float) -> torch.Tensor:
    """q [N, H, D] (the step's packed queries, after RoPE; any strides with a contiguous last dim); k_cache, v_cache
    [num_blocks, KV, block_size, D] (one layer's, the chunks' own K/V already written); tiles, tables from `plan`.
    -> [N, H, D]."""
    N, H, D = q.shape
    KV, bs = k_cache.shape[1], k_cache.shape[2]
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1 and k_cache.stride() == v_cache.stride()
    out = torch.empty(N, H, D, dtype=q.dtype, device=q.device)
    _prefill_kernel[(tiles.shape[0], H)](
        q, k_cache, v_cache, out, tiles, tables, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        tables.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), scale * 1.4426950408889634,
        G=H // KV, D=D, BS=bs, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=4, num_stages=2)
    return out
