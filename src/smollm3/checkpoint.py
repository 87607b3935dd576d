"""Checkpoint IO: Hugging Face directories (safetensors, sharded above a size limit) and llama.cpp GGUF files.

An HF directory we write loads in `transformers.AutoModelForCausalLM` as SmolLM3ForCausalLM with equal logits;
any SmolLM3 (or Llama) HF directory loads here. Writes are atomic: files go to a temporary sibling directory
that is renamed into place only once complete, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from smollm3.config import ConfigError, ModelConfig
from smollm3.gguf_io import read_gguf
from smollm3.model import SmolLM3ForCausalLM
from smollm3.ops.settings import OpSettings

DEFAULT_SHARD_BYTES = 5 * 1024**3  # transformers' default max_shard_size ("5GB")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as this model; the message names the file and what is wrong."""


def torch_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """A torch dtype from its config / command-line spelling (float32, bf16, ...); a dtype or None passes through."""
    if name is None or isinstance(name, torch.dtype):
        return name
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if str(name) not in table:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(table)}")
    return table[str(name)]


def build_model(config: ModelConfig, device="cpu", dtype=torch.float32, init: bool = True,
                settings: OpSettings | None = None) -> SmolLM3ForCausalLM:
    """Construct on the meta device (no memory touched), materialise on `device`, then initialise (or leave for a
    load). `settings`: which implementation runs each op (default: OpSettings())."""
    with torch.device("meta"):
        model = SmolLM3ForCausalLM(config, settings)
    model.to_empty(device=device)
    model.to(dtype)
    if config.tie_word_embeddings:  # to_empty() re-creates parameters; re-tie
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb.reset_parameters()
    if init:
        model.init_weights()
    return model


def with_settings(model: SmolLM3ForCausalLM, settings: OpSettings) -> SmolLM3ForCausalLM:
    """A copy of `model` (its config, weights, dtype, device and mode) whose ops run as `settings` say: how A/B
    runs and tests compare two implementations of an op on the same weights."""
    p = next(model.parameters())
    twin = build_model(model.config, p.device, p.dtype, init=False, settings=settings)
    twin.load_state_dict(model.state_dict())
    return twin.train(model.training)


# ------------------------------------------------------------------------------------------------------------------
# loading


def load_pretrained(path: str | os.PathLike, device="cpu", dtype=None,
                    settings: OpSettings | None = None) -> SmolLM3ForCausalLM:
    """An HF directory (config.json + safetensors) or a `.gguf` file -> SmolLM3ForCausalLM in eval mode.

    dtype None keeps the checkpoint's own dtype (the config's `dtype`/`torch_dtype`; float32 for GGUF). `settings`:
    which implementation runs each op (default: OpSettings())."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory (expected an HF model directory or a .gguf file)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise CheckpointError(f"{path}: a file must be a .gguf; for HF checkpoints pass the directory")
        return load_gguf(path, device, dtype, settings)[0]
    config = load_config(path)
    model = build_model(config, device, torch_dtype(dtype) or torch_dtype(config.dtype), init=False, settings=settings)
    _assign(model, _read_safetensors(path), str(path))
    return model.eval()


def load_gguf(path: str | os.PathLike, device="cpu", dtype=None, settings: OpSettings | None = None):
    """-> (model, GGUF reader): the reader also holds the tokenizer, so callers need not parse the file twice."""
    config, tensors, reader = read_gguf(path)
    model = build_model(config, device, torch_dtype(dtype) or torch.float32, init=False, settings=settings)
    _assign(model, tensors, str(path))
    return model.eval(), reader


def load_config(model_dir: str | os.PathLike) -> ModelConfig:
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{model_dir}: no config.json; {_model_inside(Path(model_dir))}")
    return ModelConfig.from_json(cfg_path)


def _model_inside(path: Path) -> str:
    """The fix for a directory that is not an HF model: a trainer checkpoint or run holds one (its `hf` export)."""
    if (path / "hf" / "config.json").exists():
        return f"this is a training checkpoint; its model is {path / 'hf'}"
    exports = sorted(path.glob("checkpoints/*/hf/config.json"))
    if exports:
        return f"this is a training run; its latest model is {exports[-1].parent}"
    return "is this a Hugging Face model directory?"


def load_generation_config(path: str | os.PathLike) -> dict:
    """generation_config.json of an HF directory (sampling defaults, eos ids); {} for a .gguf file or a directory
    without one."""
    f = Path(path) / "generation_config.json"
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: not valid JSON ({e}); fix or delete the file") from None


def shard_files(model_dir: Path) -> tuple[dict | None, list[str]]:
    """(the index's weight_map or None for a single file, the shard file names) of an HF directory."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
        return weight_map, sorted(set(weight_map.values()))
    if (model_dir / "model.safetensors").exists():
        return None, ["model.safetensors"]
    raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def _read_safetensors(model_dir: Path):
    """Yield (name, tensor) over a single file or the shards an index names, checking the index against the shards."""
    weight_map, shards = shard_files(model_dir)
    for shard in shards:
        file = model_dir / shard
        if not file.exists():
            raise CheckpointError(f"{file}: shard listed in the index is missing")
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    if weight_map is not None and weight_map.get(name) != shard:
                        raise CheckpointError(f"{file}: tensor {name} is not where the index says ({weight_map.get(name)})")
                    yield name, f.get_tensor(name)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
            raise CheckpointError(f"{file}: unreadable safetensors shard ({e}); re-download or re-convert it") from None


def _assign(model: SmolLM3ForCausalLM, tensors, source: str):
    """Copy tensors into the model's parameters, collecting every missing, unexpected and mis-shaped name first."""
    params = dict(model.named_parameters())
    tied = model.config.tie_word_embeddings
    expected = set(params) - ({"lm_head.weight"} if tied else set())
    seen, unexpected, wrong = set(), [], []
    staged = {}
    for name, t in tensors:
        if name == "lm_head.weight" and tied:
            continue  # some exporters write the tied copy too
        if name not in params:
            if not name.endswith("rotary_emb.inv_freq"):
                unexpected.append(name)
            continue
        if tuple(t.shape) != tuple(params[name].shape):
            wrong.append(f"{name}: checkpoint {tuple(t.shape)} vs model {tuple(params[name].shape)}")
            seen.add(name)  # present, just the wrong shape: report it once, under shapes
            continue
        staged[name] = t
        seen.add(name)
    missing = sorted(expected - seen)
    if missing or unexpected or wrong:
        raise CheckpointError(describe_mismatch(source, missing, unexpected, wrong))
    with torch.no_grad():
        for name, t in staged.items():
            params[name].copy_(t)


def describe_mismatch(source: str, missing: list[str], unexpected: list[str], wrong_shapes: list[str]) -> str:
    """One message for every way a checkpoint's tensors can disagree with its config (shared with merge)."""
    def names(xs):
        return ", ".join(xs[:8]) + (" ..." if len(xs) > 8 else "")

    lines = [f"{source} does not match the model its config describes:"]
    if missing:
        lines.append(f"  missing {len(missing)} tensor(s): {names(missing)}")
    if unexpected:
        lines.append(f"  unexpected {len(unexpected)} tensor(s): {names(unexpected)}")
    if wrong_shapes:
        lines.append("  wrong shapes (checkpoint vs model): " + "; ".join(wrong_shapes[:8]))
    lines.append("  the weights and config.json come from different models, or the files are damaged")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------------
# saving


def save_pretrained(model: SmolLM3ForCausalLM, out_dir: str | os.PathLike, tokenizer=None,
                    max_shard_bytes: int = DEFAULT_SHARD_BYTES, generation_config: dict | None = None,
                    dtype=None) -> Path:
    """Write an HF directory: config.json, generation_config.json, safetensors (+ index when sharded), tokenizer.

    `out_dir` is replaced as a whole, atomically."""
    dtype = torch_dtype(dtype) or next(model.parameters()).dtype
    return save_state_dict(model.state_dict(), model.config, out_dir, tokenizer, max_shard_bytes, generation_config,
                           dtype)


def save_state_dict(state: dict, config: ModelConfig, out_dir: str | os.PathLike, tokenizer=None,
                    max_shard_bytes: int = DEFAULT_SHARD_BYTES, generation_config: dict | None = None,
                    dtype: torch.dtype = torch.bfloat16) -> Path:
    """save_pretrained for a bare state dict (e.g. one gathered from FSDP shards)."""
    out_dir = Path(out_dir)
    tensors = {}
    for name, p in state.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if name.endswith("rotary_emb.inv_freq"):
            continue
        tensors[name] = p.detach().to("cpu", dtype).contiguous()
    saved_config = ModelConfig(**{**config.__dict__, "dtype": str(dtype).replace("torch.", "")})
    gen = generation_config or {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
                                "pad_token_id": config.pad_token_id}

    with atomic_dir(out_dir) as tmp:
        shards = split_into_shards(tensors, max_shard_bytes)
        if len(shards) == 1:
            save_file(shards[0], tmp / "model.safetensors", metadata={"format": "pt"})
        else:
            weight_map, total = {}, 0
            for i, shard in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, tmp / fname, metadata={"format": "pt"})
                for name, t in shard.items():
                    weight_map[name] = fname
                    total += t.numel() * t.element_size()
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        (tmp / "config.json").write_text(json.dumps(saved_config.to_hf_dict(), indent=2))
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        if tokenizer is not None:
            tokenizer.save(tmp)
    return out_dir


def split_into_shards(state: dict, max_bytes: int) -> list[dict]:
    """`state` (name -> tensor, in order) cut into consecutive shards of at most `max_bytes` each, as transformers'
    save_pretrained cuts them (a tensor larger than `max_bytes` is a shard of its own). Meta tensors plan a save."""
    shards, current, size = [], {}, 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        if current and size + n > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += n
    shards.append(current)
    return shards


class atomic_dir:
    """`with atomic_dir(final) as tmp:` write into tmp; on success tmp replaces final, on error nothing changes."""

    def __init__(self, final: Path):
        self.final = Path(final)

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
        umask = os.umask(0)
        os.umask(umask)
        self.mode = 0o666 & ~umask
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is an ordinary directory
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        for f in self.tmp.iterdir():  # make the bytes durable before the rename makes them visible
            os.chmod(f, self.mode)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.rename(self.final, old)
        os.rename(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


__all__ = ["load_pretrained", "save_pretrained", "load_config", "build_model", "CheckpointError", "ConfigError"]
