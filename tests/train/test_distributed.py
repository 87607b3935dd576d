"""Activation checkpointing as the trainer applies it (train.distributed.apply_activation_checkpointing): full and
selective (attention's output kept) give the gradients of no checkpointing, and selective runs attention's kernel
once per layer where full runs it twice; layers that also keep their matmul outputs recompute no matmul."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from smollm3 import build_model, preset
from smollm3.train import distributed as D
from smollm3.train.config import ConfigError, load_train_config


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.attention = self.matmuls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.attention += func in D._attention_ops()
        self.matmuls += func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
        return func(*args, **(kwargs or {}))


def _step(model, ids) -> _Count:
    with _Count() as counted:
        model(ids, labels=torch.roll(ids, -1, 1)).mean().backward()
    return counted


@pytest.mark.parametrize("mode,keep_matmuls", [(False, 0), (True, 0), ("selective", 0), ("selective", 1),
                                               ("selective", 4)])
def test_checkpointing_keeps_gradients_and_selective_skips_attention_recompute(mode, keep_matmuls):
    torch.manual_seed(0)
    reference = build_model(preset("tiny"), dtype=torch.float32)
    model, full = copy.deepcopy(reference), copy.deepcopy(reference)
    if mode:
        D.apply_activation_checkpointing(model, keep_attention=mode == "selective", keep_matmuls_layers=keep_matmuls)
    D.apply_activation_checkpointing(full)
    ids = torch.randint(0, reference.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    plain, counted, recomputed = _step(reference, ids), _step(model, ids), _step(full, ids)
    layers = reference.config.num_hidden_layers
    assert counted.attention == (2 * layers if mode is True else layers)  # the fused SDPA kernel on the CPU
    # the matmuls recomputed: every layer's (full, selective), none on the layers keeping their outputs
    per_layer = (recomputed.matmuls - plain.matmuls) // layers
    assert per_layer > 0
    assert counted.matmuls - plain.matmuls == (per_layer * (layers - keep_matmuls) if mode else 0)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_keeping_matmuls_needs_selective_checkpointing(tmp_path):
    (tmp_path / "c.yaml").write_text("model: {preset: tiny}\ntrain: {activation_checkpointing: true, "
                                     "keep_matmuls_layers: 2}\n")
    with pytest.raises(ConfigError, match="keep_matmuls_layers is 2: it applies to train.activation_checkpointing: "
                                          "selective"):
        load_train_config(tmp_path / "c.yaml")


def test_checkpointing_refuses_an_unknown_mode(tmp_path):
    (tmp_path / "c.yaml").write_text("model: {preset: tiny}\ntrain: {activation_checkpointing: partial}\n")
    with pytest.raises(ConfigError, match="activation_checkpointing is 'partial'; use true, false or selective"):
        load_train_config(tmp_path / "c.yaml")
