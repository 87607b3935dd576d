"""train.fp8 (ops/fp8.py, ops/linear.py): e4m3 quantization with dynamic scales, FP8 forward and
input-gradient GEMMs, bf16 weight gradients added into fp32. Errors must stay within e4m3's precision, the weight
gradient must be exactly the bf16 path's, and only the decoder layers' projections may be quantized."""

import copy

import pytest
import torch

from smollm3 import build_model, preset
from smollm3.ops import fp8 as F8
from smollm3.ops.linear import accumulate_wgrad, linear, swiglu_linear
from smollm3.train.precision import GradAccumFusion
from smollm3.ops.swiglu import swiglu

E4M3_STEP = 2.0**-3  # relative spacing of e4m3 values (3 mantissa bits): rounding error at most half of it
E4M3_SUBNORMAL = 2.0**-9  # smallest e4m3 step (subnormals), in units of the scale


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("rowwise", [True, False])
def test_quantize_keeps_e4m3_precision_and_maps_the_maximum_to_448(rowwise):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(32, 256, generator=g) * torch.logspace(-3, 3, 32).unsqueeze(1)  # rows six decades apart
    q, scale = F8.quantize(t, rowwise)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == ((32, 1) if rowwise else ())
    back = q.float() * scale
    assert ((back - t).abs() <= E4M3_STEP / 2 * t.abs() + scale * E4M3_SUBNORMAL).all()
    peak = t.abs().amax(-1) if rowwise else t.abs().amax()
    torch.testing.assert_close((back.abs().amax(-1) if rowwise else back.abs().amax()), peak)
    assert q.float().abs().max() == F8.E4M3_MAX


def test_rowwise_scales_keep_rows_an_outlier_row_would_flush_to_zero():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(16, 64, generator=g)
    t[3] *= 1e6  # one token with huge activations
    rest = torch.arange(16) != 3
    for rowwise, bound in ((True, 0.03), (False, None)):
        q, scale = F8.quantize(t, rowwise)
        err = _rel((q.float() * scale)[rest], t[rest])
        if rowwise:
            assert err < bound
        else:  # one scale for all: the ordinary rows sit below e4m3's smallest step
            assert err > 0.5


FP8_GPU = pytest.mark.skipif(not (torch.cuda.is_available() and F8.supported(torch.device("cuda"))),
                             reason="needs an FP8 GPU (compute capability 8.9+)")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, FP8_GPU])])
@pytest.mark.parametrize("rowwise", [True, False])
def test_weight_copies_of_a_stack_are_the_stacked_weight_quantized_in_both_layouts(rowwise, device):
    """On CUDA the refresh is compiled: the same values."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, 32, generator=g).to(device) * s for n, s in ((64, 1.0), (16, 30.0), (16, 0.01)))
    copies = F8.weight_copies(96, 32, rowwise, device)
    F8.refresh(copies, [q, k, v])
    stacked = torch.cat([q, k, v])
    for got, got_scale, src in ((copies[0], copies[1], stacked), (copies[2], copies[3], stacked.t())):
        want, want_scale = F8.quantize(src, rowwise)
        assert torch.equal(got.float(), want.float())
        torch.testing.assert_close(got_scale, want_scale.reshape(got_scale.shape))


def _fp8_linear(rowwise, g):
    x = torch.randn(64, 96, generator=g).bfloat16().requires_grad_()
    w = torch.randn(48, 96, generator=g).bfloat16() / 10
    copies = F8.weight_copies(48, 96, rowwise, "cpu")
    F8.refresh(copies, [w.float()])
    grad = torch.zeros(48, 96)
    return x, w, copies, grad


@pytest.mark.parametrize("rowwise", [True, False])
def test_fp8_linear_is_within_fp8_error_and_its_weight_gradient_is_the_bf16_one(rowwise):
    g = torch.Generator().manual_seed(0)
    x, w, copies, grad = _fp8_linear(rowwise, g)
    y = linear(x, None, grad, copies)
    dy = torch.randn(y.shape, generator=g).bfloat16()
    y.backward(dy)
    exact_y = x.detach().double() @ w.double().T
    exact_dx = dy.double() @ w.double()
    # two e4m3 operands: each product carries up to ~2 x 3% rounding; over a 96-long dot product it averages out
    assert _rel(y, exact_y) < 0.05 and _rel(x.grad, exact_dx) < 0.05
    assert _rel(y, exact_y) > 1e-3  # it did run in FP8: bf16 alone is ~10x closer
    want = torch.zeros(48, 96)
    accumulate_wgrad(want, dy, x.detach())
    assert torch.equal(grad, want)


def test_fp8_swiglu_equals_the_fp8_linear_then_swiglu():
    """The gate/up GEMM with SwiGLU in one Function (its backward quantizes SwiGLU's gradient itself) gives what
    the FP8 linear followed by SwiGLU gives: output, input gradient and the fp32 weight gradient, bit for bit."""
    g = torch.Generator().manual_seed(0)
    x, w, copies, grad = _fp8_linear(True, g)
    dh = torch.randn(64, 24, generator=g).bfloat16()
    x2, grad2 = x.detach().clone().requires_grad_(), grad.clone()
    h = swiglu_linear(x, None, grad, copies)
    h.backward(dh)
    want = swiglu(linear(x2, None, grad2, copies))
    want.backward(dh)
    assert torch.equal(h, want) and torch.equal(x.grad, x2.grad) and torch.equal(grad, grad2)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("recipe", F8.RECIPES)
def test_fp8_model_quantizes_only_the_decoder_projections_and_stays_near_bf16(recipe):
    torch.manual_seed(0)
    base = build_model(preset("tiny"), dtype=torch.float32)
    with torch.no_grad():  # RMSNorm gains away from 1: they fold into the quantized q/k/v and gate/up weights
        for name, p in base.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, base.config.vocab_size, (2, 64), generator=g)
    pos, labels = torch.arange(64).repeat(2, 1), torch.roll(ids, -1, 1)
    runs = {}
    for mode in (None, recipe):
        model = copy.deepcopy(base)
        fusion = GradAccumFusion(model, fp8=mode)
        fusion.begin_step()
        loss = model(ids, pos, labels=labels).mean()
        loss.backward()
        fusion.end_step()
        runs[mode] = loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()]), fusion, model
    (bf16_loss, bf16_grads, _, _), (loss, grads, fusion, model) = runs[None], runs[recipe]
    # per layer: the q/k/v stack, o_proj, the gate/up stack, down_proj; not the LM head nor the embedding
    layer = model.model.layers[0]
    assert {id(m) for m in fusion.fp8_modules[:4]} == {id(layer.self_attn), id(layer.self_attn.o_proj),
                                                       id(layer.mlp), id(layer.mlp.down_proj)}
    assert len(fusion.fp8_modules) == 4 * len(model.model.layers) and model.lm_head.fp8 is None
    assert layer.mlp.stacked_weight is None and layer.self_attn.o_proj.compute_weight is None  # no bf16 copies
    assert loss == pytest.approx(bf16_loss, rel=1e-3)
    assert 1e-3 < _rel(grads, bf16_grads) < 0.06


def test_unknown_fp8_recipe_is_refused():
    with pytest.raises(ValueError, match="use one of rowwise, tensorwise or null"):
        GradAccumFusion(build_model(preset("tiny")), fp8="e5m2")


@pytest.mark.gpu
@FP8_GPU
@pytest.mark.parametrize("recipe", F8.RECIPES)
def test_compiled_fp8_layers_share_one_graph_and_match_eager(recipe):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    cfg = preset("tiny")
    base = build_model(cfg, device="cuda", dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (2, 256), generator=g).cuda()
    pos, labels = torch.arange(256, device="cuda").repeat(2, 1), torch.roll(ids, -1, 1)
    grads = []
    for compiled in (False, True):
        model = copy.deepcopy(base)
        GradAccumFusion(model, fp8=recipe).begin_step()  # its weight refresh is compiled too, once per projection kind
        refresh_graphs = counters["stats"]["unique_graphs"]
        if compiled:
            for layer in model.model.layers:
                layer.compile(dynamic=False)
        model(ids, pos, labels=labels).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert sum(counters["graph_break"].values()) == 0
    assert refresh_graphs <= 4  # q/k/v stack, o_proj, gate/up stack, down_proj: not one per layer
    assert counters["stats"]["unique_graphs"] - refresh_graphs <= 2  # RoPE and NoPE layers: not one per layer
    assert _rel(grads[1], grads[0]) < 0.02
