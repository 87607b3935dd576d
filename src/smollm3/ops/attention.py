"""Attention backends, behind one dispatch point.

Every backend computes causal softmax attention with grouped-query heads; with a `DocumentMask` it is also
intra-document: a token sees only earlier tokens of its own packed document, so each document gets exactly the
logits it would get alone.

- "sdpa":   torch's scaled_dot_product_attention; CPU and GPU. Packed documents use a dense boolean mask.
- "flex":   FlexAttention with a document block mask (GPU; compiled once per process).
- "varlen": flash-attention over cu_seqlens: our Triton kernels (attention_triton.py, half precision, head_dim
            64 or 128; `OpSettings.triton_attention`), else torch's own FA2 kernels (CUDA builds) or the flash-attn
            package when installed.
            `qkv_attention` runs the Triton kernels from a stacked q/k/v projection, RoPE inside (the trainer's
            fused layers, train/precision.py).
- "cudnn":  torch's SDPA on cuDNN's kernels, plain causal: for batches whose every row is one document
            (`DocumentMask.whole_rows`: the long-context stages' full windows), where they beat ours: 564 vs 417
            TFLOP/s forward + backward on one 32,768-token causal document, 535 vs 408 at 65,536 (H100,
            benchmarks/results/2026-12-06-h100-session23). A batch that packs documents is refused.
"auto" picks sdpa for plain causal attention and on CPU; on GPU, cudnn for whole-row batches of 32,768 tokens a
row or more where cuDNN's attention runs (also 1.33x ours at 4,096 and 16,384, session 24; the trainer's step there
is not measured), varlen (else flex) for packed documents and shorter rows; fp32 attention (a model trained in fp32,
no autocast) takes flex there, as the flash kernels are half precision only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from smollm3.ops import attention_triton
from smollm3.ops.settings import AttnBackend


@dataclass
class DocumentMask:
    """Where packed documents start, derived once per forward from position_ids and shared by all layers."""

    doc_ids: torch.Tensor  # [B, T] int32: document index of each token, counting across the whole batch
    cu_seqlens: torch.Tensor  # int32 offsets into the flattened B*T tokens: num_docs + 1, then empty documents
    max_seqlen: int
    whole_rows: bool = False  # every row is one document: plain causal attention (the cudnn backend) is exact
    _block_mask: object = None  # FlexAttention BlockMask, built on first use

    @classmethod
    def from_position_ids(cls, position_ids: torch.Tensor) -> DocumentMask:
        """A document starts at every token whose position is not its predecessor's + 1 (a restart at 0, typically)."""
        B, T = position_ids.shape
        starts = torch.ones_like(position_ids, dtype=torch.bool)
        starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
        flat_starts = starts.reshape(-1)
        doc_ids = (torch.cumsum(flat_starts.to(torch.int32), 0) - 1).to(torch.int32).view(B, T)
        start_idx = torch.nonzero(flat_starts).flatten().to(torch.int32)
        # padded with empty documents at the end to a power-of-two length, 4 at least: the length is a shape inside
        # the compiled layers, and every new document count would otherwise recompile them (~5 s each for the 3B
        # preset); a lone document (length 2) would also get a graph of its own, specialised to one sequence
        pad = max(4, 1 << len(start_idx).bit_length()) - len(start_idx)
        end = torch.full((pad,), B * T, dtype=torch.int32, device=position_ids.device)
        cu_seqlens = torch.cat([start_idx, end])
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        return cls(doc_ids=doc_ids, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, whole_rows=len(start_idx) == B)

    def dense(self) -> torch.Tensor:
        """[B, 1, T, T] boolean: True where a query may attend to a key."""
        T = self.doc_ids.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=self.doc_ids.device).tril()
        same_doc = self.doc_ids[:, :, None] == self.doc_ids[:, None, :]
        return (same_doc & causal)[:, None]

    def block_mask(self, num_heads: int):
        if self._block_mask is None:
            from torch.nn.attention.flex_attention import create_block_mask

            doc_ids = self.doc_ids

            def document_causal(b, h, q_idx, kv_idx):
                return (q_idx >= kv_idx) & (doc_ids[b, q_idx] == doc_ids[b, kv_idx])

            B, T = doc_ids.shape
            self._block_mask = create_block_mask(document_causal, B, None, T, T, device=doc_ids.device)
        return self._block_mask


_CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
# auto takes cudnn for whole rows this long or longer: measured faster at 32,768 and 65,536 (the long-context stages'
# windows). Alone it is also faster at 4,096 and 16,384 (session 24); shorter whole rows keep our kernels until the
# trainer's step there is measured
CUDNN_MIN_SEQ = 32768
FLEX_BLOCK = 128  # compiled FlexAttention kernels (torch 2.11 inductor) need lengths in whole blocks


def resolve_backend(name: AttnBackend | str, device: torch.device, packed: bool, seq_len: int,
                    half: bool = True, whole_rows: bool = False) -> AttnBackend:
    """The backend `name` stands for. `half`: attention runs in fp16/bf16 (flash kernels take nothing else).
    `whole_rows`: every row of the batch is one document (DocumentMask.whole_rows)."""
    try:
        name = AttnBackend(name)
    except ValueError:
        raise ValueError(f"unknown attention backend {name!r}; choose one of "
                         f"{', '.join(b.value for b in AttnBackend)}") from None
    if name != "auto":
        if name in ("flex", "varlen") and device.type != "cuda":
            raise ValueError(f"attention backend {name!r} needs a CUDA device; use 'sdpa' on {device.type}")
        if name == "varlen" and _varlen_impl() is None:
            raise ValueError("attention backend 'varlen' needs a CUDA build of torch with flash attention, or the "
                             "flash-attn package")
        if name == "cudnn" and not cudnn_attention_runs(device):
            raise ValueError("attention backend 'cudnn' needs a CUDA GPU (compute capability 8.0 or newer) and a "
                             "torch build with cuDNN attention; use 'varlen' or 'auto'")
        if name == "cudnn" and not half:
            raise ValueError("attention backend 'cudnn' runs fp16/bf16 only: train under bf16 autocast, or use 'flex'")
        if name == "flex" and seq_len % FLEX_BLOCK:
            raise ValueError(f"attention backend 'flex' needs a sequence length that is a multiple of {FLEX_BLOCK} "
                             f"(got {seq_len}); pad the batch or use 'varlen' / 'sdpa'")
        return name
    if device.type != "cuda" or not packed:
        return AttnBackend.SDPA
    if half and whole_rows and seq_len >= CUDNN_MIN_SEQ and cudnn_attention_runs(device):
        return AttnBackend.CUDNN
    if half and _varlen_impl() is not None:
        return AttnBackend.VARLEN
    return AttnBackend.FLEX if seq_len % FLEX_BLOCK == 0 else AttnBackend.SDPA


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads: [B, 1, T, D] (or [T, 1, D])
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc: DocumentMask | None, backend: AttnBackend,
              scale: float, triton: bool = True) -> torch.Tensor:
    """q [B, H, T, D]; k, v [B, KV, T, D] -> [B, T, H, D]. Causal, and intra-document when `doc` is given
    (flex and varlen always need one: the model builds it, one document per row when nothing is packed).
    `triton`: varlen runs attention_triton's kernels where they apply (OpSettings.triton_attention)."""
    if backend == "sdpa":
        if doc is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
        else:
            # the memory-efficient kernel (the one that takes a mask) wants KV heads expanded
            k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=doc.dense(), scale=scale)
        return out.transpose(1, 2)
    if backend == "cudnn":
        if doc is not None and not doc.whole_rows:
            raise ValueError("attention backend 'cudnn' takes rows of one document each (plain causal); this batch "
                             "packs several documents in a row: use 'varlen' or 'auto'")
        # cuDNN first; torch's flash or memory-efficient kernels (the same causal maths) take shapes it refuses
        with sdpa_kernel(_CUDNN_FIRST, set_priority=True):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
        return out.transpose(1, 2)
    if backend in ("flex", "varlen") and torch.is_autocast_enabled(q.device.type):
        # SDPA is on autocast's list, these kernels are not: RoPE in fp32 cos/sin (as transformers does) promotes
        # q and k to fp32, while the flash kernels take half precision only
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if backend == "flex":
        if torch.compiler.is_compiling():  # inside a compiled layer: the HOP itself, fused into that graph
            from torch.nn.attention.flex_attention import flex_attention as flex
        else:
            flex = _compiled_flex()
        out = flex(q, k, v, block_mask=doc.block_mask(q.shape[1]), scale=scale, enable_gqa=True)
        return out.transpose(1, 2)
    if backend == "varlen":
        B, H, T, D = q.shape
        qf = q.transpose(1, 2).reshape(B * T, H, D)
        kf = k.transpose(1, 2).reshape(B * T, k.shape[1], D)
        vf = v.transpose(1, 2).reshape(B * T, v.shape[1], D)
        # compiled: the row length bounds every document and never changes, where the exact longest document
        # (an int that differs per batch) would recompile the layer each step; extra blocks exit at once
        max_len = T if torch.compiler.is_compiling() else doc.max_seqlen
        out = _varlen_call(qf, kf, vf, doc.cu_seqlens, max_len, scale, triton)
        return out.view(B, T, H, D)
    raise ValueError(f"unknown attention backend {backend!r}")


def attention_with_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_offset: int, scale: float) -> torch.Tensor:
    """Queries at positions q_offset.. attend causally to all cached keys [0, q_offset + T). -> [B, T, H, D]."""
    T, S = q.shape[2], k.shape[2]
    if T == 1:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
    elif q_offset == 0 and S == T:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    else:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=q_offset)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    return out.transpose(1, 2)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    B, KV, T, D = x.shape
    return x[:, :, None].expand(B, KV, n_rep, T, D).reshape(B, KV * n_rep, T, D)


@torch.compiler.allow_in_graph
def _varlen_call(q, k, v, cu_seqlens, max_seqlen: int, scale: float, triton: bool = True) -> torch.Tensor:
    """One node for dynamo, which would break the graph on the implementation lookup (a cached import probe);
    AOTAutograd then traces straight through it to the kernels and their backward."""
    if triton and attention_triton.supported(q, k, v):
        return _TritonVarlen.apply(q, k, v, cu_seqlens, scale)
    return _varlen_impl()(q, k, v, cu_seqlens, max_seqlen, scale)


class _TritonVarlen(torch.autograd.Function):
    """attention_triton's kernels: 1.60x FA2's forward and 1.48x its backward on the trainer's packs (H100,
    benchmarks/results/2026-11-24-h100-wgrad-attention-tma.md)."""

    @staticmethod
    def forward(ctx, q, k, v, cu, scale):
        out, lse = torch.ops.smollm3.doc_attention_forward(q, k, v, cu, scale)
        ctx.save_for_backward(q, k, v, out, lse, cu)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, cu = ctx.saved_tensors
        dq, dk, dv = torch.ops.smollm3.doc_attention_backward(dout, q, k, v, out, lse, cu, ctx.scale)
        # dk, dv may be fp32 sums: compiled, the cast fuses into RoPE's backward and the q/k/v concatenation
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None


def qkv_kernels_apply(x: torch.Tensor, backend: AttnBackend, head_dim: int) -> bool:
    """Whether `qkv_attention` serves a layer whose projections read x, on a device where the kernels run
    (`attention_triton.runs_on`, asked outside compiled code): the varlen backend, half precision, head_dim 64 or
    128."""
    return backend == "varlen" and x.dtype in (torch.bfloat16, torch.float16) and head_dim in (64, 128)


def qkv_attention(qkv: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, doc: DocumentMask,
                  num_heads: int, num_kv_heads: int, scale: float) -> torch.Tensor:
    """Document-masked attention straight from the stacked q/k/v projection output qkv [B, T, (H + 2 KV) * D],
    rotated by cos, sin [B, T, D] (None on NoPE layers) inside. -> [B, T, H, D]. Where `qkv_kernels_apply`.

    The kernels' backward then writes qkv's gradient whole: RoPE's backward runs on dQ in the dQ kernel's epilogue
    and on dK where its fp32 sum is rounded, so neither RoPE's backward nor the concatenation of dq, dk, dv is a pass
    of its own: on the 3B preset (H100) autograd's took 37 us a layer, the kernel that rounds dK, dV now takes 9
    (benchmarks/results/2026-11-25-h100-norm-gain-rope-fold.md)."""
    B, T, _ = qkv.shape
    rope = (None, None) if cos is None else (cos.reshape(B * T, -1), sin.reshape(B * T, -1))
    out = _TritonVarlenQKV.apply(qkv.view(B * T, -1), *rope, doc.cu_seqlens, scale, num_heads, num_kv_heads)
    return out.view(B, T, num_heads, -1)


class _TritonVarlenQKV(torch.autograd.Function):
    """RoPE (inductor's code, compiled) and attention_triton's forward; their backward in one op, into d qkv."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, cu, scale, heads, kv_heads):
        q, k, v = qkv.view(qkv.shape[0], heads + 2 * kv_heads, -1).split([heads, kv_heads, kv_heads], 1)
        if cos is not None:
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        out, lse = torch.ops.smollm3.doc_attention_forward(q, k, v, cu, scale)
        ctx.save_for_backward(q, k, v, out, lse, cu, cos, sin)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, cu, cos, sin = ctx.saved_tensors
        dqkv = torch.ops.smollm3.doc_attention_backward_qkv(dout, q, k, v, out, lse, cu, ctx.scale, cos, sin)
        return dqkv, None, None, None, None, None, None


def cudnn_attention_runs(device: torch.device) -> bool:
    """Whether torch's cuDNN attention runs on `device`: CUDA, compute capability 8.0 or newer, a build with it."""
    return device.type == "cuda" and _cudnn_attention_runs(device.index if device.index is not None
                                                            else torch.cuda.current_device())


@functools.cache
def _cudnn_attention_runs(index: int) -> bool:
    return torch.backends.cudnn.is_available() and hasattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention") \
        and torch.cuda.get_device_capability(index)[0] >= 8


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


class _FlashVarlen(torch.autograd.Function):
    """torch's own FA2 varlen kernels (aten._flash_attention_forward/backward over cu_seqlens, causal inside each
    document), called directly: GQA natively (no repeated K/V heads), and no Python custom-op layer around each
    call, whose host time (torch.nn.attention.varlen, torch 2.11) left the GPU idle in the compiled trainer's
    forward (benchmarks/results/2026-11-24-h100-train-host.md)."""

    @staticmethod
    def forward(ctx, q, k, v, cu, max_len, scale):
        out, lse, rng_state, unused, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, max_len, max_len, 0.0, True, False, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse, cu, rng_state, unused)
        ctx.max_len, ctx.scale = max_len, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, cu, rng_state, unused = ctx.saved_tensors
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            dout.contiguous(), q, k, v, out, lse, cu, cu, ctx.max_len, ctx.max_len, 0.0, True, rng_state, unused,
            scale=ctx.scale)
        return dq, dk, dv, None, None, None


@functools.cache
def _varlen_impl():
    """A callable (q, k, v, cu_seqlens, max_seqlen, scale) -> out over flattened tokens, or None."""
    if not torch.cuda.is_available():
        return None
    try:
        from flash_attn import flash_attn_varlen_func  # the flash-attn package handles GQA natively

        def run(q, k, v, cu, max_len, scale):
            return flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len, softmax_scale=scale, causal=True)

        return run
    except ImportError:
        pass
    if not hasattr(torch.ops.aten, "_flash_attention_forward"):
        return None
    return _FlashVarlen.apply
