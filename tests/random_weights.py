"""Weights for tests that compare logits or greedy choices: larger than the initialisation, so greedy decoding has
clear winners (init-scale weights give near-uniform logits, where rounding alone could flip an argmax) and a wrong
mask, position or cache slot moves the logits far past rounding."""

import torch


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
