"""The SmolLM3 architecture, in reading order.

A Llama-style decoder with grouped-query attention, SwiGLU MLPs, RMSNorm pre-norm and tied embeddings; its one
difference from Llama is that some layers (every 4th by default) skip rotary embeddings entirely ("NoPE").
Module and parameter names are transformers' own (`model.layers.0.self_attn.q_proj.weight`, ...), so HF
checkpoints load with no renaming. Parallelism, activation checkpointing and compilation are applied from
outside (see train/); this file only says what the network computes, and it is the one forward that training,
evaluation and inference run. Which implementation serves each op (attention backend, kernels) is the frozen
`OpSettings` given at construction. Training's gradient-accumulation fusion (train/precision.py) gives modules
per-step compute copies of their weights; a module that has one runs its GEMMs through ops/linear.py instead.

References: transformers `models/smollm3/modeling_smollm3.py` (numerics matched to 1e-4 in tests/test_model.py),
the SmolLM3 blog and nanotron's `smollm3` branch (initialisation).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from smollm3.config import ModelConfig
from smollm3.ops import linear as fused
from smollm3.ops.attention import (DocumentMask, apply_rotary_pos_emb, attention, attention_with_cache,
                                   qkv_attention, qkv_kernels_apply, resolve_backend)
from smollm3.ops.cross_entropy import chunked_cross_entropy
from smollm3.ops.settings import AttnBackend, OpSettings


class SmolLM3Linear(nn.Linear):
    """A projection without bias. Given the step's compute copy (`compute_weight`, or the FP8 copies `fp8`) and the
    fp32 gradient it adds into (`weight_grad`) by train/precision.py, it runs on those (ops/linear.py)."""

    compute_weight = weight_grad = fp8 = None

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x):
        if self.weight_grad is None:
            return F.linear(x, self.weight)
        return fused.linear(x, self.compute_weight, self.weight_grad, self.fp8)


class SmolLM3Embedding(nn.Embedding):
    compute_weight = weight_grad = None  # as SmolLM3Linear's

    def forward(self, ids):
        if self.weight_grad is None:
            return super().forward(ids)
        return fused.embedding(ids, self.compute_weight, self.weight_grad, self.weight)


class SmolLM3RMSNorm(nn.Module):
    compute_weight = weight_grad = None  # as SmolLM3Linear's
    folded = False  # True where train/precision.py folded the gain into the next projection's copy

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_grad is None:
            return rms_norm(x, self.weight, self.variance_epsilon)
        x = rms_normalize(x, self.variance_epsilon).to(self.compute_weight.dtype)
        return x if self.folded else fused.scale(x, self.compute_weight, self.weight_grad)


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    # statistics in fp32 whatever the activation dtype; the weight multiplies after the cast back (as HF does)
    dtype = x.dtype
    x = x.float()
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * rms_normalize(x, eps)


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
    stacked = ("q_proj", "k_proj", "v_proj")  # the projections of one input: one GEMM in fused training
    stacked_weight = stacked_grad = fp8 = None  # that GEMM's per-step copy and fp32 gradient (train/precision.py)
    qkv_kernels = False  # whether ops.attention.qkv_attention's kernels run on this module's device (ibid.)

    def __init__(self, config: ModelConfig, layer_idx: int, settings: OpSettings):
        super().__init__()
        self.settings = settings
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.use_rope = config.rope_layers[layer_idx]  # False on NoPE layers
        d = config.hidden_size
        self.q_proj = SmolLM3Linear(d, self.num_heads * self.head_dim)
        self.k_proj = SmolLM3Linear(d, self.num_kv_heads * self.head_dim)
        self.v_proj = SmolLM3Linear(d, self.num_kv_heads * self.head_dim)
        self.o_proj = SmolLM3Linear(self.num_heads * self.head_dim, d)

    def forward(self, x, cos, sin, doc: DocumentMask | None, backend: AttnBackend, cache: KVCache | None = None):
        B, T, _ = x.shape
        if self.qkv_kernels and self.stacked_grad is not None and cache is None \
                and qkv_kernels_apply(x, backend, self.head_dim):
            # the Triton kernels take the stacked q/k/v output whole and RoPE with it, so their backward writes its
            # gradient as one tensor (ops.attention.qkv_attention)
            qkv = fused.linear(x, self.stacked_weight, self.stacked_grad, self.fp8)
            rope = (cos, sin) if self.use_rope else (None, None)
            out = qkv_attention(qkv, *rope, doc, self.num_heads, self.num_kv_heads, self.scaling)
            return self.o_proj(out.reshape(B, T, self.num_heads * self.head_dim))
        q, k, v = self.project(x)
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.use_rope:
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:  # the cache stores k, v and decides what each query may see
            out = cache.attend(self.layer_idx, q, k, v, self.scaling)
        else:
            out = attention(q, k, v, doc, backend, self.scaling, self.settings.triton_attention)
        return self.o_proj(out.reshape(B, T, self.num_heads * self.head_dim))

    def project(self, x):
        if self.stacked_grad is not None:
            return project_stacked(self, x)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)


class SmolLM3MLP(nn.Module):
    stacked = ("gate_proj", "up_proj")
    stacked_weight = stacked_grad = fp8 = None  # as SmolLM3Attention's
    swiglu_kernel = False  # SwiGLU over the stacked GEMM as ops.linear.swiglu_linear (train/precision.py sets it)

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = SmolLM3Linear(config.hidden_size, config.intermediate_size)
        self.up_proj = SmolLM3Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = SmolLM3Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        if self.swiglu_kernel and self.stacked_grad is not None:
            return self.down_proj(fused.swiglu_linear(x, self.stacked_weight, self.stacked_grad, self.fp8))
        gate, up = self.project(x)
        return self.down_proj(F.silu(gate) * up)

    def project(self, x):
        if self.stacked_grad is not None:
            return project_stacked(self, x)
        return self.gate_proj(x), self.up_proj(x)


def project_stacked(module, x):
    """The module's `stacked` projections of x from one GEMM over their stacked per-step copy (alone, the k and v
    GEMMs have N = 512), split back into one output each."""
    out = fused.linear(x, module.stacked_weight, module.stacked_grad, module.fp8)
    return out.split([getattr(module, name).out_features for name in module.stacked], -1)


class SmolLM3DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, settings: OpSettings):
        super().__init__()
        self.self_attn = SmolLM3Attention(config, layer_idx, settings)
        self.mlp = SmolLM3MLP(config)
        self.input_layernorm = SmolLM3RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = SmolLM3RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, doc=None, backend="sdpa", cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, doc, backend, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class SmolLM3Model(nn.Module):
    """Embeddings -> decoder layers -> final norm: returns hidden states [B, T, hidden_size]."""

    def __init__(self, config: ModelConfig, settings: OpSettings):
        super().__init__()
        self.config, self.settings = config, settings
        self.embed_tokens = SmolLM3Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(SmolLM3DecoderLayer(config, i, settings) for i in range(config.num_hidden_layers))
        self.norm = SmolLM3RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = SmolLM3RotaryEmbedding(config)

    def forward(self, input_ids, position_ids=None, cache: KVCache | None = None,
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
        backend = resolve_backend(self.settings.attn_backend, x.device, packed=doc is not None, seq_len=T, half=half,
                                  whole_rows=doc is not None and doc.whole_rows)
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

    def __init__(self, config: ModelConfig, settings: OpSettings | None = None):
        super().__init__()
        self.config, self.settings = config, settings or OpSettings()
        self.model = SmolLM3Model(config, self.settings)
        self.lm_head = SmolLM3Linear(config.hidden_size, config.vocab_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids, position_ids=None, cache: KVCache | None = None, labels=None,
                document_mask: DocumentMask | None = None, label_index: torch.Tensor | None = None):
        """-> logits [B, T, vocab]. With `labels` -> the negative log-likelihood of each label, [B, T] fp32 (0 where
        the label is -100), computed in chunks so the fp32 logits never exist whole. Labels are shifted, the
        project's convention (ops/cross_entropy.py, data/): labels[t] is the token that position t predicts.
        `document_mask` (position_ids' DocumentMask) and `label_index` (the flat positions whose label counts) may be
        made beforehand where the batch is still on the CPU, as the trainer does, so the GPU never waits for the host
        to learn their sizes; else they are derived here."""
        hidden = self.model(input_ids, position_ids, cache, document_mask)
        return self.head(hidden, labels, label_index)

    def head(self, hidden, labels=None, label_index=None):
        """The LM head over the final hidden states: logits, or with `labels` the chunked per-token NLL (in fused
        training on the head's bf16 copy, its gradient added into the fp32 `.grad`)."""
        head = self.lm_head
        if labels is None:
            return head(hidden)
        weight = head.weight if head.weight_grad is None else head.compute_weight
        return chunked_cross_entropy(hidden, weight, labels, reduction="none", weight_grad=head.weight_grad,
                                     label_index=label_index, stored_dlogits_bytes=self.settings.stored_dlogits_bytes)

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


# what no module reads when it is built (the rotary tables are recomputed): all a built model can change
CHANGEABLE = ("rope_theta", "rope_scaling", "max_position_embeddings", "initializer_range", "bos_token_id",
              "eos_token_id", "pad_token_id", "dtype")


def change_config(model: SmolLM3ForCausalLM, **changes) -> ModelConfig:
    """The one way a built model's config changes: the long-context stages raise rope_theta, inference turns on
    YaRN (infer/llm.py extend_context). A new config with `changes` becomes the model's and its rotary tables are
    recomputed: equal to loading a config.json with those values written in. -> the new config."""
    fixed = sorted(set(changes) - set(CHANGEABLE))
    if fixed:
        raise ValueError(f"{', '.join(fixed)} cannot change after loading (the built model depends on it); only "
                         f"{', '.join(CHANGEABLE)} can")
    new = dataclasses.replace(model.config, **changes)  # validates, and normalises rope_scaling as loading does
    model.config = model.model.config = model.model.rotary_emb.config = new
    model.model.rotary_emb.reset_parameters()
    return new


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
