"""Simple autoregressive generation with a KV cache: one prompt, greedy or temperature / top-p / top-k sampling.

The batched, continuously-batched engine lives in smollm3.infer; this is the reference loop it is tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from smollm3.model import KVCache, SmolLM3ForCausalLM


def sample_next(logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int = 0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> token ids [B]. temperature 0 is greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token once the mass before it already reaches top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: SmolLM3ForCausalLM, prompt_ids: list[int], max_new_tokens: int = 128, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop_ids: Iterable[int] = (),
             on_token: Callable[[int], None] | None = None) -> list[int]:
    """Return the new token ids (a stop id, when hit, is included as the last one)."""
    if not prompt_ids:
        raise ValueError("the prompt is empty; give at least one token")
    max_pos = model.config.max_position_embeddings
    if len(prompt_ids) >= max_pos:
        raise ValueError(f"prompt has {len(prompt_ids)} tokens; the model's context is {max_pos}")
    max_new_tokens = min(max_new_tokens, max_pos - len(prompt_ids))
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    stop = set(stop_ids)
    cache = KVCache(model.config, 1, len(prompt_ids) + max_new_tokens, device, dtype)
    ids = torch.tensor([prompt_ids], device=device)
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(ids, cache=cache)[:, -1]
        nxt = sample_next(logits, temperature, top_p, top_k, generator)
        token = int(nxt[0])
        out.append(token)
        if on_token is not None:
            on_token(token)
        if token in stop:
            break
        ids = nxt[:, None]
    return out
