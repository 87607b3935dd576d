"""The engine's KV cache: fixed-size blocks of token positions, found through each request's block table.

Layout: k, v are [layers, num_blocks, kv_heads, block_size, head_dim]. Token t of a request lives in block
block_table[t // block_size] at offset t % block_size (block_manager.py hands the blocks out). Within a block one
head's keys are contiguous, so a kernel reads a block of keys as one strided tile (ops/decode_kernels.py); the torch
paths here gather a request's blocks into a contiguous [kv_heads, length, head_dim] view first.

The model drives the cache through the protocol of smollm3.model.KVCache (position_ids / attend / advance). Before
each forward the model runner sets a plan:
- prefill: `plan_prefill(chunks)` - prompt chunks of several requests packed into one row [1, N]. Chunk i is
  tokens [start_i, start_i + n_i) of its request; each token's query sees the request's keys 0..its own position
  (those before start_i are read from the cache: an earlier chunk, or a cached prefix). On CUDA every chunk of the
  step attends in one Triton kernel per layer (ops/prefill_attention.py); elsewhere chunk by chunk in torch ops.
- decode: `plan_decode(lengths, tables, kv_len)` - one new token per row at position lengths[i]; queries see keys
  0..lengths[i]. kv_len (a whole number of blocks) bounds what is read, so shapes depend only on (rows, kv_len)
  and a step can be captured in a CUDA graph per bucket.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from smollm3.config import ModelConfig
from smollm3.ops.prefill_attention import available as prefill_kernel_available
from smollm3.ops.prefill_attention import plan as plan_tiles
from smollm3.ops.prefill_attention import SPLIT_KEYS, prefill_attention, tile_tokens, to_device
from smollm3.ops.paged_attention import decode_attention, gather_kv, write_kv


def kv_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * elem


class PagedCache:
    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, device, dtype,
                 prefill_kernel: bool | None = None):
        """`prefill_kernel`: prompt chunks attend in one Triton kernel per layer (ops/prefill_attention.py), not
        chunk by chunk in torch ops; None: where it runs on a CUDA device."""
        if prefill_kernel is None:
            prefill_kernel = torch.device(device).type == "cuda" and prefill_kernel_available(device, dtype,
                                                                                              config.head_dim)
        if prefill_kernel and not prefill_kernel_available(device, dtype, config.head_dim):
            raise ValueError("prefill_kernel needs Triton on a CUDA device, bf16/fp16 weights and head_dim a power "
                             f"of two >= 16 (got {device}, {dtype}, head_dim {config.head_dim})")
        self.prefill_kernel = prefill_kernel
        self._tile_tokens = tile_tokens(config.num_attention_heads, config.num_key_value_heads)
        self.split_keys = SPLIT_KEYS  # the kernel's keys per split (prefill_attention.key_splits); tests lower it
        shape = (config.num_hidden_layers, num_blocks, config.num_key_value_heads, block_size, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.sdpa_decode = torch.device(device).type == "cpu"  # see decode_attention
        self._mode = None
        self._positions = None  # prefill: [1, N]; decode: [b, 1]
        self._chunks = []  # prefill: (query offset, n, start, table [nb]) per chunk
        self._tiles = None  # prefill with the kernel: its tables and partial slots (prefill_attention.plan)
        self._slots = None  # prefill: (blocks [N], offsets [N]) where each new token's K/V goes
        self._lengths = self._tables = None  # decode

    def plan_prefill(self, chunks: list[tuple[list[int], int, int]], device, pad: int = 0, pad_block: int = 0):
        """chunks: (block table, start, n) per request, packed in this order; then `pad` padding tokens, whose K/V
        go to block `pad_block` (one no request owns) and whose attention output is left undefined."""
        bs = self.block_size
        pos, blocks, heads, self._chunks, offset = [], [], [], [], 0
        for table, start, n in chunks:
            p = torch.arange(start, start + n)
            head = table[:-(-(start + n) // bs)]  # the blocks holding positions 0 .. start + n - 1
            heads.append((head, start, n))
            t = torch.tensor(head)
            pos.append(p)
            blocks.append(t[p // bs])
            if not self.prefill_kernel:
                self._chunks.append((offset, n, start, t.to(device)))
            offset += n
        self._tiles = plan_tiles(heads, device, self._tile_tokens, self.split_keys) if self.prefill_kernel and chunks \
            else None
        pos.append(torch.zeros(pad, dtype=torch.long))
        blocks.append(torch.full((pad,), pad_block, dtype=torch.long))
        positions = torch.cat(pos)
        self._slots = to_device(torch.cat(blocks), device), to_device(positions % bs, device)
        self._positions = to_device(positions[None], device)
        self._mode = "prefill"

    def plan_decode(self, lengths: torch.Tensor, tables: torch.Tensor):
        self._mode, self._lengths, self._tables = "decode", lengths, tables
        self._positions = lengths[:, None]

    # ---- the model's cache protocol

    def position_ids(self, B: int, T: int, device) -> torch.Tensor:
        return self._positions

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        kc, vc = self.k[layer], self.v[layer]
        if self._mode == "decode":  # q [b, H, 1, D]
            out = decode_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], kc, vc, self._lengths, self._tables, scale,
                                   self.sdpa_decode)
            return out[:, None]
        if self._mode != "prefill":
            raise RuntimeError("PagedCache: call plan_prefill or plan_decode before the forward")
        # q [1, H, N, D], k, v [1, KV, N, D]: write every new token's K/V, then attend (all chunks in one kernel,
        # or chunk by chunk)
        write_kv(kc, vc, k[0].transpose(0, 1), v[0].transpose(0, 1), *self._slots)
        if self._tiles is not None:
            return prefill_attention(q[0].transpose(0, 1), kc, vc, *self._tiles, scale)[None]
        out = torch.empty_like(q[0].transpose(0, 1))  # [N, H, D]; padding rows stay undefined: rows never mix
        for offset, n, start, table in self._chunks:
            qi = q[:, :, offset:offset + n]
            if start == 0:  # the whole prefix is this chunk: no cache read, plain causal attention
                ki, vi = k[:, :, offset:offset + n], v[:, :, offset:offset + n]
                o = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale, enable_gqa=True)
            else:  # the chunk's queries are the last n of end positions: causal, aligned to the lower right
                end = start + n
                ki, vi = gather_kv(kc, table[None])[:, :, :end], gather_kv(vc, table[None])[:, :, :end]
                o = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=causal_lower_right(n, end), scale=scale,
                                                   enable_gqa=True)
            out[offset:offset + n] = o[0].transpose(0, 1)
        return out[None]

    def advance(self, T: int):
        """Nothing to do here: the engine owns the lengths."""
