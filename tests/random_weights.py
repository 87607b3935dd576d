"""Weights for tests that compare logits or greedy choices: larger than the initialisation, so greedy decoding has
clear winners (init-scale weights give near-uniform logits, where rounding alone could flip an argmax) and a wrong
mask, position or cache slot moves the logits far past rounding. save_tiny writes the tiny preset in such weights as
a checkpoint directory, for the tests that load one."""

from pathlib import Path

import torch

# the tiny preset widened to 8 heads of 64: the fused decode kernels need head_dim >= 32; intermediate 704 is no
# multiple of any tile width (masked K loads)
WIDE = dict(hidden_size=256, intermediate_size=704, head_dim=64, num_attention_heads=8)


def randomise_(model, seed: int = 0, scale: float = 0.1) -> torch.Generator:
    """Norm gains 1 + 0.2 N(0, 1), every other weight scale * N(0, 1), in place, from a generator seeded with `seed`;
    -> that generator, for drawing the test's inputs from the same stream."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return g


def tiny_config(**fields):
    """The tiny preset's config with `fields` changed, built (and checked) as the preset is."""
    from smollm3.config import PRESETS, ModelConfig

    return ModelConfig(**{**PRESETS["tiny"], **fields})


def save_tiny(tokenizer_dir: Path, out: Path, **sizes) -> Path:
    """The tiny preset, with `sizes` changed and vocabulary and special ids taken from the tokenizer at tokenizer_dir,
    in randomise_'s weights, saved with that tokenizer to `out`."""
    from smollm3 import build_model, load_tokenizer, save_pretrained

    tok = load_tokenizer(tokenizer_dir)
    cfg = tiny_config(**sizes, vocab_size=tok.vocab_size, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = build_model(cfg)
    randomise_(model)
    save_pretrained(model, out, tokenizer=tok)
    return out
