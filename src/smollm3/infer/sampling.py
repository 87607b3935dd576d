"""Sampling parameters and batched sampling: every row of a batch has its own temperature, top-p, top-k, min-p,
repetition / presence / frequency penalties, logit bias and (optionally) its own seeded generator.

Per token, in order: the penalties (repetition over prompt and output, presence and frequency over the output
so far), then the logit bias, then temperature and the top-k / top-p / min-p filters, then the draw. Logprobs
(`token_logprobs`) are those of the model's raw logits, before any of these (vLLM's default `raw_logprobs`): they
say what the model thinks, whatever the sampling settings.

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
    presence_penalty: float = 0.0  # OpenAI: logit -= presence * (count > 0), over the output tokens so far
    frequency_penalty: float = 0.0  # OpenAI: logit -= frequency * count, over the output tokens so far
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit (OpenAI: -100..100)
    logprobs: int | None = None  # None: none; k >= 0: each sampled token's logprob and the k most likely ones
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings; removed from the returned text
    stop_token_ids: list[int] = field(default_factory=list)  # extra stop ids, besides the model's eos
    ignore_eos: bool = False  # keep generating past eos (benchmarks)

    def resolve(self, defaults: dict) -> SamplingParams:
        """Fill the None fields from `defaults` (keys temperature, top_p, top_k) and check every value."""
        p = dataclasses.replace(self, stop=list(self.stop or []), stop_token_ids=list(self.stop_token_ids or []),
                                logit_bias=dict(self.logit_bias or {}))
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
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                bad(name, "must be between -2 and 2")
        if any(not isinstance(i, int) or i < 0 or not -100 <= b <= 100 for i, b in self.logit_bias.items()):
            bad("logit_bias", "must map token ids (integers >= 0) to biases between -100 and 100")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= 20):
            bad("logprobs", "must be None or an integer between 0 and 20")


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


def stop_token_ids(config, tokenizer, generation_config: dict) -> list[int]:
    """The ids that end a reply: generation_config.json's eos_token_id (one id or a list; SmolLM3's chat models list
    <|im_end|> there), else `config`'s (a ModelConfig), then the tokenizer's eos token; without repeats, in that
    order. `tokenizer` may be None."""
    eos = generation_config.get("eos_token_id", config.eos_token_id)
    ids = [*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id if tokenizer is not None else None]
    return list(dict.fromkeys(i for i in ids if i is not None))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """logits [b, V] float, seen [b, V] bool, penalty [b]: seen tokens' logits shrink towards (or below) zero."""
    p = penalty[:, None]
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalised, logits)


def needs_history(p: SamplingParams) -> bool:
    """Does sampling this request read the tokens seen so far (penalties)?"""
    return p.repetition_penalty != 1 or p.presence_penalty != 0 or p.frequency_penalty != 0


def plain_greedy(p: SamplingParams) -> bool:
    """Is the next token simply the argmax of the raw logits, with nothing else to compute? (The engine's fast
    paths take the argmax on the device and never see the logits.)"""
    return p.temperature == 0 and not needs_history(p) and not p.logit_bias and p.logprobs is None


def token_counts(ids: list[list[int]], vocab_size: int, device) -> torch.Tensor:
    """[b, V] float: how often each token occurs in each row's ids."""
    counts = torch.zeros(len(ids), vocab_size, device=device)
    for i, row in enumerate(ids):
        if row:
            counts[i].index_add_(0, torch.tensor(row, device=device), torch.ones(len(row), device=device))
    return counts


def apply_penalties(logits: torch.Tensor, params: list[SamplingParams], prompts: list[list[int]],
                    outputs: list[list[int]]) -> torch.Tensor:
    """The repetition penalty over prompt and output tokens, then OpenAI's presence and frequency penalties over
    the output tokens: logit -= presence * (count > 0) + frequency * count."""
    dev, V = logits.device, logits.shape[-1]
    rep = [i for i, p in enumerate(params) if p.repetition_penalty != 1]
    if rep:
        seen = token_counts([prompts[i] + outputs[i] for i in rep], V, dev) > 0
        rows = torch.tensor(rep, device=dev)
        penalty = torch.tensor([params[i].repetition_penalty for i in rep], device=dev)
        logits[rows] = apply_repetition_penalty(logits[rows], seen, penalty)
    pf = [i for i, p in enumerate(params) if p.presence_penalty != 0 or p.frequency_penalty != 0]
    if pf:
        counts = token_counts([outputs[i] for i in pf], V, dev)
        rows = torch.tensor(pf, device=dev)
        presence = torch.tensor([params[i].presence_penalty for i in pf], device=dev)[:, None]
        frequency = torch.tensor([params[i].frequency_penalty for i in pf], device=dev)[:, None]
        logits[rows] -= presence * (counts > 0) + frequency * counts
    return logits


def apply_logit_bias(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    for i, p in enumerate(params):
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), device=logits.device)
            logits[i, ids] += torch.tensor(list(p.logit_bias.values()), device=logits.device)
    return logits


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: list[int]) -> list[tuple[float, list]]:
    """Per row: (the chosen token's logprob, [(id, logprob)] of the `top[row]` most likely tokens, most likely
    first), from the raw logits [b, V]."""
    lp = logits.float().log_softmax(-1)
    rows = torch.arange(len(tokens), device=lp.device)
    chosen = lp[rows, torch.tensor(tokens, device=lp.device)].tolist()
    k = max(top, default=0)
    values, ids = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
    values, ids = values.tolist(), ids.tolist()
    return [(chosen[i], list(zip(ids[i][:top[i]], values[i][:top[i]]))) for i in range(len(tokens))]


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
                    prompts: list[list[int]] | None = None, outputs: list[list[int]] | None = None) -> torch.Tensor:
    """logits [b, V] -> scores [b, V] whose argmax is the next token: the (penalised, biased) logits for greedy
    rows, p / E (exponential race) for sampled rows. Filtered-out tokens score -inf (sampled) or keep their logit
    (greedy). `prompts` / `outputs` (each row's token ids so far) are needed when a row has a penalty."""
    logits = logits.float().clone()  # penalties and bias write in place; the caller's logits stay raw
    dev = logits.device
    if any(needs_history(p) for p in params):
        if prompts is None or outputs is None:
            raise ValueError("penalties need each row's prompt and output ids")
        logits = apply_penalties(logits, params, prompts, outputs)
    logits = apply_logit_bias(logits, params)
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
