"""Linear merge and model soup of HF checkpoints, from mergekit's YAML.

SmolLM3's last step: a soup of the APO checkpoints, then 0.9 x soup + 0.1 x the long-context mid-training model,
which restores long-context (RULER) scores that APO had lost (reference/smollm3.md §3.6). A mergekit `linear`
config runs unchanged:

    models:
      - model: path/apo-soup
        parameters: {weight: 0.9}
      - model: path/mid-training
        parameters: {weight: 0.1}
    merge_method: linear
    normalize: true        # divide by the weight sum (default); mergekit's `parameters: {normalize: ...}` also works
    dtype: bfloat16        # of the stored result; the arithmetic is always fp32

Weights may all be omitted: equal weights, i.e. a model soup. Everything is validated before any arithmetic, and the
merge streams one tensor at a time across all inputs (memory: one output shard plus one tensor per input), writing
the same layout as `save_pretrained` into a directory that appears atomically.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from smollm3.checkpoint import (DEFAULT_SHARD_BYTES, CheckpointError, atomic_dir, describe_mismatch, load_config,
                                shard_files, split_into_shards, torch_dtype)
from smollm3.config import ConfigError, ModelConfig
from smollm3.model import SmolLM3ForCausalLM
from smollm3.yaml_file import read_yaml_mapping

SUPPORTED_METHODS = ("linear",)
DTYPES = ("float32", "bfloat16", "float16")
TOP_LEVEL_KEYS = ("models", "merge_method", "normalize", "dtype", "out_dtype", "tokenizer_source", "parameters")
MODEL_KEYS = ("model", "parameters")
MODEL_PARAMETERS = ("weight",)
GLOBAL_PARAMETERS = ("normalize",)
# mergekit keys for features linear merging here does not have: say what to do instead of "unknown key"
UNSUPPORTED_KEYS = {
    "slices": "layer-range (slice) merges are not supported; list whole models under `models`",
    "modules": "per-module merges are not supported; list whole models under `models`",
    "base_model": "base_model is only used by task-vector methods (task_arithmetic, ties, dare); linear ignores it: "
                  "remove it",
    "tokenizer": "tokenizer merging is not supported; use `tokenizer_source: PATH` to copy one model's tokenizer",
    "chat_template": "the chat template is copied with the tokenizer; use `tokenizer_source: PATH` to pick the model",
}
# files copied verbatim from the tokenizer source: the tokenizer, its chat template, the sampling defaults
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")
# config fields that may differ between merged models (they do not change what the weights mean)
CONFIG_FIELDS_ALLOWED_TO_DIFFER = ("dtype", "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range")


class MergeError(ValueError):
    """A merge config or set of checkpoints that cannot be merged; the message names the input and the fix."""


@dataclass
class MergePlan:
    """A validated merge: model directories, their weights as written (1/N each for a soup), output dtype, tokenizer
    source. linear_merge applies `normalize`."""

    models: list[Path]
    weights: list[float]
    normalize: bool = True
    dtype: str | None = None  # None: the first model's dtype
    tokenizer_source: Path | None = None  # None: the first model
    source: str = "merge config"


# ------------------------------------------------------------------------------------------------------------------
# reading mergekit YAML


def read_merge_config(path: str | os.PathLike) -> MergePlan:
    """Parse and validate a mergekit-style YAML. Relative model paths resolve against the YAML's directory."""
    path = Path(path)
    raw = read_yaml_mapping(path, "merge config (a mergekit-style YAML file)",
                            "with `models:` and `merge_method:`", MergeError)
    src = str(path)
    _check_keys(raw, TOP_LEVEL_KEYS, src, "top-level", UNSUPPORTED_KEYS)
    method = raw.get("merge_method")
    if method not in SUPPORTED_METHODS:
        raise MergeError(f"{src}: merge_method {method!r} is not supported; supported: {', '.join(SUPPORTED_METHODS)} "
                         "(a model soup is `linear` with equal or omitted weights)")
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise MergeError(f"{src}: `parameters` must be a mapping such as {{normalize: true}}")
    _check_keys(params, GLOBAL_PARAMETERS, src, "top-level parameters")
    if "normalize" in raw and "normalize" in params and raw["normalize"] != params["normalize"]:
        raise MergeError(f"{src}: normalize is {raw['normalize']!r} at the top level but {params['normalize']!r} "
                         "under parameters; keep one")
    normalize = raw.get("normalize", params.get("normalize", True))
    if not isinstance(normalize, bool):
        raise MergeError(f"{src}: normalize must be true or false, got {normalize!r}")
    dtype = raw.get("out_dtype", raw.get("dtype"))  # mergekit: dtype computes, out_dtype stores; we compute in fp32
    if dtype is not None and dtype not in DTYPES:
        raise MergeError(f"{src}: dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")

    entries = raw.get("models")
    if not isinstance(entries, list) or not entries:
        raise MergeError(f"{src}: `models` must be a non-empty list of {{model: PATH, parameters: {{weight: W}}}}")
    models, weights = [], []
    for i, entry in enumerate(entries):
        where = f"{src}: models[{i}]"
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or "model" not in entry:
            raise MergeError(f"{where}: each entry needs `model: PATH` (got {entry!r})")
        _check_keys(entry, MODEL_KEYS, where, "per-model")
        p = entry.get("parameters") or {}
        if not isinstance(p, dict):
            raise MergeError(f"{where}: `parameters` must be a mapping such as {{weight: 0.5}}")
        _check_keys(p, MODEL_PARAMETERS, where, "per-model parameters")
        weight = p.get("weight")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))):
            raise MergeError(f"{where}: weight must be a number (per-tensor weight lists and filters are not "
                             f"supported), got {weight!r}")
        models.append(_resolve(entry["model"], path.resolve().parent, where))
        weights.append(weight)
    tokenizer_source = raw.get("tokenizer_source")
    if tokenizer_source in ("union", "base"):
        raise MergeError(f"{src}: tokenizer_source {tokenizer_source!r} is not supported; name one model's "
                         "directory (its tokenizer files are copied), or omit it to use the first model's")
    if tokenizer_source is not None:
        tokenizer_source = _resolve(tokenizer_source, path.resolve().parent, f"{src}: tokenizer_source")
    return MergePlan(models, _weights(weights, normalize, src), normalize, dtype, tokenizer_source, src)


def _check_keys(d: dict, known: tuple, source: str, what: str, unsupported: dict | None = None):
    for key in d:
        if key in known:
            continue
        if unsupported and key in unsupported:
            raise MergeError(f"{source}: `{key}`: {unsupported[key]}")
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise MergeError(f"{source}: unknown {what} key {key!r}{hint}; known: {', '.join(known)}")


def _resolve(model, base: Path, where: str) -> Path:
    if not isinstance(model, str) or not model:
        raise MergeError(f"{where}: model must be a directory path, got {model!r}")
    p = Path(model).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.is_dir():
        hint = ("; if it is a Hub id, download it first (`huggingface-cli download ID --local-dir DIR`)"
                if not Path(model).is_absolute() and model.count("/") == 1 else "")
        raise MergeError(f"{where}: {p} is not a directory; point it at a local HF model directory{hint}")
    return p.resolve()


def _weights(weights: list, normalize: bool, src: str) -> list[float]:
    given = [w is not None for w in weights]
    if not any(given):
        return [1.0 / len(weights)] * len(weights)  # model soup: the plain average
    if not all(given):
        missing = [i for i, g in enumerate(given) if not g]
        raise MergeError(f"{src}: models {missing} have no weight while others do; give every model a weight, or "
                         "none (equal weights, a model soup)")
    weights = [float(w) for w in weights]
    if normalize:
        total = sum(weights)
        if abs(total) < 1e-12:
            raise MergeError(f"{src}: the weights sum to {total}, so normalize cannot divide by it; change the weights "
                             "or set normalize: false")
    return weights


# ------------------------------------------------------------------------------------------------------------------
# merging


def merge(config_path: str | os.PathLike, out_dir: str | os.PathLike, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
          progress: bool = True) -> Path:
    """Read a mergekit-style YAML and write the merged HF directory to out_dir."""
    plan = read_merge_config(config_path)
    return linear_merge(plan.models, out_dir, plan.weights, plan.normalize, plan.dtype, plan.tokenizer_source,
                        max_shard_bytes, progress, record=plan)


def linear_merge(models, out_dir, weights=None, normalize: bool = True, dtype: str | None = None,
                 tokenizer_source=None, max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = True,
                 record: MergePlan | None = None) -> Path:
    """sum_i w_i * model_i (divided by sum_i w_i when normalize), tensor by tensor in fp32, stored in dtype.

    weights None = equal weights (a model soup). Tokenizer files and generation_config.json come from
    tokenizer_source (default: the first model), as does config.json's special-token ids."""
    models = [Path(m) for m in models]
    out_dir = Path(out_dir)
    src = record.source if record else "linear_merge"
    if not models:
        raise MergeError(f"{src}: no models to merge")
    weights = _weights(list(weights) if weights is not None else [None] * len(models), normalize, src)
    if len(weights) != len(models):
        raise MergeError(f"{src}: {len(models)} models but {len(weights)} weights")
    if normalize:
        total = sum(weights)
        weights = [w / total for w in weights]
    for m in models:
        if not m.is_dir():
            raise MergeError(f"{src}: {m} is not a directory; point it at a local HF model directory")
        if m.resolve() == out_dir.resolve():
            raise MergeError(f"{src}: the output {out_dir} is also an input; write the merge to a new directory")
    tokenizer_source = Path(tokenizer_source) if tokenizer_source is not None else models[0]

    if max_shard_bytes < 1:
        raise MergeError(f"{src}: max_shard_bytes must be positive, got {max_shard_bytes}")
    if not tokenizer_source.is_dir():
        raise MergeError(f"{src}: tokenizer_source {tokenizer_source} is not a directory")

    configs = [_load_config(m) for m in models]
    _check_same_architecture(models, configs)
    out_dtype = torch_dtype(dtype or configs[0].dtype)
    # special-token ids belong with the tokenizer that is copied
    ids = configs[0] if not (tokenizer_source / "config.json").exists() else _load_config(tokenizer_source)
    layouts = [_tensor_layout(m, c) for m, c in zip(models, configs)]
    expected = _model_tensors(configs[0])
    for m, layout in zip(models, layouts):
        _check_tensors(m, layout, expected)

    names = list(expected)  # the model's own order, as save_pretrained writes it
    plan = split_into_shards({n: torch.empty(expected[n], dtype=out_dtype, device="meta") for n in names},
                  max_shard_bytes)
    saved_config = ModelConfig(**{**configs[0].__dict__, "dtype": str(out_dtype).replace("torch.", ""),
                                  **{k: getattr(ids, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}})
    with atomic_dir(out_dir) as tmp, contextlib.ExitStack() as stack:
        handles = [{f: stack.enter_context(safe_open(m / f, framework="pt"))
                    for f in sorted({file for file, _ in layout.values()})}
                   for m, layout in zip(models, layouts)]
        bar = stack.enter_context(tqdm(total=len(names), desc="merging tensors", unit="tensor", disable=not progress))
        weight_map, total_bytes = {}, 0
        for i, shard_plan in enumerate(plan):
            fname = "model.safetensors" if len(plan) == 1 else f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors"
            shard = {}
            for name in shard_plan:  # one tensor of every input in memory at a time, accumulated in fp32
                acc = None
                for w, layout, h in zip(weights, layouts, handles):
                    t = h[layout[name][0]].get_tensor(name).to(torch.float32)
                    acc = t * w if acc is None else acc.add_(t, alpha=w)
                shard[name] = acc.to(out_dtype).contiguous()
                weight_map[name] = fname
                total_bytes += shard[name].numel() * shard[name].element_size()
                bar.update(1)
            save_file(shard, tmp / fname, metadata={"format": "pt"})
            del shard
        if len(plan) > 1:
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, indent=2))
        (tmp / "config.json").write_text(json.dumps(saved_config.to_hf_dict(), indent=2))
        for f in TOKENIZER_FILES:
            if (tokenizer_source / f).is_file():
                shutil.copyfile(tokenizer_source / f, tmp / f)
        if not (tmp / "generation_config.json").exists():
            (tmp / "generation_config.json").write_text(json.dumps(
                {k: getattr(saved_config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}, indent=2))
        (tmp / "merge_config.yaml").write_text(yaml.safe_dump({
            "merge_method": "linear", "normalize": normalize, "dtype": str(out_dtype).replace("torch.", ""),
            "tokenizer_source": str(tokenizer_source),
            "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(models, weights)]},
            sort_keys=False))
    return out_dir


# ------------------------------------------------------------------------------------------------------------------
# validation helpers

_ARCH_FIELDS = tuple(k for k in ModelConfig.__dataclass_fields__ if k not in CONFIG_FIELDS_ALLOWED_TO_DIFFER)


def _load_config(model_dir: Path) -> ModelConfig:
    try:
        return load_config(model_dir)
    except (CheckpointError, ConfigError) as e:
        raise MergeError(f"cannot merge {model_dir}: {e}") from None


def _check_same_architecture(models: list[Path], configs: list[ModelConfig]):
    first = configs[0]
    for m, c in zip(models[1:], configs[1:]):
        differ = [k for k in _ARCH_FIELDS if getattr(c, k) != getattr(first, k)]
        if differ:
            detail = "; ".join(f"{k}: {getattr(first, k)!r} vs {getattr(c, k)!r}" for k in differ[:6])
            raise MergeError(f"{m} has a different architecture from {models[0]} ({detail}); only models of one "
                             "architecture can be merged tensor by tensor")


def _model_tensors(config: ModelConfig) -> dict[str, tuple]:
    """name -> shape of what save_pretrained writes for this config, in its order (built on meta: no memory)."""
    with torch.device("meta"):
        model = SmolLM3ForCausalLM(config)
    return {n: tuple(t.shape) for n, t in model.state_dict().items()
            if not n.endswith("rotary_emb.inv_freq") and not (n == "lm_head.weight" and config.tie_word_embeddings)}


def _tensor_layout(model_dir: Path, config: ModelConfig) -> dict[str, tuple[str, tuple]]:
    """name -> (shard file, shape), read from safetensors headers only (no tensor data), in shard order.

    The tied lm_head copy some exporters write and rotary inv_freq buffers are skipped, as load_pretrained does."""
    try:
        weight_map, files = shard_files(model_dir)
    except CheckpointError as e:
        raise MergeError(str(e)) from None
    layout = {}
    for f in files:
        if not (model_dir / f).exists():
            raise MergeError(f"{model_dir / f}: shard listed in the index is missing")
        try:
            with safe_open(model_dir / f, framework="pt") as h:
                for name in h.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    if weight_map is not None and weight_map.get(name) != f:
                        raise MergeError(f"{model_dir / f}: tensor {name} is not where the index says "
                                         f"({weight_map.get(name)})")
                    if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and
                                                                config.tie_word_embeddings):
                        continue
                    layout[name] = (f, tuple(h.get_slice(name).get_shape()))
        except MergeError:
            raise
        except Exception as e:  # noqa: BLE001 (safetensors' own error types for truncated or corrupt files)
            raise MergeError(f"{model_dir / f}: unreadable safetensors shard ({e}); re-download or re-save it") from None
    return layout


def _check_tensors(model_dir: Path, layout: dict, expected: dict):
    """Every checkpoint must hold exactly the tensors its (shared) config describes, with those shapes."""
    missing = [n for n in expected if n not in layout]
    extra = [n for n in layout if n not in expected]
    shapes = [f"{n}: {layout[n][1]} vs {expected[n]}" for n in expected if n in layout and layout[n][1] != expected[n]]
    if missing or extra or shapes:
        raise MergeError(describe_mismatch(str(model_dir), missing, extra, shapes)
                         + "\n  merge only complete checkpoints of one model")


__all__ = ["MergeError", "MergePlan", "linear_merge", "merge", "read_merge_config"]
