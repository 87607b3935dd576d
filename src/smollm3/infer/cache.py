"""The engine's KV cache: one preallocated row ("slot") per running request, each with its own length.

Layout: k, v are [layers, slots, kv_heads, max_len, head_dim]. A slot holds one whole sequence contiguously, so
decode attention reads a plain strided view of the cache (no gather, no paging kernel needed); the price is that
memory is reserved for `max_len` tokens per slot, so the engine sizes the slot count to the memory budget.

The model drives the cache through the protocol of smollm3.model.KVCache (position_ids / attend / advance). Before
each forward the engine sets a plan:
- prefill: `plan_prefill(slots)` - B fresh prompts, right-padded to a common length T, written at positions 0..T-1
  of the given slots. Right padding keeps plain causal attention exact for every real token (pads come after it).
- decode: `plan_decode(lengths, kv_len)` - one new token for each of the first b slots, written at position
  lengths[i]; queries see keys 0..lengths[i]. Free slots inside [0, b) ride along with length 0 and are ignored.
  All shapes depend only on (b, kv_len), so the step can be captured in a CUDA graph per bucket.
Lengths are the engine's bookkeeping, not the cache's: `advance` is a no-op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smollm3.config import ModelConfig


def kv_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * elem


class SlotCache:
    def __init__(self, config: ModelConfig, num_slots: int, max_len: int, device, dtype):
        shape = (config.num_hidden_layers, num_slots, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.num_slots, self.max_len = num_slots, max_len
        self.sdpa_decode = torch.device(device).type == "cpu"  # decode attention kernel, see _decode_attend
        self._mode = None
        self._slots = None  # prefill: LongTensor[B] of slot indices
        self._lengths = None  # decode: LongTensor[b], tokens already cached per slot
        self._kv_len = 0  # decode: keys read per slot (>= max(lengths) + 1)
        self._mask = None  # decode: [b, 1, 1, kv_len] True where a key is visible

    def plan_prefill(self, slots: torch.Tensor):
        self._mode, self._slots = "prefill", slots

    def plan_decode(self, lengths: torch.Tensor, kv_len: int):
        if kv_len > self.max_len:
            raise ValueError(f"decode would read {kv_len} positions; slots hold {self.max_len}")
        self._mode, self._lengths, self._kv_len = "decode", lengths, kv_len
        # computed once per step, shared by all layers (tensor ops only: capturable in a CUDA graph)
        self._mask = (torch.arange(kv_len, device=lengths.device)[None, :] <= lengths[:, None])[:, None, None, :]

    # ---- the model's cache protocol

    def position_ids(self, B: int, T: int, device) -> torch.Tensor:
        if self._mode == "decode":
            return self._lengths[:, None]
        return torch.arange(T, device=device).expand(B, T)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if self._mode == "prefill":
            T = k.shape[2]
            self.k[layer, self._slots, :, :T] = k
            self.v[layer, self._slots, :, :T] = v
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
            return out.transpose(1, 2)
        if self._mode == "decode":
            return self._decode_attend(layer, q, k, v, scale)
        raise RuntimeError("SlotCache: call plan_prefill or plan_decode before the forward")

    def advance(self, T: int):
        """Nothing to do here: the engine owns the lengths (it knows which rows were padding or free slots)."""

    # ----

    def _decode_attend(self, layer, q, k, v, scale):
        b, H, _, D = q.shape
        KV = k.shape[1]
        index = self._lengths.view(b, 1, 1, 1).expand(b, KV, 1, D)
        keys, values = self.k[layer, :b], self.v[layer, :b]  # views into the cache
        keys.scatter_(2, index, k)
        values.scatter_(2, index, v)
        keys, values = keys[:, :, :self._kv_len], values[:, :, :self._kv_len]
        if self.sdpa_decode:
            # one fused kernel: on a busy CPU every separately parallelised op pays a thread handoff
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=self._mask, scale=scale, enable_gqa=True)
            return out.transpose(1, 2)
        # GPU: grouped-query attention without repeating K/V (the G query heads of a group share one [S, D] key
        # block), plain matmuls that any CUDA graph captures, reading only the first kv_len positions
        qg = q.reshape(b, KV, H // KV, D)
        scores = torch.matmul(qg, keys.transpose(-1, -2)).float() * scale  # [b, KV, G, S]
        scores = scores.masked_fill(~self._mask, float("-inf"))
        probs = scores.softmax(-1).to(values.dtype)
        out = torch.matmul(probs, values)  # [b, KV, G, D]
        return out.reshape(b, 1, H, D)
