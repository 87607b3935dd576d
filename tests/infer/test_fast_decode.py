"""The fused decode step (infer/fast.py): the same tokens as the eager engine, with q/k/v and gate/up fused into
views that leave the model's parameters, names and outputs unchanged. CPU runs the functions eagerly; the GPU
test runs them compiled inside CUDA graphs."""

import pytest
import torch

from smollm3 import load_pretrained
from smollm3.infer import Engine, SamplingParams
from smollm3.infer.fast import fuse_projections

GREEDY = {"temperature": 0.0, "ignore_eos": True}


def prompts(n_tokens, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in n_tokens]


def test_fusion_keeps_parameters_and_logits(tiny_dir):
    model = load_pretrained(tiny_dir, dtype=torch.float32)
    ids = torch.tensor([prompts([20], model.config.vocab_size)[0]])
    before = model(ids)
    names = [n for n, _ in model.named_parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_projections(model)
    assert [n for n, _ in model.named_parameters()] == names
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    a = model.model.layers[0].self_attn
    assert a.q_proj.weight.data_ptr() == fused[0][1].data_ptr()  # a view: nothing stored twice
    again = fuse_projections(model)  # a second engine reuses the fusion: the same memory, nothing copied
    assert all(x.data_ptr() == y.data_ptr() and torch.equal(x, y) for f, g in zip(fused, again) for x, y in zip(f, g))
    assert not any(k.startswith("_fused") for k in vars(model))  # nothing is kept on the model
    torch.testing.assert_close(model(ids), before, rtol=0, atol=0)


def test_fast_decode_equals_eager_engine(tiny_dir):
    model = load_pretrained(tiny_dir, dtype=torch.float32)
    ps = prompts([5, 40, 300], model.config.vocab_size, seed=3)
    sp = SamplingParams(max_tokens=16, **GREEDY)
    plain = Engine(model, None, max_model_len=512, max_num_seqs=4, fast_decode=False).generate(ps, sp)
    fast = Engine(model, None, max_model_len=512, max_num_seqs=4, fast_decode=True)
    fast.runner.bucket_shapes = True  # the padded (batch, KV-length) shapes the CUDA graphs use
    out = fast.generate(ps, sp)
    assert fast.runner.fast is not None and [r.output_ids for r in out] == [r.output_ids for r in plain]
    # prompt chunks through the fused prefill too, reading a prefix from the prefix cache and in chunks of 64
    head = ps[2][:150]
    shared = [head + p for p in prompts([3, 70], model.config.vocab_size, seed=4)]
    kw = dict(max_model_len=512, max_num_seqs=4, max_num_batched_tokens=64)
    plain = Engine(model, None, fast_decode=False, prefix_caching=False, **kw).generate(shared, sp)
    fast = Engine(model, None, fast_decode=True, **kw)
    out = fast.generate(shared[:1], sp) + fast.generate(shared[1:], sp)
    assert [r.num_cached_tokens for r in out] == [0, 128]
    assert [r.output_ids for r in out] == [r.output_ids for r in plain]
    # sampled rows go through the logits buffer, not the device argmax
    sampled = SamplingParams(max_tokens=8, temperature=0.8, seed=1, ignore_eos=True)
    a = Engine(model, None, max_model_len=512, max_num_seqs=2, fast_decode=False).generate(ps[:2], sampled)
    b = Engine(model, None, max_model_len=512, max_num_seqs=2, fast_decode=True).generate(ps[:2], sampled)
    assert [r.output_ids for r in a] == [r.output_ids for r in b]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_fast_decode_matches_eager_on_gpu(tiny_dir):
    model = load_pretrained(tiny_dir, device="cuda", dtype=torch.float32)
    ps = prompts([5, 40, 300], model.config.vocab_size)
    sp = SamplingParams(max_tokens=32, **GREEDY)
    eager = Engine(model, None, max_model_len=512, cuda_graphs=False, fast_decode=False).generate(ps, sp)
    fast = Engine(model, None, max_model_len=512, cuda_graphs=True)
    out = fast.generate(ps, sp)
    assert fast.runner.fast is not None and fast.runner._graphs
    assert [r.output_ids for r in out] == [r.output_ids for r in eager]
    # graphs captured up front (as the server does): every step finds its graph, and the tokens are the same
    ready = Engine(model, None, max_model_len=512, max_num_seqs=8, max_num_batched_tokens=256, cuda_graphs=True)
    # batches 1, 2, 4, 8 x KV lengths 256, 512; prefill lengths 64, 128, 192, 256
    assert ready.warm_up() == (8, 4)
    out = ready.generate(ps, sp)
    assert len(ready.runner._graphs) == 8
    assert [r.output_ids for r in out] == [r.output_ids for r in eager]


def test_async_decode_matches_sync_engine(tiny_dir):
    """Pipelined greedy decode (step n+1 launched before step n's tokens are read): the same tokens as the plain
    engine when requests stop early, arrive mid-run, are aborted, and mix with sampled requests."""
    model = load_pretrained(tiny_dir, dtype=torch.float32)
    ps = prompts([5, 40, 300, 17], model.config.vocab_size, seed=5)
    lens = [12, 20, 7, 16]
    plain = Engine(model, None, max_model_len=512, max_num_seqs=4, fast_decode=False)
    ref = plain.generate(ps, [SamplingParams(max_tokens=n, **GREEDY) for n in lens])
    stop = ref[1].output_ids[6]  # request 1 stops at its 7th token (or earlier, if that id came before)
    params = [SamplingParams(max_tokens=n, stop_token_ids=[stop], temperature=0.0) for n in lens]
    ref = plain.generate(ps, params)

    fast = Engine(model, None, max_model_len=512, max_num_seqs=3, fast_decode=True, gemv=True)
    fast.runner.bucket_shapes = True
    assert fast.async_decode
    reqs = [fast.add_request(p, sp) for p, sp in zip(ps[:2], params[:2])]
    for _ in range(5):
        fast.step()
    reqs += [fast.add_request(p, sp) for p, sp in zip(ps[2:], params[2:])]  # arrive mid-run (one must wait)
    while not all(r.finished for r in reqs):
        fast.step()
    assert [r.output_ids for r in reqs] == [r.output_ids for r in ref]
    assert [r.finish_reason for r in reqs] == [r.finish_reason for r in ref]

    # an abort mid-run, and a sampled request beside greedy ones (the engine falls back to reading every step)
    a = fast.add_request(ps[0], SamplingParams(max_tokens=30, **GREEDY))
    g = fast.add_request(ps[1], SamplingParams(max_tokens=10, **GREEDY))
    for _ in range(4):
        fast.step()
    fast.abort(a)
    s = fast.add_request(ps[2], SamplingParams(max_tokens=6, temperature=0.8, seed=1, ignore_eos=True))
    while not (g.finished and s.finished and a.finished):
        fast.step()
    assert a.finish_reason == "abort" and g.output_ids == ref_tokens(plain, ps[1], 10)
    s_ref = plain.generate([ps[2]], SamplingParams(max_tokens=6, temperature=0.8, seed=1, ignore_eos=True))[0]
    assert s.output_ids == s_ref.output_ids


def ref_tokens(engine, prompt, n):
    return engine.generate([prompt], SamplingParams(max_tokens=n, **GREEDY))[0].output_ids


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_gemv_matches_linear_on_gpu():
    """Every Triton tile the tuner may choose computes F.linear (bf16 rounding apart), and the op's choice too."""
    from smollm3.ops import gemv

    if not gemv.available():
        pytest.skip("no triton")
    torch.manual_seed(0)
    for b in (1, 3, 32):
        for n, k in ((3072, 2048), (2048, 11008), (1000, 2048)):
            x = torch.randn(b, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
            ref = x.double() @ w.double().T
            for cfg in gemv.candidates(b, n, k):
                y = gemv.launch(x, w, cfg, out=torch.full((b, n), float("nan"), device="cuda", dtype=torch.bfloat16))
                err = ((y.double() - ref).norm() / ref.norm()).item()
                assert err < 1e-2, (b, n, k, cfg, err)
            y = torch.ops.smollm3.small_linear(x, w)
            assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gemv_fast_decode_bf16_follows_eager_model_on_gpu(tiny_dir):
    """bf16: every token of the compiled, Triton-GEMV, pipelined CUDA-graph engine is the eager model's argmax
    for the same prefix (teacher forcing), up to bf16 near-ties (sequences may then diverge, so positions are not
    compared across engines)."""
    model = load_pretrained(tiny_dir, device="cuda", dtype=torch.bfloat16)
    ps = prompts([5, 40, 300], model.config.vocab_size)
    fast = Engine(model, None, max_model_len=512, cuda_graphs=True)
    assert fast.runner.fast is not None and fast.runner.fast.gemv and fast.async_decode
    out = fast.generate(ps, SamplingParams(max_tokens=16, **GREEDY))
    assert fast.runner._graphs
    with torch.no_grad():
        for p, r in zip(ps, out):
            ids = torch.tensor([p + r.output_ids[:-1]], device="cuda")
            logits = model(ids)[0, len(p) - 1:].float()  # the logits that chose each output token
            chosen = logits.gather(-1, torch.tensor(r.output_ids, device="cuda")[:, None])[:, 0]
            gap = logits.max(-1).values - chosen
            tol = 2e-2 * logits.abs().max(-1).values
            assert (gap <= tol).all(), (gap, tol)
