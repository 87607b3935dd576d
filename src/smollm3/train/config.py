"""Training configs: YAML -> nested dataclasses, with `dotted.key=value` overrides and unknown keys refused.

The resolved config (every default filled in) is saved beside each checkpoint as config.yaml.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import typing
from datetime import date as Date
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from smollm3.config import ConfigError
from smollm3.ops.fp8 import RECIPES as FP8_RECIPES
from smollm3.ops.settings import OpSettings
from smollm3.yaml_file import iso_date, read_yaml_mapping
from smollm3.train.optim import OptimConfig


@dataclass
class ModelSection:
    preset: str | None = None  # a smollm3.config preset to train from scratch
    init_from: str | None = None  # an HF directory (or .gguf) to continue from: the stage transitions
    # overrides of the architecture: rope_theta / max_position_embeddings (long-context stages), or any field for
    # a from-scratch preset. Changing a shape of a model that is loaded is refused.
    overrides: dict = field(default_factory=dict)


@dataclass
class DataSection:
    kind: str = "pretrain"  # pretrain | sft | preference
    tokenizer: str | None = None  # HF tokenizer directory; default: the init_from directory
    seq_len: int = 4096
    # pretrain: mixture stages switching at token counts, [{start_tokens: 0, weights: {shard_dir: weight}}, ...]
    stages: list = field(default_factory=list)
    # sft / preference: JSONL files in TRL's format
    paths: list = field(default_factory=list)
    template: str = "smollm3"  # sft/preference chat template: smollm3 | official | chatml
    max_prompt_length: int | None = 512  # preference: a prompt keeps its last this many tokens (TRL's default)
    seed: int = 0
    # sft / preference: the "Today Date" the SmolLM3 template prints in every system turn, YYYY-MM-DD; None: the day
    # the run starts (a resume keeps it). The date is in the tokens trained on, so a run started on another day
    # trains on other tokens: a recipe that must repeat itself pins it
    date: str | Date | None = None

    def __post_init__(self):
        self.date = iso_date(self.date, "data.date")


@dataclass
class TrainSection:
    objective: str = "lm"  # lm | sft | dpo | apo_zero | apo_down
    steps: int = 1000
    micro_batch: int = 1  # sequences per forward, per process
    grad_accum: int = 1
    dtype: str = "bfloat16"  # autocast dtype; parameters, gradients and optimizer state stay fp32
    seed: int = 0
    beta: float = 0.05  # dpo / apo
    label_smoothing: float = 0.0  # dpo
    ref_model: str | None = None  # dpo / apo: frozen reference; default: the init_from checkpoint
    # recompute each decoder layer in the backward: true; "selective": all of it but attention, whose output is kept
    # (256 MiB a layer of the 3B preset at 64k tokens) so its forward kernel runs once (torchtitan's op-level SAC)
    activation_checkpointing: bool | str = False
    # selective: on the last N layers the projections' outputs are kept too (1.38 GiB a layer of the 3B preset at 32k
    # tokens), so no GEMM is recomputed there (~0.26% of a 32k step a layer): memory a large card has left, as speed
    keep_matmuls_layers: int = 0
    compile: bool = False
    # bf16 weight copies made once a step, weight gradients added into fp32 .grad by their own GEMMs (Megatron's
    # gradient-accumulation fusion, train/precision.py); None: on for single-process CUDA runs in bf16/fp16, except
    # compiled runs with activation checkpointing (there it keeps the activations: refused when asked for)
    grad_accum_fusion: bool | None = None
    # rowwise | tensorwise: the decoder layers' forward and input-gradient GEMMs in FP8 with dynamic scales, weight
    # gradients still bf16 into fp32 (ops/fp8.py); needs the fused path above and an Ada/Hopper GPU (or the CPU)
    fp8: str | None = None
    # replay each micro-batch's forward and backward as a CUDA graph (train/graphs.py); needs one process on CUDA,
    # the fused path above, a causal-LM objective (lm, sft); None: on wherever those hold
    cuda_graphs: bool | None = None
    fsdp: bool = True  # under torchrun: shard with FSDP2 (fully_shard per block, then the root)


@dataclass
class CheckpointSection:
    every: int | None = 1000  # save every N steps and at the last step; null: no checkpoints at all (benchmarks)
    # keep the newest N (>= 1) complete checkpoints, deleting older ones after each save; the final one is always kept
    keep: int = 3
    resume: str = "auto"  # auto (latest valid under out_dir) | never | a checkpoint directory
    export_hf: bool = True  # write an HF directory inside each kept checkpoint


@dataclass
class LogSection:
    every: int = 10
    tensorboard: bool = True  # when tensorboard is installed
    wandb_project: str | None = None
    profile_step: int | None = None  # run this step (1-based) under torch.profiler; trace + kernels in out_dir/profile


@dataclass
class TrainConfig:
    out_dir: str = "runs/train"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    # which implementation runs each op: attention backend, kernels (ops/settings.py); the defaults are the fastest
    ops: OpSettings = field(default_factory=OpSettings)

    def __post_init__(self):
        objectives = ("lm", "sft", "dpo", "apo_zero", "apo_down")
        if self.train.objective not in objectives:
            raise ConfigError(f"train.objective {self.train.objective!r} is unknown; choose one of {objectives}")
        if (self.model.preset is None) == (self.model.init_from is None):
            raise ConfigError("set exactly one of model.preset (from scratch) and model.init_from (a checkpoint)")
        kinds = {"lm": ("pretrain", "sft"), "sft": ("sft",), "dpo": ("preference",), "apo_zero": ("preference",),
                 "apo_down": ("preference",)}[self.train.objective]
        if self.data.kind not in kinds:
            raise ConfigError(f"train.objective {self.train.objective!r} trains on data.kind "
                              f"{' or '.join(kinds)}, not {self.data.kind!r}")
        if isinstance(self.train.activation_checkpointing, str) and self.train.activation_checkpointing != "selective":
            raise ConfigError(f"train.activation_checkpointing is {self.train.activation_checkpointing!r}; use true, "
                              "false or selective")
        if self.train.keep_matmuls_layers and self.train.activation_checkpointing != "selective":
            raise ConfigError(f"train.keep_matmuls_layers is {self.train.keep_matmuls_layers}: it applies to "
                              "train.activation_checkpointing: selective; set that, or keep_matmuls_layers: 0")
        if self.train.fp8 not in (None, *FP8_RECIPES):
            raise ConfigError(f"train.fp8 is {self.train.fp8!r}; use one of {', '.join(FP8_RECIPES)} or null")
        check_ranges(self)


SEED_MAX = 2**63 - 1  # torch.manual_seed takes a signed or unsigned 64-bit value; numpy's generators any int >= 0
CHOICES = {"train.dtype": ("bfloat16", "float16", "float32"), "data.kind": ("pretrain", "sft", "preference")}


def check_ranges(cfg: TrainConfig):
    """Every numeric knob inside the range where it means something, refused by its key before any compute (a
    negative checkpoint.keep once deleted every checkpoint; a negative checkpoint.every saved every step)."""
    o, t, c, d, log = cfg.optim, cfg.train, cfg.checkpoint, cfg.data, cfg.log
    rules = [  # (key, value, ok, what is allowed)
        ("train.steps", t.steps, t.steps >= 1, ">= 1"),
        ("train.micro_batch", t.micro_batch, t.micro_batch >= 1, ">= 1"),
        ("train.grad_accum", t.grad_accum, t.grad_accum >= 1, ">= 1"),
        ("train.seed", t.seed, 0 <= t.seed <= SEED_MAX, f"between 0 and 2**63-1 ({SEED_MAX})"),
        ("train.keep_matmuls_layers", t.keep_matmuls_layers, t.keep_matmuls_layers >= 0, ">= 0"),
        ("train.beta", t.beta, t.beta > 0, "> 0"),
        ("train.label_smoothing", t.label_smoothing, 0 <= t.label_smoothing < 0.5, "in [0, 0.5)"),
        ("data.seq_len", d.seq_len, d.seq_len >= 2, ">= 2"),
        ("data.seed", d.seed, 0 <= d.seed <= SEED_MAX, f"between 0 and 2**63-1 ({SEED_MAX})"),
        ("data.max_prompt_length", d.max_prompt_length, d.max_prompt_length is None or d.max_prompt_length >= 1,
         ">= 1 or null"),
        ("optim.lr", o.lr, o.lr > 0, "> 0"),
        ("optim.eps", o.eps, o.eps > 0, "> 0"),
        ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, ">= 0"),
        ("optim.clip_grad", o.clip_grad, o.clip_grad > 0, "> 0 (use a large value to clip nothing)"),
        ("optim.betas", list(o.betas), len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "two values in [0, 1)"),
        ("optim.warmup_steps", o.warmup_steps, o.warmup_steps >= 0, ">= 0"),
        ("optim.warmup_ratio", o.warmup_ratio, o.warmup_ratio is None or 0 <= o.warmup_ratio <= 1, "in [0, 1] or null"),
        ("optim.min_lr_ratio", o.min_lr_ratio, 0 <= o.min_lr_ratio <= 1, "in [0, 1]"),
        ("checkpoint.every", c.every, c.every is None or c.every >= 1,
         ">= 1 (save every N steps), or null for no checkpoints at all"),
        ("checkpoint.keep", c.keep, c.keep >= 1, ">= 1 (the newest N checkpoints are kept)"),
        ("log.every", log.every, log.every >= 1, ">= 1"),
        ("log.profile_step", log.profile_step, log.profile_step is None or 1 <= log.profile_step <= t.steps,
         f"a step from 1 to train.steps ({t.steps}), or null"),
    ]
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        rules.append((key, value, value in choices, "one of " + ", ".join(choices)))
    for key, value, ok, allowed in rules:
        if not ok:
            raise ConfigError(f"{key} is {value!r}; it must be {allowed}")
    if c.resume not in ("auto", "never") and not c.resume:
        raise ConfigError("checkpoint.resume is empty; use auto, never or a checkpoint directory")


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """The config in YAML file `path` (None: every default) with `section.key=value` overrides applied, checked."""
    raw = {}
    if path is not None:
        raw = read_yaml_mapping(path, "config file", "sections such as model:, data:, train:, optim:")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return train_config_from_dict(raw, str(path) if path else "config")


def train_config_from_dict(raw: dict, where: str = "config") -> TrainConfig:
    """A TrainConfig from a mapping as a YAML file holds it (e.g. a recipe stage's `train:`), checked: unknown keys,
    wrong types and bad values are ConfigError naming `where` and the key."""
    return _build(TrainConfig, raw, where)


def _build(cls, raw: dict, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        parts = []
        for k in unknown:
            close = difflib.get_close_matches(k, list(fields), n=1)
            parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"{where}: unknown key(s) {', '.join(parts)}; known: {', '.join(fields)}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, f"{where}: {name}")
        else:
            kwargs[name] = _check_type(value, hint, f"{where}: {name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_type(value, hint, where):
    origin = typing.get_origin(hint)
    allowed = typing.get_args(hint) if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) \
        else (hint,)
    for t in allowed:
        base = typing.get_origin(t) or t
        if t is type(None) and value is None:
            return None
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base is float and isinstance(value, str):  # PyYAML reads 3e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if base in (list, tuple) and isinstance(value, (list, tuple)):
            return base(value)
        if isinstance(base, type) and issubclass(base, enum.Enum) and value in [m.value for m in base]:
            return base(value)
        if isinstance(base, type) and isinstance(value, base) and not (base is int and isinstance(value, bool)):
            return value
    names = " or ".join("one of " + ", ".join(m.value for m in t) if isinstance(t, type) and issubclass(t, enum.Enum)
                        else getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"{where} must be {names}, got {value!r}")


def config_to_dict(cfg) -> dict:
    """Plain values throughout (an enum as its value), as YAML and JSON take them."""
    return dataclasses.asdict(cfg, dict_factory=lambda items: {k: v.value if isinstance(v, enum.Enum) else v
                                                                 for k, v in items})


def dump_config(cfg: TrainConfig) -> str:
    d = config_to_dict(cfg)
    d["optim"]["betas"] = list(d["optim"]["betas"])
    return yaml.safe_dump(d, sort_keys=False)
