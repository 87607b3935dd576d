"""GradAccumFusion (train/precision.py): bf16 weight copies, fp32 gradients added inside the GEMMs. Its gradients
must be as close to fp32 as autocast's are, accumulate over micro-batches, follow the parameters after each
optimizer step, and compile without graph breaks (GPU)."""

import copy
import dataclasses

import pytest
import torch

import smollm3.model
from smollm3 import build_model, preset
from smollm3.ops.attention import qkv_attention
from smollm3.ops.linear import accumulate_wgrad
from smollm3.ops.settings import OpSettings
from smollm3.train.precision import GradAccumFusion


def _micro_batches(vocab: int, device, n=3):
    g = torch.Generator().manual_seed(0)
    pos = torch.cat([torch.arange(40), torch.arange(24), torch.arange(64)]).view(2, 64).to(device)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (2, 64), generator=g).to(device)
        out.append((ids, pos, torch.roll(ids, -1, 1)))
    return out


def _grads(model, batches, device, amp: bool, fusion=None):
    for ids, pos, labels in batches:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            model(ids, pos, labels=labels).sum().backward()
    if fusion is not None:
        fusion.end_step()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _three_ways(device, compile_fused=False, config=None, settings=None):
    torch.manual_seed(0)
    fp32 = build_model(config or preset("tiny"), device=device, dtype=torch.float32, settings=settings)
    with torch.no_grad():  # gains away from 1, so that folding them into the projections is tested
        for name, p in fp32.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    amp, fused = copy.deepcopy(fp32), copy.deepcopy(fp32)
    fusion = GradAccumFusion(fused)
    if compile_fused:
        for layer in fused.model.layers:
            layer.compile(dynamic=False)
    fusion.begin_step()
    batches = _micro_batches(fp32.config.vocab_size, device)
    return (_grads(fp32, batches, device, amp=False), _grads(amp, batches, device, amp=True),
            _grads(fused, batches, device, amp=True, fusion=fusion), fused, fusion)


@pytest.mark.parametrize("stack", [True, False])
def test_fused_gradients_are_as_close_to_fp32_as_autocast_and_accumulate(stack):
    exact, amp, fused, model, fusion = _three_ways("cpu", settings=OpSettings(stack_projections=stack))
    assert bool(fusion.stacks) == stack and bool(fusion.folds) == stack
    assert _rel(amp, exact) < 0.05
    assert _rel(fused, exact) < 2 * _rel(amp, exact) + 1e-3
    # every parameter got its gradient (the tied head/embedding once, the norms, every projection), in fp32
    assert all(p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0 for p in model.parameters())


def test_folded_gains_and_their_projections_get_their_exact_gradients():
    """The RMSNorm gains live in the q/k/v and gate/up copies; end_step must give both their gradients exactly. With
    fp32 copies the fused model is the fp32 model up to summation order, parameter by parameter (in bf16 a wrong
    gain would hide in the rounding)."""
    torch.manual_seed(0)
    exact = build_model(preset("tiny"), dtype=torch.float32)
    with torch.no_grad():
        for name, p in exact.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model = copy.deepcopy(exact)
    fusion = GradAccumFusion(model, dtype=torch.float32)
    assert len(fusion.folds) == 2 * len(model.model.layers) and all(norm.folded for norm, _ in fusion.folds)
    fusion.begin_step()
    batches = _micro_batches(exact.config.vocab_size, "cpu")
    _grads(exact, batches, "cpu", amp=False)
    _grads(model, batches, "cpu", amp=False, fusion=fusion)
    for (name, want), got in zip(exact.named_parameters(), model.parameters()):
        assert _rel(got.grad, want.grad) < 1e-5, name
    before = [p.grad.clone() for p in model.parameters()]
    fusion.end_step()  # once a step: a second call changes nothing
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))


def test_copies_follow_the_parameters_after_each_step():
    torch.manual_seed(0)
    model = build_model(preset("tiny"), dtype=torch.float32)
    fusion = GradAccumFusion(model)
    ids, pos, labels = _micro_batches(model.config.vocab_size, "cpu", 1)[0]
    fusion.begin_step()
    grads = [p.grad for p in model.parameters()]
    before = model(ids, pos, labels=labels).sum().item()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    assert model(ids, pos, labels=labels).sum().item() == before  # copies are per step, not per call
    fusion.begin_step()
    assert model(ids, pos, labels=labels).sum().item() != before
    assert all(a is b for a, b in zip(grads, (p.grad for p in model.parameters())))  # the same buffers
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp  # one GEMM for q/k/v, one for gate/up
    assert attn.k_proj.weight.grad._base is attn.stacked_grad and mlp.up_proj.weight.grad._base is mlp.stacked_grad


def test_accumulate_wgrad_adds_in_fp32():
    g = torch.Generator().manual_seed(0)
    dy, x = torch.randn(64, 8, generator=g).bfloat16(), torch.randn(64, 16, generator=g).bfloat16()
    grad = torch.ones(8, 16)
    accumulate_wgrad(grad, dy, x)
    torch.testing.assert_close(grad, 1 + dy.double().T.mm(x.double()).float(), rtol=1e-6, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_accumulate_wgrad_is_one_fp32_gemm():
    g = torch.Generator().manual_seed(0)
    dy = torch.randn(4096, 512, generator=g).bfloat16().cuda()
    x = torch.randn(4096, 256, generator=g).bfloat16().cuda()
    grad = torch.randn(512, 256, generator=g).cuda()
    want = grad.double() + dy.double().T.mm(x.double())
    accumulate_wgrad(grad, dy, x)
    torch.testing.assert_close(grad.double(), want, rtol=1e-5, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_fused_layers_match_without_graph_breaks():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    exact, amp, fused, _, _ = _three_ways("cuda", compile_fused=True)
    assert sum(counters["graph_break"].values()) == 0
    assert _rel(fused, exact) < 2 * _rel(amp, exact) + 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile_fused", [False, True])
def test_fused_attention_on_the_qkv_kernels_matches(compile_fused, monkeypatch):
    """With head_dim 64 the varlen Triton kernels take the stacked q/k/v output whole, RoPE inside
    (ops.attention.qkv_attention); the gradients stay as close to fp32 as autocast's, NoPE layers included."""
    from torch._dynamo.utils import counters

    calls = []
    monkeypatch.setattr(smollm3.model, "qkv_attention", lambda *a: calls.append(1) or qkv_attention(*a))
    torch._dynamo.reset()
    counters.clear()
    config = dataclasses.replace(preset("tiny"), hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                                 head_dim=64)
    exact, amp, fused, model, _ = _three_ways("cuda", compile_fused=compile_fused, config=config)
    assert calls and not all(model.config.rope_layers)
    assert sum(counters["graph_break"].values()) == 0
    assert _rel(fused, exact) < 2 * _rel(amp, exact) + 1e-3


def test_frozen_weights_are_refused_and_leave_the_model_as_it_was():
    model = build_model(preset("tiny"), dtype=torch.float32)
    model.model.norm.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="grad_accum_fusion: false"):
        GradAccumFusion(model)
    assert all(getattr(m, "weight_grad", None) is None and not getattr(m, "folded", False) for m in model.modules())
