"""Loading a model for inference: YaRN on demand, an Engine with the model directory's sampling defaults and stop
ids, and the offline `LLM` API.

    llm = LLM("path/to/model")
    outs = llm.generate(["The capital of France is"], SamplingParams(max_tokens=32, temperature=0))
    print(outs[0].text)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from smollm3.checkpoint import load_generation_config, load_pretrained
from smollm3.infer.engine import Engine, Request
from smollm3.infer.sampling import SamplingParams, generation_defaults, stop_token_ids
from smollm3.model import SmolLM3ForCausalLM, change_config
from smollm3.tokenizer import load_tokenizer


def extend_context(model: SmolLM3ForCausalLM, max_model_len: int) -> str | None:
    """Enable YaRN in memory when max_model_len exceeds the model's positions (never written to the checkpoint).
    Returns a one-line notice of what changed, or None when nothing had to."""
    cfg = model.config
    if max_model_len <= cfg.max_position_embeddings:
        return None
    original = (cfg.rope_scaling or {}).get("original_max_position_embeddings", cfg.max_position_embeddings)
    factor = max_model_len / original
    change_config(model, max_position_embeddings=max_model_len, rope_scaling={
        "rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original})
    return (f"YaRN rope scaling x{factor:g}: {original} -> {max_model_len} positions "
            "(in memory only; the checkpoint is unchanged)")


def load_for_inference(path, device: str | None = None, dtype=None, max_model_len: int | None = None,
                       log: Callable[[str], None] = print, config_overrides: dict | None = None):
    """-> (model, tokenizer or None, generation_config dict) from an HF directory or a .gguf file.
    `config_overrides` (RoPE fields and token ids: model.change_config) apply before anything else looks at the
    config, e.g. YaRN at load time: {"rope_scaling": {"rope_type": "yarn", "factor": 2.0,
    "original_max_position_embeddings": 65536}, "max_position_embeddings": 131072}."""
    path = Path(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    model = load_pretrained(path, device=device, dtype=dtype)
    if config_overrides:
        change_config(model, **config_overrides)
    tokenizer = None
    if path.is_file() or (path / "tokenizer.json").exists():
        tokenizer = load_tokenizer(path)
    gen_cfg = load_generation_config(path)
    if max_model_len is not None:
        notice = extend_context(model, max_model_len)
        if notice:
            log(notice)
    return model, tokenizer, gen_cfg


def engine_for(model: SmolLM3ForCausalLM, tokenizer, generation_config: dict, **engine_kwargs) -> Engine:
    """An Engine over a loaded model with its directory's sampling defaults (generation_defaults) and stop ids
    (stop_token_ids); `engine_kwargs` are Engine's."""
    return Engine(model, tokenizer, defaults=generation_defaults(generation_config),
                  eos_token_ids=stop_token_ids(model.config, tokenizer, generation_config), **engine_kwargs)


def build_engine(model, *, chat_template: str | None = None, max_model_len: int | None = None,
                 device: str | None = None, dtype=None, config_overrides: dict | None = None,
                 log: Callable[[str], None] = print, **engine_kwargs) -> tuple[Engine, str]:
    """Load a model directory into an Engine with the model's sampling defaults and stop ids; `engine_kwargs` are
    Engine's (max_num_seqs, kv_cache_memory, gpu_memory_utilization, max_num_batched_tokens, prefix_caching,
    block_size, cuda_graphs). -> (engine, chat template source): `chat_template` is a name, a .jinja file, or None
    for the model's own chat_template.jinja (else our "smollm3" template)."""
    m, tokenizer, gen_cfg = load_for_inference(model, device, dtype, max_model_len, log=log,
                                               config_overrides=config_overrides)
    engine = engine_for(m, tokenizer, gen_cfg, max_model_len=max_model_len, **engine_kwargs)
    if chat_template is not None and Path(chat_template).is_file():
        template = Path(chat_template).read_text()
    else:
        template = chat_template or (tokenizer.chat_template if tokenizer is not None else None) or "smollm3"
    return engine, template


class LLM:
    """The offline API: load a model directory once, generate for many prompts at once."""

    def __init__(self, model: str | Path, *, device: str | None = None, dtype=None, max_model_len: int | None = None,
                 config_overrides: dict | None = None, **engine_kwargs):
        """`engine_kwargs`: Engine's (max_num_seqs, kv_cache_memory, gpu_memory_utilization, ...)."""
        self.engine, self.chat_template = build_engine(
            model, max_model_len=max_model_len, device=device, dtype=dtype, config_overrides=config_overrides,
            **engine_kwargs)
        self.model, self.tokenizer = self.engine.model, self.engine.tokenizer

    def generate(self, prompts: str | list[str] | list[list[int]],
                 params: SamplingParams | list[SamplingParams] | None = None) -> list[Request]:
        """Prompts are strings (encoded with the model's tokenizer) or lists of token ids."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        ids = [self.tokenizer.encode(p, add_special_tokens=True) if isinstance(p, str) else p for p in prompts]
        return self.engine.generate(ids, params)
