"""The SmolLM3 architecture, in reading order.

A Llama-style decoder with grouped-query attention, SwiGLU MLPs, RMSNorm pre-norm and tied embeddings; its one
difference from Llama is that some layers (every 4th by default) skip rotary embeddings entirely ("NoPE").
Module and parameter names are transformers' own (`model.layers.0.self_attn.q_proj.weight`, ...), so HF
checkpoints load with no renaming. Parallelism, activation checkpointing and compilation are applied from
outside (see train/); this file only says what the network computes.

References: transformers `models/smollm3/modeling_smollm3.py` (numerics matched to 1e-4 in tests/test_model.py),
the SmolLM3 blog and nanotron's `smollm3` branch (initialisation).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from smollm3.attention import (DocumentMask, apply_rotary_pos_emb, attention, attention_with_cache,
                                resolve_backend)
from smollm3.config import ModelConfig


class SmolLM3RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * self.normalize(x)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in fp32 whatever the activation dtype; the weight multiplies after the cast back (as HF does)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return x.to(dtype)


class SmolLM3RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions: default RoPE, or YaRN when config.rope_scaling asks for it."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.attention_scaling = 1.0
        self.register_buffer("inv_freq", torch.empty(config.head_dim // 2), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """(Re)compute inv_freq on the CPU in fp32, as transformers does, so every device gets identical tables."""
        cfg = self.config
        dim = cfg.head_dim
        freqs = cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        inv_freq = 1.0 / freqs
        self.attention_scaling = 1.0
        if cfg.rope_scaling is not None:
            inv_freq, self.attention_scaling = _yarn(cfg, freqs)
        if self.inv_freq.device.type == "meta":
            self.inv_freq = inv_freq
        else:
            self.inv_freq.copy_(inv_freq)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)


def _yarn(cfg: ModelConfig, pos_freqs: torch.Tensor) -> tuple[torch.Tensor, float]:
    """YaRN (arXiv 2309.00071) with transformers' defaults: beta_fast 32, beta_slow 1, attention factor 0.1 ln(s) + 1."""
    s = cfg.rope_scaling
    dim, base, factor = cfg.head_dim, cfg.rope_theta, float(s["factor"])

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        if s.get("mscale") and s.get("mscale_all_dim"):
            attention_factor = mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1
    original = s["original_max_position_embeddings"]

    def correction_dim(rotations):  # the dimension whose wavelength fits `rotations` times in the original context
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp  # high-frequency dims keep their frequency; low-frequency ones are interpolated
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    return inv_freq, float(attention_factor)


class SmolLM3Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.use_rope = config.rope_layers[layer_idx]  # False on NoPE layers
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=False)

    def forward(self, x, cos, sin, doc: DocumentMask | None, backend: str, cache: KVCache | None = None):
        B, T, _ = x.shape
        q, k, v = self.project(x)
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.use_rope:
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:  # the cache stores k, v and decides what each query may see
            out = cache.attend(self.layer_idx, q, k, v, self.scaling)
        else:
            out = attention(q, k, v, doc, backend, self.scaling)
        return self.o_proj(out.reshape(B, T, self.num_heads * self.head_dim))

    def project(self, x):
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)


class SmolLM3MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.project(x)
        return self.down_proj(F.silu(gate) * up)

    def project(self, x):
        return self.gate_proj(x), self.up_proj(x)


class SmolLM3DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = SmolLM3Attention(config, layer_idx)
        self.mlp = SmolLM3MLP(config)
        self.input_layernorm = SmolLM3RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = SmolLM3RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, doc=None, backend="sdpa", cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, doc, backend, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class SmolLM3Model(nn.Module):
    """Embeddings -> decoder layers -> final norm: returns hidden states [B, T, hidden_size]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(SmolLM3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = SmolLM3RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = SmolLM3RotaryEmbedding(config)

    def forward(self, input_ids, position_ids=None, cache: KVCache | None = None, attn_backend: str = "auto",
                document_mask: DocumentMask | None = None):
        B, T = input_ids.shape
        x = self.embed_tokens(input_ids)
        doc = document_mask
        if cache is not None:
            if position_ids is None:
                position_ids = cache.position_ids(B, T, input_ids.device)
        elif position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        elif doc is None:
            doc = DocumentMask.from_position_ids(position_ids)  # packed documents: mask across their borders
        half = x.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(x.device.type)
        backend = resolve_backend(attn_backend, x.device, packed=doc is not None, seq_len=T, half=half)
        if doc is None and backend in ("flex", "varlen") and cache is None:
            doc = DocumentMask.from_position_ids(position_ids)  # these kernels take boundaries: one document per row
        if backend == "flex":
            doc.block_mask(self.config.num_attention_heads)  # built here once, outside any compiled layer
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, doc, backend, cache)
        if cache is not None:
            cache.advance(T)
        return self.norm(x)


class SmolLM3ForCausalLM(nn.Module):
    """`model(input_ids)` -> logits [B, T, vocab]. With `position_ids` restarting at 0 per packed document,
    attention stays inside each document."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = SmolLM3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.attn_backend = "auto"  # "sdpa" | "flex" | "varlen" | "auto"; see smollm3.attention

    def forward(self, input_ids, position_ids=None, cache: KVCache | None = None, labels=None,
                document_mask: DocumentMask | None = None, label_index: torch.Tensor | None = None):
        """-> logits [B, T, vocab]. With `labels` -> the negative log-likelihood of each label, [B, T] fp32 (0 where
        the label is -100), computed in chunks so the fp32 logits never exist whole. Labels are shifted, the
        project's convention (train/losses.py, data/): labels[t] is the token that position t predicts.
        `document_mask` (position_ids' DocumentMask) and `label_index` (the flat positions whose label counts) may be
        made beforehand where the batch is still on the CPU, as the trainer does, so the GPU never waits for the host
        to learn their sizes; else they are derived here."""
        hidden = self.model(input_ids, position_ids, cache, self.attn_backend, document_mask)
        return self.head(hidden, labels, label_index)

    def head(self, hidden, labels=None, label_index=None):
        """The LM head over the final hidden states: logits, or with `labels` the chunked per-token NLL."""
        if labels is None:
            return self.lm_head(hidden)
        from smollm3.train.losses import chunked_cross_entropy

        return chunked_cross_entropy(hidden, self.lm_head.weight, labels, reduction="none", label_index=label_index)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None):
        """The recipe's initialisation (nanotron StandardParametrizator): N(0, 0.02) everywhere, the two projections
        that write into the residual stream (o_proj, down_proj) scaled down by sqrt(2 * num_layers), norms at 1.
        Works after `to_empty()` from the meta device."""
        std = self.config.initializer_range
        out_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, out_std, generator=generator)
            else:
                p.normal_(0.0, std, generator=generator)
        self.model.rotary_emb.reset_parameters()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class KVCache:
    """A preallocated key/value cache for `batch` sequences of up to `max_len` tokens, all at the same length.

    The protocol the model relies on (other caches, e.g. the engine's slot cache, implement the same three methods):
    `position_ids(B, T, device)` for new tokens, `attend(layer, q, k, v, scale)` -> [B, T, H, D] after storing k, v,
    and `advance(T)` once all layers have run."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int, device, dtype):
        shape = (config.num_hidden_layers, batch, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0

    def position_ids(self, B: int, T: int, device) -> torch.Tensor:
        return (self.length + torch.arange(T, device=device)).expand(B, T)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens; this step would need {end}")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return attention_with_cache(q, self.k[layer, :, :, :end], self.v[layer, :, :, :end], self.length, scale)

    def advance(self, T: int):
        self.length += T
