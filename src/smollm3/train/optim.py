"""AdamW with the recipe's parameter groups, and the learning-rate schedules (WSD, cosine with a floor).

SmolLM3 (nanotron `weight_decay_exclude_named_params: [".*token_embedding.*"]`) excludes only the tied embedding from
weight decay; RMSNorm weights do decay. `no_decay_norms` is there for users who prefer the common alternative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class OptimConfig:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    no_decay_embeddings: bool = True
    no_decay_norms: bool = False
    clip_grad: float = 1.0
    schedule: str = "wsd"  # "wsd" | "cosine" | "constant"
    warmup_steps: int = 2000
    warmup_ratio: float | None = None  # TRL-style: warmup over this fraction of the steps (wins over warmup_steps)
    decay_fraction: float = 0.1  # wsd: the final fraction of steps decays linearly to min_lr_ratio * lr
    min_lr_ratio: float = 0.0  # wsd and cosine floor, as a fraction of lr
    fused: bool | None = None  # None: fused on CUDA, foreach on CPU

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.schedule not in ("wsd", "cosine", "constant"):
            raise ValueError(f"optim.schedule {self.schedule!r} is unknown; choose wsd, cosine or constant")
        if not 0 <= self.decay_fraction <= 1:
            raise ValueError(f"optim.decay_fraction must be in [0, 1], got {self.decay_fraction}")


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    decay, no_decay = [], []
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # a tied weight appears under two names; optimise it once
            continue
        seen.add(id(p))
        is_embedding = "embed_tokens" in name or "lm_head" in name
        is_norm = name.endswith("norm.weight")
        if (is_embedding and cfg.no_decay_embeddings) or (is_norm and cfg.no_decay_norms):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    device = next(model.parameters()).device
    fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused,
                             foreach=None if fused else True)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of cfg.lr at `step` (0-based; the update made at step s uses lr_factor(s)).

    Warmup is linear from lr/warmup to lr, as nanotron's `lr * step / warmup` counted from step 1."""
    warmup = round(cfg.warmup_ratio * total_steps) if cfg.warmup_ratio is not None else cfg.warmup_steps
    if warmup and step < warmup:
        return (step + 1) / warmup
    floor = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "wsd":
        decay_steps = round(total_steps * cfg.decay_fraction)
        decay_start = total_steps - decay_steps
        if step < decay_start or decay_steps == 0:
            return 1.0
        remaining = (total_steps - step) / decay_steps  # 1 at the start of the decay, 1/decay_steps at the last step
        return floor + (1 - floor) * remaining
    progress = (step - warmup) / max(1, total_steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float):
    for group in optimizer.param_groups:
        group["lr"] = lr
