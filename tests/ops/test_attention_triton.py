import json
import os
import subprocess
import sys

import pytest
import torch

from smollm3.ops import attention_triton as AT
from smollm3.ops.attention import DocumentMask, _varlen_call, apply_rotary_pos_emb, qkv_attention

on_gpu = pytest.mark.skipif(not torch.cuda.is_available() or AT.triton is None, reason="needs CUDA and Triton")


def _inputs(lengths, heads, kv_heads, d, seed):
    """Strided q, k, v views of one stacked tensor (as the model's fused projection gives), offsets as DocumentMask
    pads them, and an output gradient."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    total = sum(lengths)
    qkv = torch.randn(total, heads + 2 * kv_heads, d, device="cuda", dtype=torch.bfloat16, generator=g)
    q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=1)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    cu = DocumentMask.from_position_ids(positions).cu_seqlens.cuda()
    dout = torch.randn(total, heads, d, device="cuda", dtype=torch.bfloat16, generator=g)
    return q, k, v, cu, dout


def _reference(q, k, v, lengths, dout):
    """fp32 attention per document, causal, K/V heads repeated: (out, lse, dq, dk, dv)."""
    q, k, v = (x.detach().float().requires_grad_() for x in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    outs, lses, start = [], [], 0
    for n in lengths:
        qs, ks, vs = (x[start:start + n].transpose(0, 1) for x in (q, k, v))
        ks, vs = ks.repeat_interleave(rep, 0), vs.repeat_interleave(rep, 0)
        scores = (qs @ ks.transpose(1, 2)) * q.shape[-1] ** -0.5
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool, device="cuda").triu(1), float("-inf"))
        lses.append(scores.logsumexp(-1))
        outs.append((scores.softmax(-1) @ vs).transpose(0, 1))
        start += n
    out = torch.cat(outs)
    out.backward(dout.float())
    return out.detach(), torch.cat(lses, dim=1).detach(), q.grad, k.grad, v.grad


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("lengths,heads,kv_heads,d", [
    ([1, 77, 1000, 300, 1, 2555], 16, 4, 128),  # a total no block divides, one-token documents
    ([4096], 16, 4, 128),                        # one causal document
    ([130, 64, 63, 700], 8, 2, 64),
    ([500, 12], 4, 4, 128),                      # no grouping
])
def test_kernels_equal_fp32_attention_per_document(lengths, heads, kv_heads, d):
    q, k, v, cu, dout = _inputs(lengths, heads, kv_heads, d, seed=len(lengths))
    out, lse = AT.forward(q, k, v, cu, d ** -0.5)
    dq, dk, dv = AT.backward(dout, q, k, v, out, lse, cu, d ** -0.5)
    ref = _reference(q, k, v, lengths, dout)
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, dq, dk, dv), ref):
        assert torch.isfinite(got).all(), name
        assert _rel(got, want) < 1e-2, (name, _rel(got, want))


@pytest.mark.gpu
@on_gpu
def test_kernels_are_as_close_to_fp32_as_torch_flash_attention():
    """The same inputs through torch's FA2 varlen: our error against the fp32 reference is no larger than ~FA2's, and
    the log-sum-exp has FA2's layout and values."""
    if not hasattr(torch.ops.aten, "_flash_attention_forward"):
        pytest.skip("no FA2 in this torch build")
    lengths = [313, 1, 2000, 900, 882]
    q, k, v, cu, dout = _inputs(lengths, 16, 4, 128, seed=7)
    scale, bound = 128 ** -0.5, max(lengths)
    fa_out, fa_lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, bound, bound, 0.0, True,
                                                                             False, scale=scale)
    fa_grads = torch.ops.aten._flash_attention_backward(dout, q, k, v, fa_out, fa_lse, cu, cu, bound, bound, 0.0,
                                                        True, rng, unused, scale=scale)
    out, lse = AT.forward(q, k, v, cu, scale)
    grads = AT.backward(dout, q, k, v, out, lse, cu, scale)
    ref = _reference(q, k, v, lengths, dout)
    assert lse.shape == fa_lse.shape and _rel(lse, fa_lse) < 1e-5
    for name, ours, theirs, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (fa_out, *fa_grads),
                                        (ref[0], *ref[2:])):
        assert _rel(ours, want) <= 1.5 * _rel(theirs, want) + 1e-3, (name, _rel(ours, want), _rel(theirs, want))


@pytest.mark.gpu
@on_gpu
def test_compiled_model_path_equals_eager():
    """The varlen call as the compiled trainer makes it (one graph, the custom ops inside) against eager."""
    lengths = [1000, 24, 3072]
    q, k, v, cu, dout = _inputs(lengths, 16, 4, 128, seed=3)

    def run(fn):
        qq, kk, vv = (x.detach().clone().requires_grad_() for x in (q, k, v))
        out = fn(qq, kk, vv, cu, 4096, 128 ** -0.5)
        out.backward(dout)
        return out, qq.grad, kk.grad, vv.grad

    eager = run(_varlen_call)
    compiled = run(torch.compile(_varlen_call, fullgraph=True))
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1])
    for a, b in zip(eager[2:], compiled[2:]):  # dK, dV: query heads add in fp32 atomically, in no fixed order
        assert ((a.float() - b.float()).abs() <= b.float().abs() * 2**-7 + 1e-6).all()


@pytest.mark.gpu
@on_gpu
def test_tma_loads_equal_pointer_loads():
    """The Hopper path (blocks through TMA descriptors) computes what the pointer loads compute: the same maths in
    the same order, so forward and dQ are bitwise equal; dK, dV (fp32 sums that query heads add atomically, in no
    fixed order) closely."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA needs Hopper")
    q, k, v, cu, dout = _inputs([700, 1, 64, 2000, 333], 16, 4, 128, seed=11)
    plain = [{**cfg, "TMA": False} for cfg in (AT.FWD, AT.DKDV, AT.DQ)]
    tma = [{**cfg, "TMA": True} for cfg in (AT.FWD, AT.DKDV, AT.DQ)]
    results = []
    for fwd, dkdv, dq in (plain, tma):
        out, lse = AT.forward(q, k, v, cu, 128 ** -0.5, fwd)
        results.append((out, lse, *AT.backward(dout, q, k, v, out, lse, cu, 128 ** -0.5, dkdv, dq)))
    for name, a, b in zip(("out", "lse", "dq"), results[0], results[1]):
        assert torch.equal(a, b), name
    for a, b in zip(results[0][3:], results[1][3:]):
        assert ((a.float() - b.float()).abs() <= b.float().abs() * 2**-7 + 1e-6).all()


def _rope_tables(lengths, d):
    positions = torch.cat([torch.arange(n) for n in lengths]).cuda().float()
    freqs = positions[:, None] / 10_000 ** (torch.arange(0, d, 2, device="cuda") / d)
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos().bfloat16(), emb.sin().bfloat16()


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("tma", [True, False])
def test_qkv_backward_is_the_gradient_before_rope_and_split(rope, tma):
    """backward_qkv (dQ's RoPE backward in the dQ kernel, dK's in the kernel that rounds it, all into one stacked
    tensor) against fp32 autograd through the split, RoPE and per-document attention."""
    if tma and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA needs Hopper")
    lengths, heads, kv_heads, d = [1, 77, 1000, 300, 1, 2555], 16, 4, 128
    q, k, v, cu, dout = _inputs(lengths, heads, kv_heads, d, seed=5)
    qkv = q._base.view(sum(lengths), -1)
    cos, sin = _rope_tables(lengths, d)
    if rope:
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
    fwd, dkdv, dq = ({**cfg, "TMA": tma} for cfg in (AT.FWD, AT.DKDV, AT.DQ))
    out, lse = AT.forward(q, k, v, cu, d ** -0.5, fwd)
    got = AT.backward_qkv(dout, q, k, v, out, lse, cu, d ** -0.5, (cos, sin) if rope else None, dkdv, dq)

    x = qkv.float().view(sum(lengths), heads + 2 * kv_heads, d).requires_grad_()
    q32, k32, v32 = x.split([heads, kv_heads, kv_heads], 1)
    if rope:
        q32, k32 = apply_rotary_pos_emb(q32, k32, cos.float(), sin.float())
    grads = _reference(q32, k32, v32, lengths, dout)[2:]
    torch.autograd.backward([q32, k32, v32], list(grads))
    want = x.grad.view(sum(lengths), -1)
    assert got.shape == want.shape and got.dtype == torch.bfloat16
    for name, cols in (("dq", slice(0, heads * d)), ("dk", slice(heads * d, (heads + kv_heads) * d)),
                       ("dv", slice((heads + kv_heads) * d, None))):
        assert _rel(got[:, cols], want[:, cols]) < 1e-2, (name, _rel(got[:, cols], want[:, cols]))


@pytest.mark.gpu
@on_gpu
def test_qkv_attention_compiles_whole_and_equals_eager():
    """attention.qkv_attention as a compiled layer calls it: one graph, RoPE fused there, the same results."""
    lengths, heads, kv_heads, d = [1000, 24, 3072], 16, 4, 128
    q, k, v, cu, dout = _inputs(lengths, heads, kv_heads, d, seed=7)
    qkv = q._base.view(1, sum(lengths), -1)
    cos, sin = (t[None] for t in _rope_tables(lengths, d))
    doc = DocumentMask.from_position_ids(torch.cat([torch.arange(n) for n in lengths])[None].cuda())

    def run(fn):
        x = qkv.detach().clone().requires_grad_()
        out = fn(x, cos, sin, doc, heads, kv_heads, d ** -0.5)
        out.backward(dout[None])
        return out, x.grad

    eager = run(qkv_attention)
    compiled = run(torch.compile(qkv_attention, fullgraph=True))
    assert _rel(compiled[0], eager[0]) < 1e-2  # RoPE's products rounded by inductor's code, not eager's
    assert _rel(compiled[1], eager[1]) < 2e-2


@pytest.mark.gpu
@on_gpu
def test_backward_gives_the_same_bits_on_every_run():
    # grouped heads' dK/dV shares are summed in head order, not added atomically: a training run repeats exactly
    lengths = [1, 777, 2000, 1318]
    q, k, v, cu, dout = _inputs(lengths, 16, 4, 128, seed=5)
    out, lse = AT.forward(q, k, v, cu, 128 ** -0.5)
    runs = [AT.backward(dout, q, k, v, out, lse, cu, 128 ** -0.5) for _ in range(5)]
    runs += [AT.backward_qkv(dout, q, k, v, out, lse, cu, 128 ** -0.5) for _ in range(5)]
    for first, again in ((runs[0], runs[i]) for i in range(1, 5)):
        assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(torch.equal(runs[5], runs[i]) for i in range(6, 10))


def interpreter_errors(group_sizes) -> dict:
    """On the CPU, in Triton's interpreter (no TMA): each kernel against fp32 attention per document, for one
    grouping of the dK/dV kernel's heads per program after another (shares summed after, or one program per
    KV head): fp16, 160 tokens in two documents."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    T, H, D, scale = 160, 4, 64, 64 ** -0.5
    cu = torch.tensor([0, 70, 160], dtype=torch.int32)
    errors = {}
    for kv in (1, 2):
        q, k, v = (torch.randn(T, h, D, dtype=torch.float16) for h in (H, kv, kv))
        dout = torch.randn(T, H, D, dtype=torch.float16)
        qr, kr, vr = (t.float().requires_grad_() for t in (q, k, v))
        ref = torch.cat([F.scaled_dot_product_attention(*(t[s:e].transpose(0, 1) for t in (qr, kr, vr)),
                                                        is_causal=True, scale=scale, enable_gqa=True).transpose(0, 1)
                         for s, e in ((0, 70), (70, 160))])
        ref.backward(dout.float())
        plain = {"TMA": False}
        out, lse = AT.forward(q, k, v, cu, scale, {**AT.FWD, **plain})
        errors[f"kv{kv}-out"] = _abs(out, ref)
        for heads in group_sizes(H // kv):
            dq, dk, dv = AT.backward(dout, q, k, v, out, lse, cu, scale, {**AT.DKDV, **plain, "HEADS": heads},
                                     {**AT.DQ, **plain})
            dqkv = AT.backward_qkv(dout, q, k, v, out, lse, cu, scale, None, {**AT.DKDV, **plain, "HEADS": heads},
                                   {**AT.DQ, **plain})
            stacked = [dqkv[:, :H * D], dqkv[:, H * D:(H + kv) * D], dqkv[:, (H + kv) * D:]]
            for name, got, want in zip("qkv", (dq, dk, dv), (qr.grad, kr.grad, vr.grad)):
                errors[f"kv{kv}-heads{heads}-d{name}"] = _abs(got, want)
                errors[f"kv{kv}-heads{heads}-stacked-d{name}"] = _abs(stacked["qkv".index(name)], want.flatten(1))
    return errors


def _abs(a, b):
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.skipif(AT.triton is None, reason="needs Triton (its CPU interpreter runs the kernels without a GPU)")
def test_kernels_in_the_interpreter_with_each_dkdv_grouping():
    # one query head per dK/dV program (shares summed after: the default) and one program per KV head; GQA 4:1, 2:1
    code = ("import json, runpy; m = runpy.run_path(%r); "
            "print(json.dumps(m['interpreter_errors'](lambda g: [1, g])))" % __file__)
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    errors = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(errors) == 2 + 2 * 2 * 6
    for name, e in errors.items():
        assert e < 4e-3, (name, e)  # fp16 rounding of the inputs and outputs
