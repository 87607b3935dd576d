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

A short chunk deep in a long prompt is few tiles over many keys: a 190-token chunk at depth 32k was 24 programs on
a 132-SM H100, each looping over 32k keys, and the step took ~34 ms against 4.8 ms for the decode alone
(benchmarks/results/2026-12-05-h100-session19). So a tile whose keys run past SPLIT_KEYS is split across programs
at every multiple of SPLIT_KEYS (flash-decoding, as ops/decode_kernels.py does for decode): each split writes its
normalised fp32 output and base-2 log-sum-exp, and a second small kernel merges a tile's splits into the output.
The cuts are fixed key positions, not chosen by the step: a query's keys are reduced in the same blocks, splits and
order however its prompt was chunked and whatever else the step holds: given the same q, k, v its output is the
same bits with the prefix cache or without (a split that holds no key a row may see gives it weight exactly 0).

On Hopper a key block (inside one cache block: the engine's blocks are 64 keys, BLOCK_N) loads through TMA
descriptors over the layer's cache seen as rows of D, which Triton pipelines, as the training kernels do
(attention_triton.py); elsewhere, and for smaller cache blocks, through gathered pointer loads. Both run the same
arithmetic: only the block holding k_hi masks its loads, and the causal select runs in every block.

`plan(chunks, device, tile_tokens(H, KV))` builds the step's tables once on the host; `prefill_attention` runs
them per layer.
"""

from __future__ import annotations

import os

import torch

from smollm3.ops.gemv import triton

ROWS = 128  # query rows per program: tokens x the GQA group's heads, so each key block is read once per group
BLOCK_N = 64  # keys per iteration
# keys per split: a split writes a ROWS x D fp32 partial that the merge reads back, against 2 x SPLIT_KEYS x D of
# K/V it reads (1/16 of that traffic at 4,096 keys, bf16); a 190-token chunk at depth 32k is then 6 tiles x 9 splits
# x 4 kv heads = 216 programs, over an H100's 132 SMs; the partials of a 2,048-token chunk at depth 64k take 270 MB
# (scratch_bytes)
SPLIT_KEYS = 64 * BLOCK_N
# launch settings; TMA: on Hopper key blocks load through tensor descriptors over the layer's cache (pipelined by
# Triton; the gathered pointer loads were not), where a key block lies inside one cache block. Warps: 8 a program,
# 4 from wide_grid programs on (H100, one layer of the 3B: 160 programs, a 256-token chunk at depth 16,384, 132 us
# at 8 against 166 at 4; 256 programs, the same chunk at 28,672, 254 against 188; 2,048 programs, 1,475 against
# 1,181: benchmarks/results/2026-12-06-h100-session24). The two give the same bits (tests/ops), so a prompt's
# result does not depend on which its steps took
CONFIG = {"num_warps": 8, "wide_warps": 4, "wide_grid": 256, "num_stages": 2, "TMA": True}

if triton is not None:
    import triton.language as tl

    from smollm3.ops.attention_triton import rows_source

    @triton.jit
    def _tile_rows(kvh, n, G: tl.constexpr, GP: tl.constexpr, ROWS: tl.constexpr):
        """A program's query rows: row r is token r // GP of the tile and head kvh * G + r % GP (the GQA group
        padded to GP, a power of two); valid: a real token and head. -> (r, token, head, valid)."""
        r = tl.arange(0, ROWS)
        tok = r // GP
        return r, tok, kvh * G + r % GP, (tok < n) & (r % GP < G)

    @triton.jit
    def _key_block(q, qpos, m, lsum, acc, k0, k_hi, table, kc, vc, kvh, KV, rd, s_blk, s_kh, s_ks, qk_scale,
                   BS: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr, TMA: tl.constexpr):
        """Flash attention's online-softmax update of a tile's rows by keys k0.. (BLOCK_N), keys past a row's own
        position left out. MASK: the block runs past k_hi (off: every key of it is below k_hi, so loads need no
        mask). TMA: kc, vc are descriptors over the layer's cache as rows of D, and the block lies inside one cache
        block. The causal select stays in both loops: without it the compiler fuses the score's scale into the
        exponent's subtraction, and a block would round apart from the same block in the masked loop (on an H100,
        prompts chunked two ways then differed: benchmarks/results/2026-12-06-h100-session23)."""
        kpos = k0 + tl.arange(0, BLOCK_N)
        kmask = kpos < k_hi
        if TMA:
            row = (tl.load(table + k0 // BS) * KV + kvh) * BS + k0 % BS
            k = kc.load([row, 0])
            v = vc.load([row, 0])
            if MASK:  # keys past k_hi hold whatever the block holds: weight 0, and 0 x inf would not be 0
                v = tl.where(kmask[:, None], v, 0.0)
        else:
            if MASK:
                blk = tl.load(table + kpos // BS, mask=kmask, other=0).to(tl.int64)
            else:
                blk = tl.load(table + kpos // BS).to(tl.int64)
            at = blk * s_blk + kvh * s_kh + (kpos % BS) * s_ks
            if MASK:
                k = tl.load(kc + at[:, None] + rd[None, :], mask=kmask[:, None], other=0.0)
                v = tl.load(vc + at[:, None] + rd[None, :], mask=kmask[:, None], other=0.0)
            else:
                k = tl.load(kc + at[:, None] + rd[None, :])
                v = tl.load(vc + at[:, None] + rd[None, :])
        s = tl.dot(q, tl.trans(k)) * qk_scale  # log2 units: exp2 below
        s = tl.where(kpos[None, :] <= qpos[:, None], s, float("-inf"))
        new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp2(s - new[:, None])
        alpha = tl.exp2(m - new)
        lsum = lsum * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return new, lsum, acc

    @triton.jit
    def _prefill_kernel(q_ptr, kc_ptr, vc_ptr, o_ptr, part_ptr, lse_ptr, tile_ptr, table_ptr, s_qn, s_qh, s_on, s_oh,
                        s_tb, s_blk, s_kh, s_ks, cache_rows, qk_scale, KV, G: tl.constexpr, GP: tl.constexpr,
                        D: tl.constexpr, BS: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
                        TMA: tl.constexpr):
        # program (tile, kv head): ROWS // GP tokens x the G query heads that share the kv head (row r: token r // GP,
        # head r % GP, padded to GP a power of two). tile: (first packed token, tokens, position of the first token
        # in its request, the request's row in tables, keys [k_lo, k_hi), partial slot or -1: the output itself)
        t = tl.program_id(0)
        kvh = tl.program_id(1)
        row0 = tl.load(tile_ptr + t * 7)
        n = tl.load(tile_ptr + t * 7 + 1)
        pos0 = tl.load(tile_ptr + t * 7 + 2)
        table = table_ptr + tl.load(tile_ptr + t * 7 + 3).to(tl.int64) * s_tb
        k_lo = tl.load(tile_ptr + t * 7 + 4)
        k_hi = tl.load(tile_ptr + t * 7 + 5)
        slot = tl.load(tile_ptr + t * 7 + 6)
        r, tok, head, valid = _tile_rows(kvh, n, G, GP, ROWS)
        rd = tl.arange(0, D)
        rows = (row0 + tok).to(tl.int64)
        q = tl.load(q_ptr + rows[:, None] * s_qn + head[:, None] * s_qh + rd[None, :], mask=valid[:, None], other=0.0)
        qpos = pos0 + tok
        kc = rows_source(kc_ptr, D, cache_rows, BLOCK_N, D, TMA)
        vc = rows_source(vc_ptr, D, cache_rows, BLOCK_N, D, TMA)
        m = tl.full((ROWS,), -1.0e30, tl.float32)  # finite: a row sees no key of a split past its position
        lsum = tl.zeros((ROWS,), tl.float32)
        acc = tl.zeros((ROWS, D), tl.float32)
        # key blocks wholly below k_hi load without masks: deep in a prompt, all of a split's blocks but the one
        # holding the tile's last position. Their arithmetic is the masked loop's, so where the cut falls (it moves
        # with the chunking) changes no result
        k_mid = k_lo + (k_hi - k_lo) // BLOCK_N * BLOCK_N  # k_lo a multiple of BLOCK_N
        for k0 in tl.range(k_lo, k_mid, BLOCK_N):
            m, lsum, acc = _key_block(q, qpos, m, lsum, acc, k0, k_hi, table, kc, vc, kvh, KV, rd, s_blk, s_kh, s_ks,
                                      qk_scale, BS, BLOCK_N, False, TMA)
        if k_mid < k_hi:
            m, lsum, acc = _key_block(q, qpos, m, lsum, acc, k_mid, k_hi, table, kc, vc, kvh, KV, rd, s_blk, s_kh,
                                      s_ks, qk_scale, BS, BLOCK_N, True, TMA)
        # lsum >= 1 for a row that saw a key (its largest score adds exp2(0)); 0 for one that saw none (a split past
        # its position: out 0, log-sum-exp -inf, weight 0 in the merge)
        out = acc / tl.where(lsum > 0, lsum, 1.0)[:, None]
        if slot < 0:
            tl.store(o_ptr + rows[:, None] * s_on + head[:, None] * s_oh + rd[None, :],
                     out.to(o_ptr.dtype.element_ty), mask=valid[:, None])
        else:  # one split of the tile's keys: part [slots, KV, ROWS, D], lse [slots, KV, ROWS], fp32
            ps = (slot.to(tl.int64) * KV + kvh) * ROWS + r
            tl.store(part_ptr + ps[:, None] * D + rd[None, :], out, mask=valid[:, None])
            tl.store(lse_ptr + ps, m + tl.log2(lsum), mask=valid)

    @triton.jit
    def _merge_kernel(part_ptr, lse_ptr, o_ptr, merge_ptr, s_on, s_oh, KV, G: tl.constexpr, GP: tl.constexpr,
                      D: tl.constexpr, ROWS: tl.constexpr):
        # program (split tile, kv head): out = sum_i w_i o_i / sum_i w_i, w_i = 2^(lse_i - max lse), over the tile's
        # splits; rows as _prefill_kernel's. merge: (first packed token, tokens, first partial slot, splits)
        t = tl.program_id(0)
        kvh = tl.program_id(1)
        row0 = tl.load(merge_ptr + t * 4)
        n = tl.load(merge_ptr + t * 4 + 1)
        slot0 = tl.load(merge_ptr + t * 4 + 2).to(tl.int64)
        splits = tl.load(merge_ptr + t * 4 + 3)
        r, tok, head, valid = _tile_rows(kvh, n, G, GP, ROWS)
        rd = tl.arange(0, D)
        top = tl.full((ROWS,), float("-inf"), tl.float32)
        for i in range(splits):
            top = tl.maximum(top, tl.load(lse_ptr + ((slot0 + i) * KV + kvh) * ROWS + r, mask=valid, other=0.0))
        wsum = tl.zeros((ROWS,), tl.float32)
        acc = tl.zeros((ROWS, D), tl.float32)
        for i in range(splits):
            at = ((slot0 + i) * KV + kvh) * ROWS + r
            w = tl.exp2(tl.load(lse_ptr + at, mask=valid, other=0.0) - top)
            wsum += w
            acc += w[:, None] * tl.load(part_ptr + at[:, None] * D + rd[None, :], mask=valid[:, None], other=0.0)
        rows = (row0 + tok).to(tl.int64)
        tl.store(o_ptr + rows[:, None] * s_on + head[:, None] * s_oh + rd[None, :],
                 (acc / wsum[:, None]).to(o_ptr.dtype.element_ty), mask=valid[:, None])


def tile_tokens(heads: int, kv_heads: int) -> int:
    """Tokens per tile: ROWS over the GQA group padded to a power of two."""
    return ROWS // (1 << (heads // kv_heads - 1).bit_length())


def available(device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether the kernel runs a cache of this device, dtype and head size: Triton on a CUDA device (or its CPU
    interpreter), bf16/fp16, head_dim a power of two >= 16."""
    return (triton is not None and (torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
            and dtype in (torch.bfloat16, torch.float16) and head_dim >= 16 and head_dim & (head_dim - 1) == 0)


def scratch_bytes(tokens: int, max_len: int, heads: int, kv_heads: int, head_dim: int) -> int:
    """The splits' partials (fp32 output and log-sum-exp) of a step of `tokens` prompt tokens in one chunk at keys
    up to max_len: what an engine keeps free beside its KV cache."""
    tiles = -(-tokens // tile_tokens(heads, kv_heads)) + 1
    return tiles * -(-max_len // SPLIT_KEYS) * kv_heads * ROWS * (head_dim + 1) * 4


def key_splits(end: int, split_keys: int = SPLIT_KEYS) -> list[tuple[int, int]]:
    """A tile's key ranges [lo, hi) covering keys [0, end): cut at every multiple of split_keys (a multiple of
    BLOCK_N), whatever the tile."""
    assert split_keys % BLOCK_N == 0 and split_keys > 0
    return [(lo, min(lo + split_keys, end)) for lo in range(0, end, split_keys)]


def plan(chunks: list[tuple[list[int], int, int]], device, tokens: int,
         split_keys: int = SPLIT_KEYS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The step's tables for chunks (block table holding at least start + n tokens, start, n) packed in this order,
    `tokens` per tile at most (tile_tokens): the program table [P, 7] (first packed token, tokens, first token's
    position, chunk, keys k_lo, k_hi, partial slot or -1: the output directly), the merge table [M, 4] (first packed
    token, tokens, first partial slot, splits) of tiles split across programs (key_splits), block tables [chunks,
    most blocks] (all int32, on `device`) and the number of partial slots."""
    tiles, rows, offset = [], [], 0
    for c, (table, start, n) in enumerate(chunks):
        for i in range(0, n, tokens):
            tiles.append((offset + i, min(tokens, n - i), start + i, c))
        rows.append(table)
        offset += n
    programs, merges, slots = [], [], 0
    for row0, n, pos0, c in tiles:
        ranges = key_splits(pos0 + n, split_keys)
        if len(ranges) == 1:
            programs.append((row0, n, pos0, c, 0, pos0 + n, -1))
            continue
        merges.append((row0, n, slots, len(ranges)))
        programs += [(row0, n, pos0, c, lo, hi, slots + i) for i, (lo, hi) in enumerate(ranges)]
        slots += len(ranges)
    nb = max(len(t) for t in rows)
    tables = torch.tensor([t + [0] * (nb - len(t)) for t in rows], dtype=torch.int32)
    programs = torch.tensor(programs, dtype=torch.int32).reshape(-1, 7)
    merges = torch.tensor(merges, dtype=torch.int32).reshape(-1, 4)
    return to_device(programs, device), to_device(merges, device), to_device(tables, device), slots


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on `device` without waiting for it: torch's blocking copy from pageable memory synchronises
    the stream (everything queued runs first), so a prompt step's few small tables held the host until the GPU had
    drained, and the next step could not be queued behind this one. Pinned (by torch's caching host allocator,
    which keeps the buffer until the copy is done), the copy is queued like a kernel."""
    device = torch.device(device)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tiles: torch.Tensor,
                      merges: torch.Tensor, tables: torch.Tensor, slots: int, scale: float,
                      cfg: dict = CONFIG) -> torch.Tensor:
    """q [N, H, D] (the step's packed queries, after RoPE; any strides with a contiguous last dim); k_cache, v_cache
    [num_blocks, KV, block_size, D] (one layer's, the chunks' own K/V already written); tiles, merges, tables,
    slots from `plan` with tile_tokens(H, KV) tokens per tile. -> [N, H, D]."""
    N, H, D = q.shape
    KV, bs = k_cache.shape[1], k_cache.shape[2]
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1 and k_cache.stride() == v_cache.stride()
    out = torch.empty(N, H, D, dtype=q.dtype, device=q.device)
    part = torch.empty(max(slots, 1), KV, ROWS, D, dtype=torch.float32, device=q.device)  # one slot: never read
    lse = torch.empty(max(slots, 1), KV, ROWS, dtype=torch.float32, device=q.device)
    g = H // KV
    gp = 1 << (g - 1).bit_length()
    _prefill_kernel[(tiles.shape[0], KV)](
        q, k_cache, v_cache, out, part, lse, tiles, tables, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        tables.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), k_cache.numel() // D,
        scale * 1.4426950408889634, KV, G=g, GP=gp, D=D, BS=bs, ROWS=ROWS, BLOCK_N=BLOCK_N,
        TMA=_tma(cfg, k_cache, v_cache), num_stages=cfg["num_stages"],
        num_warps=cfg["wide_warps"] if tiles.shape[0] * KV >= cfg["wide_grid"] else cfg["num_warps"])
    if merges.shape[0]:
        _merge_kernel[(merges.shape[0], KV)](part, lse, out, merges, out.stride(0), out.stride(1), KV, G=g, GP=gp,
                                             D=D, ROWS=ROWS, num_warps=8)
    return out


def _tma(cfg: dict, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether key blocks load through TMA descriptors (cfg "TMA"): Hopper, each layer's cache contiguous and
    16-byte aligned (rows of D), a key block inside one cache block. The descriptors live in scratch memory that
    Triton asks torch for, set at each launch as attention_triton does (Triton keeps the allocator per thread)."""
    if not (cfg.get("TMA") and k_cache.is_cuda and torch.cuda.get_device_capability(k_cache.device)[0] >= 9):
        return False
    if k_cache.shape[2] % BLOCK_N or not all(c.is_contiguous() and c.data_ptr() % 16 == 0 for c in (k_cache, v_cache)):
        return False
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device=k_cache.device))
    return True
