"""ModelConfig: the SmolLM3 architecture's hyper-parameters, and its round trip with HF `config.json`.

Field names are transformers' own, so a config.json maps onto this dataclass key for key. Both spellings that
transformers has written are read: v4 (`rope_theta`, `rope_scaling`, `torch_dtype`) and v5 (`rope_parameters`,
`dtype`). We write both, so older and newer readers (vLLM, SGLang, transformers 4.53+ and 5.x) agree. Also here, at
the bottom of the import graph, what every config shares: ConfigError and byte_size (sizes spelled as 8GiB).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """A config that cannot describe a SmolLM3 model; the message names the key and the fix."""


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def byte_size(value, key: str, positive: bool = False) -> int:
    """A size in bytes from a number or a string such as '8GiB', '500MB', '1000000' (transformers' max_shard_size
    spellings: GB = 10^9, GiB = 2^30). Anything else, a negative size, or 0 where `positive`, is ConfigError naming
    `key`. Every config and flag that takes a size reads it here (ops.stored_dlogits_bytes, merge's
    --max-shard-size)."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        s = str(value).strip().upper() if isinstance(value, (str, float)) else ""
        num = s.rstrip("KMGTIB")
        try:
            n = int(float(num) * _SIZE_UNITS[s[len(num):]])
        except (ValueError, KeyError, OverflowError):
            raise ConfigError(f"{key} {value!r} is not a size; write e.g. 8GiB, 500MB or a number of bytes") from None
    if n < 0 or (positive and n == 0):
        raise ConfigError(f"{key} {value!r} must be {'positive' if positive else '0 or more'}")
    return n


@dataclass
class ModelConfig:
    vocab_size: int = 128256
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 16
    num_key_value_heads: int = 4
    head_dim: int | None = None  # derived: hidden_size // num_attention_heads
    max_position_embeddings: int = 65536
    rope_theta: float = 5_000_000.0
    # None for plain RoPE, else {"rope_type": "yarn", "factor": F, "original_max_position_embeddings": N, ...}
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-6
    # 1 = the layer USES RoPE, 0 = NoPE (transformers' naming); derived from no_rope_layer_interval when None
    no_rope_layers: list[int] | None = None
    no_rope_layer_interval: int = 4
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: int | None = None  # special ids belong to the tokenizer; presets set them
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    dtype: str = "bfloat16"  # the dtype weights are stored in

    def __post_init__(self):
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}; "
                    "set head_dim explicitly or pick dimensions that divide"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads {self.num_attention_heads} must be a multiple of num_key_value_heads "
                f"{self.num_key_value_heads} (grouped-query attention shares each KV head among a whole group)"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if self.no_rope_layers is None:
            if self.no_rope_layer_interval < 1:
                raise ConfigError("no_rope_layer_interval must be >= 1 (use a large value to keep RoPE on every layer)")
            self.no_rope_layers = [int((i + 1) % self.no_rope_layer_interval != 0) for i in range(self.num_hidden_layers)]
        self.no_rope_layers = [int(x) for x in self.no_rope_layers]
        if len(self.no_rope_layers) < self.num_hidden_layers or set(self.no_rope_layers) - {0, 1}:
            raise ConfigError(
                f"no_rope_layers must hold a 0 or 1 for each of the {self.num_hidden_layers} layers "
                f"(1 = the layer uses RoPE, 0 = NoPE); got {self.no_rope_layers}"
            )
        self.no_rope_layers = self.no_rope_layers[: self.num_hidden_layers]
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            ids = getattr(self, key)
            for i in ids if isinstance(ids, list) else [ids]:
                if i is not None and not 0 <= i < self.vocab_size:
                    raise ConfigError(f"{key} {i} is outside the vocabulary (vocab_size {self.vocab_size}); "
                                      "set it to a token of the tokenizer, or null")
        if self.rope_scaling is not None:
            self.rope_scaling = _normalise_rope_scaling(self.rope_scaling, self.max_position_embeddings)

    # ----------------------------------------------------------------------------------------------------------------
    # derived quantities

    @property
    def rope_layers(self) -> list[bool]:
        return [bool(x) for x in self.no_rope_layers]

    @property
    def nope_layer_indices(self) -> list[int]:
        return [i for i, x in enumerate(self.no_rope_layers) if not x]

    def num_params(self) -> int:
        d, h, kv, hd, f, L = (self.hidden_size, self.num_attention_heads, self.num_key_value_heads, self.head_dim,
                              self.intermediate_size, self.num_hidden_layers)
        attn = d * h * hd * 2 + d * kv * hd * 2
        per_layer = attn + 3 * d * f + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return L * per_layer + embed + d

    def matmul_weights(self) -> int:
        """Weights that multiply a token in a GEMM: the decoder layers' projections and the LM head. The embedding
        lookup is a gather, not a GEMM, so it is left out even when the head shares its matrix."""
        d, L = self.hidden_size, self.num_hidden_layers
        attn_proj = d * self.num_attention_heads * self.head_dim * 2 + d * self.num_key_value_heads * self.head_dim * 2
        return L * (attn_proj + 3 * d * self.intermediate_size) + self.vocab_size * d

    def forward_flops(self, tokens: int, attention_pairs: int, head_tokens: int | None = None) -> int:
        """FLOPs of one forward over `tokens` tokens whose attention scores `attention_pairs` (query, key) pairs;
        a training step (forward + backward) is 3x this. PaLM (Chowdhery et al. 2022, appendix B) counts
        6N + 12·L·H·Q·T per training token: a multiply-add is 2 FLOPs, so a weight costs 2 per token forward and
        the backward twice that (input and weight gradients), 6 in all; attention's QK^T and PV each cost 2·Q
        per (query, key) pair and head forward, so 4·H·Q a pair and layer forward, 12·H·Q trained. PaLM assumes
        every token sees all T keys (T² pairs); we count the pairs the step computes: a causal document of n
        tokens has n(n+1)/2 (`causal_pairs`), and a packed row attends only within its documents. Every layer
        attends, NoPE layers included (they skip the rotation, not the attention); grouped-query attention still
        scores every query head. `head_tokens` (default `tokens`): positions whose logits are computed (the
        trainer's LM head runs only where a label counts). Norms, softmax, SwiGLU's product and RoPE are not
        GEMMs and are not counted, nor is activation checkpointing's recompute (model FLOPs, not hardware FLOPs).
        The count this replaced (flops_per_token) took T²/2 pairs for every window whatever its documents, so
        short documents at 64k read 104.7% MFU (issue 27).
        """
        head_tokens = tokens if head_tokens is None else head_tokens
        d = self.hidden_size
        layers = self.matmul_weights() - self.vocab_size * d
        attention = 4 * self.num_hidden_layers * self.num_attention_heads * self.head_dim * attention_pairs
        return 2 * (layers * tokens + self.vocab_size * d * head_tokens) + attention

    def attention_break_even(self) -> float:
        """The context length at which one token's attention (to the keys before it) costs as many forward FLOPs as
        its decoder weights, as forward_flops counts them: 19,072 tokens for SmolLM3-3B."""
        weights = self.forward_flops(1, 0, head_tokens=0)
        return weights / (self.forward_flops(1, 1, head_tokens=0) - weights)

    # ----------------------------------------------------------------------------------------------------------------
    # HF config.json

    def to_hf_dict(self) -> dict:
        d = {
            "architectures": ["SmolLM3ForCausalLM"],
            "model_type": "smollm3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "no_rope_layers": list(self.no_rope_layers),
            "no_rope_layer_interval": self.no_rope_layer_interval,
            "layer_types": ["full_attention"] * self.num_hidden_layers,
            "use_sliding_window": False,
            "sliding_window": None,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "use_cache": True,
            # v4 spelling (transformers 4.53-4.57, vLLM/SGLang pinned to them)
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling, type=self.rope_scaling["rope_type"]) if self.rope_scaling else None,
            "torch_dtype": self.dtype,
            # v5 spelling
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default", **(self.rope_scaling or {})},
            "dtype": self.dtype,
        }
        return d

    @classmethod
    def from_hf_dict(cls, raw: dict, source: str = "config.json") -> ModelConfig:
        raw = dict(raw)
        model_type = raw.pop("model_type", None)
        if model_type not in ("smollm3", "llama"):
            raise ConfigError(
                f"{source}: model_type {model_type!r} is not supported; expected 'smollm3' "
                "(or 'llama', read as SmolLM3 with RoPE on every layer)"
            )
        for key, bad, why in (("hidden_act", lambda v: v != "silu", "only silu (SwiGLU) MLPs are SmolLM3"),
                              ("attention_bias", bool, "SmolLM3 projections have no bias"),
                              ("mlp_bias", bool, "SmolLM3 projections have no bias"),
                              ("use_sliding_window", bool, "sliding-window attention is not part of SmolLM3")):
            if key in raw and bad(raw[key]):
                raise ConfigError(f"{source}: {key}={raw[key]!r} is not supported ({why})")
        kw: dict = {}
        fields = {f.name for f in dataclasses.fields(cls)}
        # rope: v5 rope_parameters wins over v4 rope_theta / rope_scaling
        params = raw.pop("rope_parameters", None) or {}
        legacy_scaling = raw.pop("rope_scaling", None)
        theta = params.get("rope_theta", raw.pop("rope_theta", None))
        raw.pop("rope_theta", None)
        if theta is not None:
            kw["rope_theta"] = float(theta)
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default":
            kw["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
        elif legacy_scaling:
            kw["rope_scaling"] = dict(legacy_scaling)
        dtype = raw.pop("dtype", None) or raw.pop("torch_dtype", None)
        raw.pop("torch_dtype", None)
        if dtype is not None:
            kw["dtype"] = str(dtype).replace("torch.", "")
        if model_type == "llama":
            kw["no_rope_layers"] = [1] * int(raw.get("num_hidden_layers", cls.num_hidden_layers))
            kw.setdefault("rope_theta", 10000.0)
            raw.pop("no_rope_layers", None)
        unknown = []
        for key, value in raw.items():
            if key in fields:
                kw[key] = value
            elif key not in _HF_KEYS_WE_IGNORE:
                unknown.append(key)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {_describe_unknown(unknown, fields | _HF_KEYS_WE_IGNORE)}")
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(raw, source=str(path))


def causal_pairs(document_lengths) -> int:
    """(query, key) pairs that causal attention within each document scores: n(n+1)/2 for a document of n tokens
    (every token sees itself and the tokens before it in its own document). One window-long document gives
    T(T+1)/2; the same window as 64 equal documents gives 64·(T/64)(T/64+1)/2, about 1/64 of it."""
    total = 0
    for n in document_lengths:
        n = int(n)
        if n < 0:
            raise ValueError(f"document length {n} is negative; lengths count tokens")
        total += n * (n + 1) // 2
    return total


def config_from_dict(values: dict, source: str = "config") -> ModelConfig:
    """Build a ModelConfig from our own YAML-style keys (a preset name under `preset`, overrides beside it)."""
    values = dict(values)
    base = preset(values.pop("preset")) if "preset" in values else ModelConfig()
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ConfigError(f"{source}: unknown model key(s) {_describe_unknown(unknown, fields | {'preset'})}")
    merged = {f.name: getattr(base, f.name) for f in dataclasses.fields(ModelConfig)}
    if "num_hidden_layers" in values or "no_rope_layer_interval" in values:
        merged["no_rope_layers"] = None  # re-derive unless given explicitly
    if "hidden_size" in values or "num_attention_heads" in values:
        merged["head_dim"] = None
    merged.update(values)
    return ModelConfig(**merged)


def _normalise_rope_scaling(scaling: dict, max_position_embeddings: int) -> dict:
    s = dict(scaling)
    rope_type = s.pop("rope_type", None) or s.pop("type", None)
    s.pop("type", None)
    if rope_type != "yarn":
        raise ConfigError(
            f"rope_scaling type {rope_type!r} is not supported; SmolLM3 extends context with YaRN: "
            '{"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 65536}'
        )
    factor = s.get("factor")
    if not isinstance(factor, (int, float)) or factor < 1:
        raise ConfigError(f"rope_scaling.factor must be a number >= 1, got {factor!r}")
    allowed = {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor",
               "mscale", "mscale_all_dim", "truncate"}
    unknown = [k for k in s if k not in allowed]
    if unknown:
        raise ConfigError(f"rope_scaling: unknown key(s) {_describe_unknown(unknown, allowed)}")
    s.setdefault("original_max_position_embeddings", max_position_embeddings)
    return {"rope_type": "yarn", **s}


# ------------------------------------------------------------------------------------------------------------------
# presets: the published 3B and SmolLM3-shaped smaller models (SmolLM2 widths, NoPE every 4th layer, tied embeddings)

PRESETS: dict[str, dict] = {
    "smollm3-3b": dict(bos_token_id=128000, eos_token_id=128012, pad_token_id=128004),
    "smollm3-360m": dict(vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=8192,
                         rope_theta=100_000.0, bos_token_id=1, eos_token_id=2, pad_token_id=2),
    "smollm3-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100_000.0, bos_token_id=1, eos_token_id=2, pad_token_id=2),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024, rope_theta=10_000.0, bos_token_id=1,
                 eos_token_id=2, pad_token_id=0, dtype="float32"),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return ModelConfig(**PRESETS[name])


def _describe_unknown(keys: list[str], known: set[str]) -> str:
    parts = []
    for k in keys:
        close = difflib.get_close_matches(k, sorted(known), n=1)
        parts.append(f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k))
    return ", ".join(parts) + "; remove or rename them"


# Generic keys transformers writes into every config.json; they carry no architecture.
_HF_KEYS_WE_IGNORE = {
    "architectures", "transformers_version", "use_cache", "_name_or_path", "max_window_layers", "pretraining_tp",
    "layer_types", "sliding_window", "use_sliding_window", "attention_dropout", "attention_bias", "mlp_bias",
    "hidden_act", "output_attentions", "output_hidden_states", "return_dict", "is_encoder_decoder", "is_decoder",
    "add_cross_attention", "tie_encoder_decoder", "chunk_size_feed_forward", "problem_type", "id2label", "label2id",
    "torchscript", "pruned_heads", "cross_attention_hidden_size", "tokenizer_class", "prefix", "sep_token_id",
    "decoder_start_token_id", "task_specific_params", "finetuning_task", "quantization_config", "auto_map",
    "_attn_implementation_autoset", "attn_implementation", "_attn_implementation", "model_name", "num_labels",
    "max_length", "min_length", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "bad_words_ids",
    "num_beams", "length_penalty", "early_stopping", "no_repeat_ngram_size", "output_scores", "return_dict_in_generate",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "num_return_sequences", "diversity_penalty", "num_beam_groups",
    "typical_p", "encoder_no_repeat_ngram_size", "tf_legacy_loss", "use_bfloat16",
}
