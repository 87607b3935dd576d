import pytest
import torch
import torch.nn.functional as F

from smollm3.ops import fp8 as F8
from smollm3.ops.swiglu import swiglu, swiglu_backward_fp8, swiglu_backward_reference, triton


def _autograd(gate_up, dh):
    x = gate_up.detach().clone().requires_grad_()
    gate, up = x.chunk(2, dim=-1)
    (F.silu(gate) * up).backward(dh)
    return x.grad


def test_swiglu_matches_autograd_in_float64():
    g = torch.Generator().manual_seed(0)
    gate_up = torch.randn(3, 5, 2 * 7, dtype=torch.float64, generator=g) * 3
    dh = torch.randn(3, 5, 7, dtype=torch.float64, generator=g)
    x = gate_up.clone().requires_grad_()
    out = swiglu(x)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(out, F.silu(gate) * up)
    out.backward(dh)
    torch.testing.assert_close(x.grad, _autograd(gate_up, dh), rtol=1e-12, atol=1e-12)


def test_swiglu_backward_in_bf16_rounds_once():
    """bf16 in and out, fp32 inside: within one bf16 rounding of the float64 gradient."""
    g = torch.Generator().manual_seed(1)
    gate_up = (torch.randn(64, 2 * 96, generator=g) * 4).bfloat16()
    dh = torch.randn(64, 96, generator=g).bfloat16()
    got = swiglu_backward_reference(gate_up, dh).double()
    want = _autograd(gate_up.double(), dh.double())
    assert ((got - want).abs() <= want.abs() * 2**-8 + 1e-6).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or triton is None, reason="needs CUDA and Triton")
@pytest.mark.parametrize("cols", [11008, 1000])  # the 3B preset's width, and one the column blocks do not divide
def test_triton_backward_equals_the_reference(cols):
    g = torch.Generator(device="cuda").manual_seed(0)
    gate_up = (torch.randn(333, 2 * cols, device="cuda", generator=g) * 4).bfloat16()
    dh = torch.randn(333, cols, device="cuda", generator=g).bfloat16()
    x = gate_up.clone().requires_grad_()
    swiglu(x).backward(dh)
    want = swiglu_backward_reference(gate_up, dh)
    # same fp32 maths; sigmoid's implementation may differ in the last fp32 bit, which can move a bf16 rounding
    assert ((x.grad.float() - want.float()).abs() <= want.float().abs() * 2**-7 + 1e-6).all()
    compiled = torch.compile(lambda t: swiglu(t).sum(), fullgraph=True)
    y = gate_up.clone().requires_grad_()
    compiled(y).backward()
    torch.testing.assert_close(y.grad, swiglu_backward_reference(gate_up, torch.ones_like(dh)), rtol=2**-7, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or triton is None, reason="needs CUDA and Triton")
def test_triton_fp8_backward_quantizes_its_own_gradient_as_fp8_quantize_does():
    """The FP8 variant: the bf16 gradient as above, and its e4m3 values and row scales equal to `fp8.quantize` of
    that very gradient (a row with an outlier included, and one of zeros)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    gate_up = (torch.randn(257, 2 * 11008, device="cuda", generator=g) * 4).bfloat16()
    dh = torch.randn(257, 11008, device="cuda", generator=g).bfloat16()
    dh[3, 5] = 3e4
    dh[7] = 0
    grad, q, scale = swiglu_backward_fp8(gate_up, dh)
    want = swiglu_backward_reference(gate_up, dh)
    assert ((grad.float() - want.float()).abs() <= want.float().abs() * 2**-7 + 1e-6).all()
    want_q, want_scale = F8.quantize(grad, rowwise=True)
    torch.testing.assert_close(scale, want_scale, rtol=1e-6, atol=0)
    assert (q.float() == want_q.float()).float().mean() > 0.999  # a division's last bit may move a rounding
    assert ((q.float() - want_q.float()).abs() <= want_q.float().abs() * 2**-3 + 2**-9).all()
