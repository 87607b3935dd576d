"""The prompt step on the fused layers (infer/fast_prefill.py). Replayed from its CUDA graphs it gives the bits of
the same pieces run eagerly (the same kernels at the same shapes), the K/V it writes included. On the CPU, the
pieces equal the model's forward, logits and K/V."""

import random

import pytest
import torch

from smollm3 import build_model, preset
from smollm3.infer.model_runner import PREFILL_GRAPH_TOKENS, ModelRunner
from smollm3.infer.sampling import SamplingParams
from smollm3.infer.sequence import Request


def prefill_steps(runner, reqs, steps) -> list[torch.Tensor]:
    """Each step's chunks [(request index, tokens)] through runner.prefill, from every request's start -> the logits
    of each step."""
    for r in reqs:
        r.num_computed = 0
    out = []
    for step in steps:
        out.append(runner.prefill([(reqs[i], n) for i, n in step]))
        for i, n in step:
            reqs[i].num_computed += n
    return out


def test_fused_prefill_equals_model_forward():
    """Prompt chunks through the decode step's fused functions (fast.py's prefill) give the model forward's logits
    and K/V: chunks continuing from the cache, a NoPE layer (the tiny preset's 4th), padding, and a step in which
    no chunk samples."""
    torch.manual_seed(0)
    model = build_model(preset("tiny")).eval()
    assert not all(model.config.rope_layers)
    runners = [ModelRunner(model, num_blocks=40, block_size=8, max_num_seqs=4, max_model_len=256,
                           max_num_batched_tokens=160, cuda_graphs=False, fast_decode=fast, pad_prefill=True)
               for fast in (False, True)]
    assert runners[0].fast is None and runners[1].fast is not None
    rng = random.Random(1)
    reqs = [Request([rng.randrange(1, 200) for _ in range(n)], SamplingParams()) for n in (37, 90, 13)]
    for i, r in enumerate(reqs):
        r.block_table = list(range(i * 12, i * 12 + 12))
    steps = [[(0, 37), (1, 50)], [(1, 30)], [(1, 10), (2, 13)]]  # samples 1, none, 2
    logits = [prefill_steps(runner, reqs, steps) for runner in runners]
    assert [x.shape[0] for x in logits[1]] == [1, 0, 2]
    for a, b in zip(*logits):
        torch.testing.assert_close(b, a)
    blocks = list(range(36))
    torch.testing.assert_close(runners[1].cache.k[:, blocks], runners[0].cache.k[:, blocks])
    torch.testing.assert_close(runners[1].cache.v[:, blocks], runners[0].cache.v[:, blocks])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_prompt_steps_equal_eager_ones_on_gpu():
    cfg = preset("tiny")
    cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_attention_heads = 256, 704, 64, 8
    torch.manual_seed(0)
    model = build_model(cfg).to("cuda", torch.bfloat16).eval()
    runners = []
    for graphs in (False, True):
        runner = ModelRunner(model, num_blocks=64, block_size=16, max_num_seqs=4, max_model_len=1024,
                             max_num_batched_tokens=PREFILL_GRAPH_TOKENS, cuda_graphs=True, fast_decode=True)
        runner.cache.split_keys = 256  # the deep chunk below is cut into splits and merged
        runner.warm_prefill()
        assert sorted(runner.fast_prefill.graphs) == list(range(64, PREFILL_GRAPH_TOKENS + 1, 64))
        if not graphs:
            runner.fast_prefill.graphs.clear()
        runners.append(runner)
    rng = random.Random(0)
    reqs = [Request([rng.randrange(1, 500) for _ in range(n)], SamplingParams()) for n in (37, 600, 13)]
    for r, blocks in zip(reqs, (range(0, 3), range(3, 41), range(41, 42))):
        r.block_table = list(blocks)
    steps = [[(0, 37), (1, 200)], [(1, 300)], [(1, 100), (2, 13)]]  # 237, 300, 113 tokens; samples 1, none, 2
    logits = [prefill_steps(runner, reqs, steps) for runner in runners]
    assert [x.shape[0] for x in logits[1]] == [1, 0, 2]
    for a, b in zip(*logits):
        assert torch.equal(a, b)
    assert torch.equal(runners[0].cache.k[:, :42], runners[1].cache.k[:, :42])
    assert torch.equal(runners[0].cache.v[:, :42], runners[1].cache.v[:, :42])


def _divided_steps_equal_whole_ones(model, graphs: bool):
    """Three prompt steps run whole, and run a layer group at a time (1, then 3 layers of the tiny model's 4) with a
    decode step of another request launched before each group (as the engine's max_prefill_layers_during_decode
    does): the same logits and K/V, bit for bit."""
    rng = random.Random(2)
    reqs = [Request([rng.randrange(1, 200) for _ in range(n)], SamplingParams()) for n in (37, 300, 13)]
    for r, blocks in zip(reqs, (range(0, 3), range(3, 23), range(23, 24))):
        r.block_table = list(blocks)
    steps = [[(0, 37), (1, 100)], [(1, 150)], [(1, 50), (2, 13)]]  # samples 1, none, 2
    out = []
    for layers in (None, 1, 3):
        runner = ModelRunner(model, num_blocks=40, block_size=16, max_num_seqs=4, max_model_len=512,
                             max_num_batched_tokens=160, cuda_graphs=graphs, fast_decode=True)
        runner.cache.split_keys = 128  # on the GPU, the deep chunks are cut into key splits and merged
        if graphs:
            runner.warm_prefill()
            runner.capture_graphs()
        stream = Request([5] * 20, SamplingParams())
        stream.block_table = list(range(30, 40))  # blocks no prompt above uses
        runner.prefill([(stream, 20)])
        stream.num_computed, stream.output_ids = 20, [9]
        for r in reqs:
            r.num_computed = 0
        logits = []
        for step in steps:
            chunks = [(reqs[i], n) for i, n in step]
            if layers is None:
                logits.append(runner.prefill(chunks))
            else:
                runner.begin_prefill(chunks)
                got = None
                while got is None:
                    b, kv_len = runner.shape([stream])
                    runner.upload([stream], b, kv_len)
                    runner.launch(b, kv_len)
                    stream.num_computed += 1
                    stream.output_ids.append(9)
                    got = runner.resume_prefill(layers)
                logits.append(got)
            for i, n in step:
                reqs[i].num_computed += n
        out.append((logits, runner.cache.k[:, :24].clone(), runner.cache.v[:, :24].clone()))
    assert [x.shape[0] for x in out[0][0]] == [1, 0, 2]
    for logits, k, v in out[1:]:
        assert all(torch.equal(a, b) for a, b in zip(out[0][0], logits))
        assert torch.equal(out[0][1], k) and torch.equal(out[0][2], v)


def test_prompt_step_divided_by_layers_equals_whole_step():
    torch.manual_seed(0)
    _divided_steps_equal_whole_ones(build_model(preset("tiny")).eval(), graphs=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prompt_step_divided_by_layers_equals_whole_step_on_gpu():
    """As on the CPU, with the piece graphs and the decode graphs replayed in between (one memory pool)."""
    _divided_steps_equal_whole_ones(_tiny_gpu_model(), graphs=True)


def test_invariant_prefill_refused_where_it_cannot_run():
    from smollm3.infer import Engine

    with pytest.raises(ValueError, match="needs a CUDA device with Triton"):
        Engine(build_model(preset("tiny")), None, max_model_len=256, invariant_prefill=True)


def _tiny_gpu_model():
    cfg = preset("tiny")
    cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_attention_heads = 256, 704, 64, 8
    torch.manual_seed(0)
    return build_model(cfg).to("cuda", torch.bfloat16).eval()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_invariant_prefill_is_the_same_bits_however_the_prompt_arrives_on_gpu():
    """One 600-token prompt read whole, then in three chunks beside other prompts' chunks (steps of other sizes,
    graphed and not): its K/V and its last token's logits are the same bits."""
    model = _tiny_gpu_model()
    rng = random.Random(0)
    prompt = Request([rng.randrange(1, 500) for _ in range(600)], SamplingParams())
    others = [Request([rng.randrange(1, 500) for _ in range(n)], SamplingParams()) for n in (90, 300)]
    prompt.block_table, others[0].block_table, others[1].block_table = (list(range(0, 38)), list(range(38, 44)),
                                                                        list(range(44, 63)))
    runners, last = [], []
    for schedule in ([[(prompt, 600)]], [[(prompt, 100), (others[0], 90)], [(others[1], 300), (prompt, 37)],
                                         [(prompt, 463)]]):
        runner = ModelRunner(model, num_blocks=64, block_size=16, max_num_seqs=4, max_model_len=1024,
                             max_num_batched_tokens=1024, cuda_graphs=True, fast_decode=True, invariant_prefill=True)
        runner.cache.split_keys = 256
        runner.warm_prefill()
        for r in (prompt, *others):
            r.num_computed = 0
        for step in schedule:
            out = runner.prefill(step)
            for r, n in step:
                r.num_computed += n
        last.append(out[-1])  # the prompt's chunk ends each schedule's last step
        runners.append(runner)
    assert torch.equal(last[0], last[1])
    blocks = list(range(38))
    assert torch.equal(runners[0].cache.k[:, blocks], runners[1].cache.k[:, blocks])
    assert torch.equal(runners[0].cache.v[:, blocks], runners[1].cache.v[:, blocks])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_invariant_prefill_greedy_replies_equal_with_and_without_prefix_cache_on_gpu():
    """Prompts sharing a 300-token head, sent one at a time (every reply decodes at batch 1). Without the cache a
    prompt is one step of its whole length; with it, its suffix past the cached 256 is a step of another length,
    and the head's K/V came from the first prompt's step: the GEMMs ran at other sizes."""
    from smollm3.infer import Engine

    model = _tiny_gpu_model()
    g = torch.Generator().manual_seed(1)
    head = torch.randint(3, 500, (300,), generator=g).tolist()
    prompts = [head + torch.randint(3, 500, (int(n),), generator=g).tolist() for n in (5, 77, 150, 400)]
    sp = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    replies = {}
    for caching in (True, False):
        engine = Engine(model, None, max_model_len=1024, max_num_seqs=4, max_num_batched_tokens=1024,
                        prefix_caching=caching, invariant_prefill=True)
        engine.warm_up()
        done = [engine.generate([p], sp)[0] for p in prompts]  # one at a time: every reply decodes at batch 1
        replies[caching] = [r.output_ids for r in done]
        if caching:
            assert [r.num_cached_tokens for r in done][1:] == [256] * 3
    assert replies[True] == replies[False]
