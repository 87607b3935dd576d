"""A fused, compiled decode step for the engine (one new token per running request), the fast path behind CUDA-graph
decode.

Small-batch decode is bound by memory bandwidth (every weight read once per step) plus, in eager PyTorch, by
~45 kernel launches per layer: RMSNorm alone is 7 elementwise kernels, RoPE 10, attention 10. Even inside a
CUDA graph each launch costs a microsecond or two, which at 36 layers is most of a 3B model's step. Here:
- q/k/v and gate/up are fused into one matmul each (the module parameters become views of the fused weight, so
  the model's names, state_dict and memory use are unchanged);
- a decoder layer is three pure functions of tensors, each compiled once with torch.compile (inductor fuses
  RMSNorm and the residual adds into the projections' neighbours, SwiGLU into one kernel): before attention, the
  attention itself, after it; every layer reuses them, and each layer's last residual add is deferred into the next
  layer's first kernel;
- attention reads the paged KV cache through the rows' block tables: on CUDA with bf16/fp16 weights it is one
  Triton kernel with RoPE and the KV write inside (decode_kernels.attention, flash-decoding), else torch ops;
- greedy argmax runs on the device, inside the same CUDA graph;
- prompt steps run the same compiled functions and fused weights (fast_prefill.py);
- at batch 1 (bf16/fp16 on CUDA) each layer is instead five Triton kernels with the norms, RoPE, SwiGLU and
  residual adds folded into the matrix-vector products and the attention (decode_layer_triton, ops/decode_kernels.py).
The operations are the eager model's, in its order (fused kernels may round bf16 intermediates differently);
tests compare greedy tokens with the eager engine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smollm3.model import SmolLM3ForCausalLM, rms_norm
from smollm3.ops import decode_kernels as kern
from smollm3.ops import gemv as _gemv
from smollm3.ops import invariant_gemm  # noqa: F401 (registers smollm3::invariant_linear)
from smollm3.ops.paged_attention import paged_attention, rope_qkv


def _linear(x, w, gemv: bool, invariant: bool = False):
    if invariant:  # one fixed tiling: a row's bits whatever else the step holds (ops/invariant_gemm.py)
        return torch.ops.smollm3.invariant_linear(x, w)
    if gemv:  # the bandwidth-tuned GEMV of ops/gemv.py (a custom op: opaque to inductor, fine inside CUDA graphs)
        return torch.ops.smollm3.small_linear(x, w)
    return F.linear(x, w)


def pre_attention(x, delta, ln1, w_qkv, *, eps: float, gemv: bool = False, invariant: bool = False):
    """The residual stream x + delta [b, d] (the previous layer's MLP output is added here, in this layer's first
    kernel), RMSNorm, and the fused q/k/v projection -> (x, qkv [b, (H + 2 KV) D], before RoPE)."""
    x = x + delta
    return x, _linear(rms_norm(x, ln1, eps), w_qkv, gemv, invariant)


def post_attention(x, attn, w_o, ln2, w_gu, w_down, *, eps: float, gemv: bool = False, invariant: bool = False):
    """o_proj + residual, RMSNorm, SwiGLU MLP -> (x, delta): the MLP output is added in the next layer."""
    x = x + _linear(attn, w_o, gemv, invariant)
    gate, up = _linear(rms_norm(x, ln2, eps), w_gu, gemv, invariant).chunk(2, dim=-1)
    return x, _linear(F.silu(gate) * up, w_down, gemv, invariant)


def decode_layer(x, delta, w, k_cache, v_cache, cos, sin, lengths, tables, *, heads: int, kv_heads: int, eps: float,
                 scale: float, use_rope: bool, gemv: bool = False):
    """One decoder layer for one new token per row, in torch ops (the reference the kernels are tested against).
    w: the layer's (ln1, qkv, o, ln2, gate_up, down) weights; k_cache, v_cache: the layer's paged cache; tables
    [b, nb] the rows' block tables (nb blocks are read); cos, sin [b, D]. -> (x, delta) after the layer."""
    ln1, w_qkv, w_o, ln2, w_gu, w_down = w
    x, qkv = pre_attention(x, delta, ln1, w_qkv, eps=eps, gemv=gemv)
    attn = paged_attention(qkv, cos, sin, k_cache, v_cache, lengths, tables, heads=heads, kv_heads=kv_heads,
                           scale=scale, use_rope=use_rope)
    return post_attention(x, attn, w_o, ln2, w_gu, w_down, eps=eps, gemv=gemv)


def decode_layer_triton(x, w, k_cache, v_cache, cos, sin, lengths, tables, kv_len: int, *, heads: int, kv_heads: int,
                        eps: float, scale: float, use_rope: bool):
    """decode_layer for one row in five or six Triton kernels (ops/decode_kernels.py), the residual stream x [1, d]
    complete between layers: RMSNorm + qkv; RoPE + KV write + attention (+ the merge of its key splits);
    o_proj + residual; RMSNorm + gate/up + SwiGLU; down_proj + residual."""
    ln1, w_qkv, w_o, ln2, w_gu, w_down = w
    qkv = kern.linear(x, w_qkv, norm=ln1, eps=eps)
    attn = kern.attention(qkv, cos, sin, k_cache, v_cache, lengths, tables, kv_len, heads=heads, kv_heads=kv_heads,
                          scale=scale, rope=use_rope, prefetch=w_o)
    x = kern.linear(attn, w_o, residual=x)
    return kern.linear(kern.linear(x, w_gu, norm=ln2, eps=eps, swiglu=True), w_down, residual=x)


def decode_head_triton(x, norm_w, lm_head_w, eps: float):
    logits = kern.linear(x, lm_head_w, norm=norm_w, eps=eps)
    return logits, kern.argmax(logits)


def decode_head(x, delta, norm_w, lm_head_w, eps: float, gemv: bool = False, invariant: bool = False):
    """Last residual add, final norm, LM head and the greedy choice: -> (logits [b, V], argmax [b])."""
    logits = _linear(rms_norm(x + delta, norm_w, eps), lm_head_w, gemv, invariant)
    return logits, logits.argmax(-1)


def fuse_projections(model: SmolLM3ForCausalLM) -> list[tuple[torch.Tensor, ...]]:
    """Per layer (ln1, qkv, o, ln2, gate_up, down). q/k/v and gate/up are concatenated once, and the module
    parameters are replaced by views into the fused tensor, so nothing is stored twice. A second engine on the same
    model finds the parameters already rows of one tensor and views them again: nothing is kept on the model."""
    fused = []
    with torch.no_grad():
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            qkv = _fuse([a.q_proj, a.k_proj, a.v_proj])
            gu = _fuse([m.gate_proj, m.up_proj])
            fused.append((layer.input_layernorm.weight, qkv, a.o_proj.weight, layer.post_attention_layernorm.weight,
                          gu, m.down_proj.weight))
    return fused


def _fuse(linears) -> torch.Tensor:
    """The linears' weights as the rows of one [sum(out), in] tensor, their parameters views into it."""
    weights = [lin.weight.detach() for lin in linears]
    first = weights[0]
    if all(w.is_contiguous() and w.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
           for w in weights) and all(b.data_ptr() == a.data_ptr() + a.numel() * a.element_size()
                                     for a, b in zip(weights, weights[1:])):  # fused before: one tensor already
        return first.as_strided((sum(w.shape[0] for w in weights), first.shape[1]), first.stride())
    cat = torch.cat(weights, dim=0)
    start = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = torch.nn.Parameter(cat[start:start + n], requires_grad=lin.weight.requires_grad)
        start += n
    return cat


class FastDecode:
    """The engine's decode forward over its PagedCache: `run(tokens, lengths, tables, kv_len)` -> (logits, greedy
    ids).

    `compile=False` runs the same functions eagerly (CPU tests check the fusion and the maths that way).
    `gemv` (default: on CUDA with Triton) routes the projections and the LM head through gemv.small_linear.
    `kernels` (default: where `gemv` is on, for bf16/fp16 weights and head_dim a power of two >= 32) runs the
    attention of every batch as decode_kernels.attention (paged flash-decoding, RoPE and the KV write inside), and
    batch-1 steps wholly as the few Triton kernels of decode_layer_triton. Without kernels, attention is
    paged_attention in torch ops."""

    def __init__(self, model: SmolLM3ForCausalLM, cache, compile: bool = True, gemv: bool | None = None,
                 kernels: bool | None = None):
        cfg = model.config
        self.model, self.cache = model, cache
        self.weights = fuse_projections(model)
        self.rope = cfg.rope_layers
        self.heads = dict(heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads, scale=cfg.head_dim ** -0.5)
        self.eps = cfg.rms_norm_eps
        device = next(model.parameters()).device
        self.gemv = (_gemv.available() and device.type == "cuda") if gemv is None else bool(gemv)
        D = cfg.head_dim
        fits = cache.k.dtype in (torch.bfloat16, torch.float16) and D >= 32 and D & (D - 1) == 0
        self.kernels = (self.gemv and fits and device.type == "cuda") if kernels is None else bool(kernels)
        if self.kernels and not (_gemv.triton is not None and fits):
            raise ValueError("kernels=True needs Triton, bf16/fp16 weights and head_dim a power of two >= 32")
        self.pre_fn, self.post_fn, self.attn_fn, self.head_fn = pre_attention, post_attention, paged_attention, \
            decode_head
        self.rope_fn = rope_qkv
        if compile:
            from torch import _dynamo

            # every (batch, KV-length) bucket and RoPE/NoPE variant is a guard set of the same code object
            _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
            self.pre_fn = torch.compile(pre_attention, fullgraph=True)
            self.post_fn = torch.compile(post_attention, fullgraph=True)
            self.attn_fn = torch.compile(paged_attention, fullgraph=True)
            self.head_fn = torch.compile(decode_head, fullgraph=True)
            self.rope_fn = torch.compile(rope_qkv, fullgraph=True)

    def run(self, tokens: torch.Tensor, lengths: torch.Tensor, tables: torch.Tensor, kv_len: int):
        """tokens, lengths [b] (lengths = tokens already cached per row); tables [b, >= kv_len / block_size];
        reads keys 0..kv_len-1 at most."""
        model, cache = self.model.model, self.cache
        b = tokens.shape[0]
        tables = tables[:, :-(-kv_len // cache.block_size)]
        x = model.embed_tokens(tokens)
        cos, sin = model.rotary_emb(lengths, x.dtype)  # [b, D]
        if self.kernels:
            cos, sin = cos.contiguous(), sin.contiguous()
        if self.kernels and b == 1:  # the batch-1 Triton kernels; the residual stream needs no deferred add
            for i, w in enumerate(self.weights):
                x = decode_layer_triton(x, w, cache.k[i], cache.v[i], cos, sin, lengths, tables, kv_len,
                                        use_rope=self.rope[i], eps=self.eps, **self.heads)
            return decode_head_triton(x, model.norm.weight, self.model.lm_head.weight, self.eps)
        delta = torch.zeros_like(x)  # x + 0 is exact: the first layer's deferred add changes nothing
        for i, (ln1, w_qkv, w_o, ln2, w_gu, w_down) in enumerate(self.weights):
            x, qkv = self.pre_fn(x, delta, ln1, w_qkv, eps=self.eps, gemv=self.gemv)
            if self.kernels:
                attn = kern.attention(qkv, cos, sin, cache.k[i], cache.v[i], lengths, tables, kv_len,
                                      rope=self.rope[i], **self.heads)
            else:
                attn = self.attn_fn(qkv, cos, sin, cache.k[i], cache.v[i], lengths, tables, use_rope=self.rope[i],
                                    **self.heads)
            x, delta = self.post_fn(x, attn, w_o, ln2, w_gu, w_down, eps=self.eps, gemv=self.gemv)
        return self.head_fn(x, delta, model.norm.weight, self.model.lm_head.weight, self.eps, gemv=self.gemv)
