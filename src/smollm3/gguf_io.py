"""Reading llama.cpp GGUF files (architectures `llama` and `smollm3`) into our model's tensors and tokenizer.

Quantised tensors are dequantised to fp32 with the `gguf` package. llama.cpp's converter permutes the rows of
q_proj and k_proj into its interleaved-RoPE layout; we undo that so the weights are HF's again. For `smollm3`
files, llama.cpp hard-codes a NoPE layer every 4th layer (there is no GGUF key for it), and so do we.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from smollm3.config import ModelConfig

SUPPORTED_ARCHITECTURES = ("llama", "smollm3")

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}


class GGUFError(ValueError):
    pass


def open_gguf(path: str | Path):
    """A gguf.GGUFReader over the file (metadata now, tensors memory-mapped); GGUFError naming the file when it is not
    one. The `gguf` package is imported here: it is an optional extra, needed only for .gguf files."""
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:
        raise GGUFError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def gguf_field(reader, key: str, default=None):
    """The value of metadata key `key` ("tokenizer.ggml.tokens", "llama.context_length"), `default` when absent."""
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def read_gguf(path: str | Path) -> tuple[ModelConfig, list[tuple[str, torch.Tensor]], object]:
    """-> (config, [(hf_name, fp32 tensor)], reader). Refuses unsupported architectures before touching tensors."""
    import gguf

    path = Path(path)
    reader = open_gguf(path)
    arch = gguf_field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(f"{path}: GGUF architecture {arch!r} is not supported; "
                        f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    config = _config(reader, arch, path)
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    if not tied:
        config.tie_word_embeddings = False
    tensors = []
    for t in reader.tensors:
        hf = _hf_name(t.name)
        if hf is None:
            raise GGUFError(f"{path}: unexpected tensor {t.name!r} for a {arch} model")
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        w = np.asarray(w, dtype=np.float32).reshape(tuple(int(x) for x in reversed(t.shape)))  # GGUF lists [in, out]
        if hf.endswith("q_proj.weight"):
            w = _unpermute(w, config.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            w = _unpermute(w, config.num_key_value_heads)
        tensors.append((hf, torch.from_numpy(np.array(w, dtype=np.float32, order="C"))))  # a writable copy
    return config, tensors, reader


def _config(reader, arch: str, path: Path) -> ModelConfig:
    def need(key):
        v = gguf_field(reader, f"{arch}.{key}")
        if v is None:
            raise GGUFError(f"{path}: missing metadata key {arch}.{key}")
        return v

    n_layers = int(need("block_count"))
    n_heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    vocab = int(gguf_field(reader, f"{arch}.vocab_size", len(tokens) if tokens is not None else 0))
    if not vocab:
        raise GGUFError(f"{path}: cannot tell the vocabulary size (no {arch}.vocab_size, no tokenizer.ggml.tokens)")
    head_dim = int(gguf_field(reader, f"{arch}.attention.key_length", hidden // n_heads))
    rope_dim = int(gguf_field(reader, f"{arch}.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise GGUFError(f"{path}: partial rotary embeddings (rope.dimension_count {rope_dim} < head_dim {head_dim}) "
                        "are not SmolLM3")
    interval = 4 if arch == "smollm3" else n_layers + 1  # llama.cpp: use_rope = (il + 1) % 4 != 0 for smollm3
    return ModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=int(gguf_field(reader, f"{arch}.attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        max_position_embeddings=int(gguf_field(reader, f"{arch}.context_length", 4096)),
        rope_theta=float(gguf_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(gguf_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        no_rope_layer_interval=interval,
        tie_word_embeddings=True,
        bos_token_id=_int_or_none(gguf_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_token_id=_int_or_none(gguf_field(reader, "tokenizer.ggml.eos_token_id")),
        pad_token_id=_int_or_none(gguf_field(reader, "tokenizer.ggml.padding_token_id")),
        dtype="float32",
    )


def _int_or_none(v):
    return None if v is None else int(v)


def _hf_name(name: str) -> str | None:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES and parts[3] == "weight":
        return f"model.layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}.weight"
    return None


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute`: rows go from interleaved (x0, y0, x1, y1, ...) back to halves per head."""
    out, inp = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def gguf_chat_template(reader) -> str | None:
    return gguf_field(reader, "tokenizer.chat_template")
