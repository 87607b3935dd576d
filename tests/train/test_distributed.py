"""Activation checkpointing as the trainer applies it (train.distributed.apply_activation_checkpointing): full and
selective (attention's output kept) give the gradients of no checkpointing, and selective runs attention's kernel
once per layer where full runs it twice."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from smollm3 import build_model, preset
from smollm3.train import distributed as D
from smollm3.train.config import ConfigError, load_train_config


class _CountAttention(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in D._attention_ops():
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", [False, True, "selective"])
def test_checkpointing_keeps_gradients_and_selective_skips_attention_recompute(mode):
    torch.manual_seed(0)
    reference = build_model(preset("tiny"), dtype=torch.float32)
    model = copy.deepcopy(reference)
    if mode:
        D.apply_activation_checkpointing(model, keep_attention=mode == "selective")
    ids = torch.randint(0, reference.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    labels = torch.roll(ids, -1, 1)
    reference(ids, labels=labels).mean().backward()
    with _CountAttention() as counted:
        model(ids, labels=labels).mean().backward()
    layers = reference.config.num_hidden_layers
    assert counted.calls == (2 * layers if mode is True else layers)  # the fused SDPA kernel on the CPU
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointing_refuses_an_unknown_mode(tmp_path):
    (tmp_path / "c.yaml").write_text("model: {preset: tiny}\ntrain: {activation_checkpointing: partial}\n")
    with pytest.raises(ConfigError, match="activation_checkpointing is 'partial'; use true, false or selective"):
        load_train_config(tmp_path / "c.yaml")
