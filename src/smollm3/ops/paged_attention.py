"""Paged attention in torch ops: the KV cache as fixed-size blocks found through each request's block table.

One layer's cache is [num_blocks, kv_heads, block_size, head_dim]; token t of a request lives in block
table[t // block_size] at offset t % block_size. `paged_attention` (RoPE, the KV write, attention for one new token
per row) is the reference of decode_kernels.attention, and what runs where that kernel does not (the CPU, fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smollm3.ops.attention import rotate_half


def write_kv(k_cache, v_cache, k, v, blocks, offsets):
    """k, v [n, KV, D] into one layer's cache [num_blocks, KV, bs, D] at (blocks[i], offsets[i])."""
    k_cache[blocks, :, offsets] = k
    v_cache[blocks, :, offsets] = v


def gather_kv(cache: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """One layer's cache [num_blocks, KV, bs, D] read through block tables [b, nb] -> [b, KV, nb * bs, D]."""
    b, nb = tables.shape
    _, kv, bs, d = cache.shape
    return cache[tables].permute(0, 2, 1, 3, 4).reshape(b, kv, nb * bs, d)


def decode_attention(q, k, v, k_cache, v_cache, lengths, tables, scale: float, sdpa: bool = False):
    """Attention for one new token per row through the block tables, after writing its k, v.
    q [b, H, D] (after RoPE), k, v [b, KV, D]; lengths [b] (the new token's position); tables [b, nb] -> [b, H, D].
    `sdpa`: one fused CPU kernel; else grouped matmuls (the G query heads of a group share one key block) that any
    CUDA graph or torch.compile takes."""
    b, H, D = q.shape
    KV = k.shape[1]
    bs = k_cache.shape[2]
    rows = torch.arange(b, device=q.device)
    write_kv(k_cache, v_cache, k, v, tables[rows, lengths // bs], lengths % bs)
    keys, values = gather_kv(k_cache, tables), gather_kv(v_cache, tables)
    visible = torch.arange(keys.shape[2], device=q.device)[None, :] <= lengths[:, None]  # [b, S]
    if sdpa:
        out = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=visible[:, None, None],
                                             scale=scale, enable_gqa=True)
        return out[:, :, 0]
    qg = q.reshape(b, KV, H // KV, D)
    scores = torch.matmul(qg, keys.transpose(-1, -2)).float() * scale  # [b, KV, G, S]
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    probs = scores.softmax(-1).to(values.dtype)
    return torch.matmul(probs, values).reshape(b, H, D)


def paged_attention(qkv, cos, sin, k_cache, v_cache, lengths, tables, *, heads: int, kv_heads: int, scale: float,
                    use_rope: bool):
    """decode_kernels.attention in torch ops: RoPE on the new q, k; their K/V written at `lengths` through the block
    tables; attention over keys 0..lengths[b]. k_cache, v_cache [num_blocks, KV, bs, D] -> [b, H * D]."""
    q, k, v = rope_qkv(qkv, cos, sin, heads=heads, kv_heads=kv_heads, use_rope=use_rope)
    return decode_attention(q, k, v, k_cache, v_cache, lengths, tables, scale).reshape(qkv.shape[0], -1)


def rope_qkv(qkv, cos, sin, *, heads: int, kv_heads: int, use_rope: bool):
    """The fused projection's output [n, (heads + 2 kv_heads) D] as q [n, heads, D], k, v [n, kv_heads, D], RoPE
    applied to q and k (cos, sin [n, D]) unless the layer is NoPE."""
    n, D = qkv.shape[0], cos.shape[-1]
    q, k, v = qkv.split([heads * D, kv_heads * D, kv_heads * D], dim=-1)
    q, k, v = q.view(n, heads, D), k.view(n, kv_heads, D), v.view(n, kv_heads, D)
    if use_rope:
        c, s = cos[:, None], sin[:, None]
        q, k = q * c + rotate_half(q) * s, k * c + rotate_half(k) * s
    return q, k, v
