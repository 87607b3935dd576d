"""The token cross-entropy op (ops/cross_entropy.py): hand-computed values, chunked == plain (values and gradients,
with d logits kept or recomputed), float64 gradchecks, and the GPU kernel (ops/ce_kernel.py) against the eager maths."""

import functools
import math

import pytest
import torch

from smollm3.ops import cross_entropy as CE
from smollm3.ops.cross_entropy import chunked_cross_entropy, cross_entropy


def _lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


# ------------------------------------------------------------------------------------------------------------------
# cross-entropy


def test_cross_entropy_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.5, -1.0, 0.0], [2.0, 2.0, 2.0]]])
    labels = torch.tensor([[2, -100, 0]])
    first, third = _lse([1, 2, 3]) - 3.0, _lse([2, 2, 2]) - 2.0
    assert cross_entropy(logits, labels, reduction="sum").item() == pytest.approx(first + third, rel=1e-6)
    assert cross_entropy(logits, labels).item() == pytest.approx((first + third) / 2, rel=1e-6)
    per_token = cross_entropy(logits, labels, reduction="none")
    assert per_token.shape == (1, 3) and per_token[0, 1] == 0
    assert per_token[0, 0].item() == pytest.approx(first, rel=1e-6)
    # bf16 logits are reduced in fp32
    assert cross_entropy(logits.bfloat16(), labels).dtype == torch.float32


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = cross_entropy(logits, torch.full((2, 3), -100))
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(logits.grad) == 0


def _head_problem(seed=0, B=2, T=29, D=24, V=61, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g, dtype=dtype)
    weight = (torch.randn(V, D, generator=g) * 0.2).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :6] = -100  # a masked prompt
    labels[1, -3:] = -100  # padding
    return hidden.requires_grad_(), weight.requires_grad_(), labels


@pytest.fixture(params=["stored", "recomputed"])
def chunked_ce(request):
    """The backward either uses d nll / d logits kept from the forward or recomputes the logits (too big to keep)."""
    if request.param == "recomputed":
        return functools.partial(chunked_cross_entropy, stored_dlogits_bytes=0)
    return chunked_cross_entropy


@pytest.mark.parametrize("reduction,chunk", [("mean", 7), ("sum", 7), ("none", 7), ("none", 1), ("none", 4096)])
def test_chunked_cross_entropy_matches_plain_values_and_grads(reduction, chunk, chunked_ce):
    hidden, weight, labels = _head_problem()
    plain = cross_entropy(hidden @ weight.T, labels, reduction=reduction)
    upstream = torch.randn_like(plain)  # a non-uniform upstream gradient exercises the per-token backward
    grads_plain = torch.autograd.grad((plain * upstream).sum(), (hidden, weight))
    chunked = chunked_ce(hidden, weight, labels, chunk=chunk, reduction=reduction)
    grads_chunked = torch.autograd.grad((chunked * upstream).sum(), (hidden, weight))
    torch.testing.assert_close(chunked, plain, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads_chunked, grads_plain):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert torch.count_nonzero(grads_chunked[0][0, :6]) == 0  # ignored rows get no gradient


def test_chunked_cross_entropy_takes_the_counted_positions_from_the_caller():
    """The trainer finds the positions whose label counts on the CPU (no GPU sync); the result is the same."""
    hidden, weight, labels = _head_problem()
    index = (labels.reshape(-1) != -100).nonzero().squeeze(1)
    for reduction in ("none", "mean", "sum"):
        found = chunked_cross_entropy(hidden, weight, labels, chunk=7, reduction=reduction)
        given = chunked_cross_entropy(hidden, weight, labels, chunk=7, reduction=reduction, label_index=index)
        assert torch.equal(found, given)
    assert chunked_cross_entropy(hidden, weight, labels, reduction="mean", label_index=index[:0]) == 0


def test_ignored_positions_in_the_label_index_count_nothing(chunked_ce):
    """CUDA-graphed micro-batches pad the counted positions with ignored ones to a fixed count (train/graphs.py):
    the loss, its mean and both gradients are those of the unpadded index."""
    hidden, weight, labels = _head_problem()
    flat = labels.reshape(-1)
    index = (flat != -100).nonzero().squeeze(1)
    padded = torch.cat([index, (flat == -100).nonzero().squeeze(1)[:4]])
    upstream = torch.randn(labels.shape)
    for reduction in ("none", "mean", "sum"):
        out = [chunked_ce(hidden, weight, labels, chunk=7, reduction=reduction, label_index=i)
               for i in (index, padded)]
        grads = [torch.autograd.grad((o * (upstream if reduction == "none" else 1)).sum(), (hidden, weight))
                 for o in out]
        torch.testing.assert_close(out[1], out[0], atol=0, rtol=0)
        for a, b in zip(grads[1], grads[0]):
            torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


def test_chunked_cross_entropy_gradcheck_float64(chunked_ce):
    hidden, weight, labels = _head_problem(B=2, T=7, D=5, V=11, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda h, w: chunked_ce(h, w, labels, chunk=2, reduction="none"), (hidden, weight))


def test_chunked_cross_entropy_bf16_matches_plain_bf16_head(chunked_ce):
    hidden, weight, labels = _head_problem()
    h, w = hidden.detach().bfloat16(), weight.detach().bfloat16()
    plain = cross_entropy(h @ w.T, labels)
    chunked = chunked_ce(h.requires_grad_(), w.requires_grad_(), labels, chunk=5)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-5)
    chunked.backward()
    assert h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    h32, w32 = hidden.detach().bfloat16().float().requires_grad_(), weight.detach().bfloat16().float().requires_grad_()
    cross_entropy(h32 @ w32.T, labels).backward()  # the same maths in fp32: bf16 rounding apart, the same gradients
    assert ((h.grad.float() - h32.grad).norm() / h32.grad.norm()) < 2e-2
    assert ((w.grad.float() - w32.grad).norm() / w32.grad.norm()) < 2e-2


def test_chunked_cross_entropy_keeps_no_gradient_state_without_grad(monkeypatch):
    kept = []
    monkeypatch.setattr(CE._ChunkedNLL, "apply", lambda *a: kept.append(a[-1]) or torch.zeros(a[2].shape[0]))
    hidden, weight, labels = _head_problem()
    chunked_cross_entropy(hidden, weight, labels)
    with torch.no_grad():
        chunked_cross_entropy(hidden, weight, labels)
    assert kept == [True, False]


def test_chunked_cross_entropy_all_ignored_and_bad_shapes():
    hidden, weight, _ = _head_problem()
    loss = chunked_cross_entropy(hidden, weight, torch.full(hidden.shape[:-1], -100))
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(weight.grad) == 0
    with pytest.raises(ValueError, match=r"weight \(24, 61\) must be \[vocab, 24\]"):
        chunked_cross_entropy(hidden, weight.detach().T, torch.zeros(hidden.shape[:-1], dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have"):
        chunked_cross_entropy(hidden, weight, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction 'avg' is not one of mean, sum, none"):
        cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), reduction="avg")


@pytest.mark.parametrize("vocab", [61, 4096, 128_256 + 7])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ce_kernel_matches_the_eager_maths(vocab, dtype):
    from smollm3.ops import ce_kernel

    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(37, vocab, device="cuda", generator=g) * 4).to(dtype)
    targets = torch.randint(0, vocab, (37,), device="cuda", generator=g)
    grad = torch.randn(37, device="cuda", generator=g)
    lse, nll = torch.empty(37, device="cuda"), torch.empty(37, device="cuda")
    dlogits = torch.empty_like(logits)
    ce_kernel.lse_nll(logits, targets, lse, nll, dlogits)
    want_lse, want_nll = CE._lse_nll(logits, targets)
    torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll, want_nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dlogits, CE._dlogits(logits, want_lse, targets))
    torch.testing.assert_close(ce_kernel.dlogits(logits, lse, targets, grad),
                               CE._dlogits(logits, want_lse, targets, grad))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chunked_cross_entropy_on_the_gpu_matches_plain(chunked_ce):
    hidden, weight, labels = _head_problem(V=300)
    hidden, weight = (t.detach().cuda().requires_grad_() for t in (hidden, weight))
    labels = labels.cuda()
    plain = cross_entropy(hidden @ weight.T, labels, reduction="none")
    upstream = torch.randn_like(plain)
    want = torch.autograd.grad((plain * upstream).sum(), (hidden, weight))
    chunked = chunked_ce(hidden, weight, labels, chunk=7, reduction="none")
    got = torch.autograd.grad((chunked * upstream).sum(), (hidden, weight))
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chunked_cross_entropy_under_autocast_matches_plain(chunked_ce):
    """The autocast path (fp32 weight, bf16 GEMMs; compiled + checkpointed or FSDP2 runs): the recomputing backward
    adds each chunk's weight gradient into an fp32 buffer inside its GEMM (ops/linear.accumulate_wgrad)."""
    hidden, weight, labels = _head_problem(T=301, D=64, V=4096)
    hidden, weight = (t.detach().cuda().requires_grad_() for t in (hidden, weight))
    labels = labels.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        chunked = chunked_ce(hidden, weight, labels, chunk=64)
    chunked.backward()
    h32, w32 = (t.detach().bfloat16().float().requires_grad_() for t in (hidden, weight))
    cross_entropy(h32 @ w32.T, labels).backward()  # the same maths in fp32 from the bf16-rounded operands
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    for got, want in ((hidden.grad, h32.grad), (weight.grad, w32.grad)):
        assert ((got - want).norm() / want.norm()) < 1e-2
