"""Sampling parameters and batched sampling: every row of a batch has its own temperature, top-p, top-k, min-p,
repetition penalty and (optionally) its own seeded generator.

Sampling uses the exponential-race form of the Gumbel-max trick: argmax(p / E) with E ~ Exp(1) i.i.d. is a draw
from p. It needs no sort, each seeded row draws its own noise (so a seed gives the same tokens whatever else is in
the batch), and walking candidates in decreasing p / E order samples from p restricted to any allowed subset
(used by constrained decoding, see constrain.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

# SmolLM3's recommended sampling (blog and model card), used when generation_config.json says nothing
RECOMMENDED = {"temperature": 0.6, "top_p": 0.95}


@dataclass
class SamplingParams:
    """None means "the model's default" (generation_config.json, else RECOMMENDED); see `resolve`."""

    max_tokens: int = 256
    temperature: float | None = None  # 0 = greedy
    top_p: float | None = None
    top_k: int | None = None  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF / CTRL style, over prompt and output tokens; 1 = off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings; removed from the returned text
    stop_token_ids: list[int] = field(default_factory=list)  # extra stop ids, besides the model's eos
    ignore_eos: bool = False  # keep generating past eos (benchmarks)

    def resolve(self, defaults: dict) -> SamplingParams:
        """Fill the None fields from `defaults` (keys temperature, top_p, top_k) and check every value."""
        p = dataclasses.replace(self, stop=list(self.stop or []), stop_token_ids=list(self.stop_token_ids or []))
        for key, fallback in (("temperature", 1.0), ("top_p", 1.0), ("top_k", 0)):
            if getattr(p, key) is None:
                setattr(p, key, defaults.get(key, fallback))
        p.validate()
        return p

    def validate(self):
        def bad(name, why):
            raise ValueError(f"{name}: {why} (got {getattr(self, name)!r})")

        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            bad("max_tokens", "must be an integer >= 1")
        if self.temperature is not None and not 0 <= self.temperature <= 100:
            bad("temperature", "must be between 0 and 100")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            bad("top_k", "must be an integer >= 0 (0 = off)")
        if not 0 <= self.min_p <= 1:
            bad("min_p", "must be in [0, 1]")
        if not 0 < self.repetition_penalty <= 100:
            bad("repetition_penalty", "must be > 0 (1 = off)")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "must be non-empty strings")
        if any(not isinstance(i, int) or i < 0 for i in self.stop_token_ids):
            bad("stop_token_ids", "must be token ids (integers >= 0)")


def generation_defaults(generation_config: dict) -> dict:
    """Sampling defaults from a generation_config.json: its values where it sets them, else RECOMMENDED.
    A config with do_sample false means greedy."""
    out = dict(RECOMMENDED)
    if generation_config.get("do_sample") is False:
        return {"temperature": 0.0, "top_p": 1.0, "top_k": 0}
    for key in ("temperature", "top_p", "top_k"):
        if generation_config.get(key) is not None:
            out[key] = generation_config[key]
    return out


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """logits [b, V] float, seen [b, V] bool, penalty [b]: seen tokens' logits shrink towards (or below) zero."""
    p = penalty[:, None]
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalised, logits)


def filter_logits(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor,
                  min_p: torch.Tensor) -> torch.Tensor:
    """Temperature-scaled logits with the tokens outside top-k / top-p / min-p set to -inf. All args per row [b]."""
    logits = logits / temperature.clamp_min(1e-5)[:, None]
    V = logits.shape[-1]
    if bool((top_k > 0).any()) or bool((top_p < 1).any()):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        rank = torch.arange(V, device=logits.device)[None, :]
        k = torch.where(top_k > 0, top_k, V)[:, None]
        drop = rank >= k
        probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
        # drop a token once the mass before it already reaches top_p (the most likely token always stays)
        drop |= (probs.cumsum(-1) - probs) >= top_p[:, None]
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    if bool((min_p > 0).any()):
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p[:, None] * probs.max(-1, keepdim=True).values, float("-inf"))
    return logits


def sampling_scores(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
                    seen: torch.Tensor | None = None) -> torch.Tensor:
    """logits [b, V] -> scores [b, V] whose argmax is the next token: the logits themselves for greedy rows,
    p / E (exponential race) for sampled rows. Filtered-out tokens score -inf (sampled) or keep their logit (greedy)."""
    logits = logits.float()
    dev = logits.device
    if seen is not None and any(p.repetition_penalty != 1 for p in params):
        penalty = torch.tensor([p.repetition_penalty for p in params], device=dev)
        logits = apply_repetition_penalty(logits, seen, penalty)
    greedy = [p.temperature == 0 for p in params]
    if all(greedy):
        return logits
    t = torch.tensor([p.temperature or 1.0 for p in params], device=dev)
    top_p = torch.tensor([p.top_p for p in params], device=dev)
    top_k = torch.tensor([p.top_k for p in params], device=dev)
    min_p = torch.tensor([p.min_p for p in params], device=dev)
    probs = filter_logits(logits, t, top_p, top_k, min_p).softmax(-1)
    noise = torch.empty_like(probs).exponential_()
    for i, g in enumerate(generators):
        if g is not None and not greedy[i]:
            noise[i] = torch.empty(probs.shape[-1], device=dev).exponential_(generator=g)
    scores = probs / noise
    scores = scores.masked_fill(probs == 0, float("-inf"))
    if any(greedy):
        scores = torch.where(torch.tensor(greedy, device=dev)[:, None], logits, scores)
    return scores
