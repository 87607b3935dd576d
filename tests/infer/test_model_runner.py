"""The model runner's decode block tables (infer/model_runner.py): kept on the host and rewritten only where a row
changed, they must always equal the tables built from scratch from the requests' lists, whatever happens between
steps: tables growing, rows reordered or reassigned, preemption (a table replaced by other blocks of the same
length), padding rows, the batch and the KV bucket changing."""

import random

import pytest
import torch

from smollm3 import build_model, preset
from smollm3.infer.model_runner import ModelRunner
from smollm3.infer.sampling import SamplingParams
from smollm3.infer.sequence import Request


def from_scratch(reqs, b, nb, scratch):
    rows = [r.block_table[:nb] + [scratch] * (nb - len(r.block_table[:nb])) for r in reqs]
    return torch.tensor(rows + [[scratch] * nb] * (b - len(reqs)), dtype=torch.int32)


def test_tables_uploaded_row_by_row_equal_tables_built_from_scratch():
    runner = ModelRunner(build_model(preset("tiny")), num_blocks=500, block_size=4, max_num_seqs=8, max_model_len=64,
                         cuda_graphs=False, fast_decode=False)
    rng = random.Random(0)
    pool = [Request([1, 2, 3], SamplingParams()) for _ in range(12)]
    for r in pool:
        r.block_table = [rng.randrange(500) for _ in range(rng.randint(1, 8))]
    for step in range(400):
        running = rng.sample(pool, rng.randint(1, 8))
        for r in running:
            op = rng.random()
            if op < 0.3 and len(r.block_table) < 16:  # a new block
                r.block_table.append(rng.randrange(500))
            elif op < 0.35:  # preempted and admitted again: other blocks, maybe as many as before
                r.block_table = [rng.randrange(500) for _ in range(len(r.block_table))]
                r.num_preemptions += 1
        b = rng.choice([n for n in (1, 2, 4, 8) if n >= len(running)])
        nb = max(max(len(r.block_table) for r in running), rng.randint(1, 16))
        runner.upload(running, b, nb * 4, tokens=False)
        torch.testing.assert_close(runner.tables_buf[:b, :nb], from_scratch(running, b, nb, runner.scratch),
                                   rtol=0, atol=0, msg=f"step {step}")
        assert not runner.upload(running, b, nb * 4, tokens=False)  # nothing changed: nothing is copied


def test_decode_shapes_are_every_shape_a_decode_step_can_take():
    """The shapes a server captures at start are exactly those `shape` can return, largest first; without CUDA
    graphs there are none."""
    runner = ModelRunner(build_model(preset("tiny")), num_blocks=64, block_size=16, max_num_seqs=12,
                         max_model_len=1000, cuda_graphs=False, fast_decode=False)
    assert runner.decode_shapes() == []
    runner.bucket_shapes = True  # as with CUDA graphs
    shapes = runner.decode_shapes()
    seen = set()
    for b in range(1, 13):
        reqs = [Request([1], SamplingParams()) for _ in range(b)]
        for computed in range(1000):  # the longest request decides the KV bucket
            reqs[0].num_computed = computed
            seen.add(runner.shape(reqs))
    assert set(shapes) == seen and len(shapes) == len(seen)
    assert shapes == sorted(shapes, reverse=True)
    assert {b for b, _ in shapes} == {1, 2, 4, 8, 12} and {k for _, k in shapes} == {256, 512, 1008}


def test_padded_prefill_lengths_are_few_and_cover_every_step():
    runner = ModelRunner(build_model(preset("tiny")), num_blocks=64, block_size=16, max_num_seqs=12,
                         max_model_len=1000, max_num_batched_tokens=2048, cuda_graphs=False, pad_prefill=True)
    sizes = runner.prefill_sizes()
    for n in range(1, 2049):
        padded = runner.prefill_tokens(n)
        assert padded in sizes and n <= padded <= max(n + 63, n * 9 // 8)
    assert len(sizes) == 24 and sizes == sorted(sizes, reverse=True)
    assert [runner.prefill_rows(k) for k in (1, 2, 3, 5, 12)] == [1, 2, 4, 8, 16]
    runner.pad_prefill = False
    assert runner.prefill_sizes() == [] and runner.prefill_tokens(77) == 77 and runner.prefill_rows(3) == 3


def test_padded_prefill_equals_exact_prefill():
    """Padding tokens change nothing a request sees: the same K/V in its blocks, the same logits; the warm-up of
    every padded length writes the scratch block only."""
    torch.manual_seed(0)
    model = build_model(preset("tiny")).eval()
    runners = [ModelRunner(model, num_blocks=40, block_size=8, max_num_seqs=4, max_model_len=256,
                           max_num_batched_tokens=160, cuda_graphs=False, fast_decode=False, pad_prefill=pad)
               for pad in (False, True)]
    padded = runners[1]
    assert padded.warm_prefill() == len(padded.prefill_sizes()) > 0
    assert not padded.cache.k[:, :padded.scratch].any() and padded.cache.k[:, padded.scratch].any()
    rng = random.Random(0)
    reqs = [Request([rng.randrange(1, 200) for _ in range(n)], SamplingParams()) for n in (37, 90, 13)]
    for i, r in enumerate(reqs):
        r.block_table = list(range(i * 12, i * 12 + 12))
    logits = []
    for runner in runners:
        for r in reqs:
            r.num_computed = 0
        out = [runner.prefill([(reqs[0], 37), (reqs[1], 50)])]  # reqs[1]'s second chunk reads the first from cache
        reqs[0].num_computed, reqs[1].num_computed = 37, 50
        out.append(runner.prefill([(reqs[1], 40), (reqs[2], 13)]))
        logits.append(out)
    for a, b in zip(*logits):
        torch.testing.assert_close(a, b)
    assert [x.shape[0] for x in logits[1]] == [1, 2]
    blocks = list(range(36))
    torch.testing.assert_close(runners[0].cache.k[:, blocks], runners[1].cache.k[:, blocks])
    torch.testing.assert_close(runners[0].cache.v[:, blocks], runners[1].cache.v[:, blocks])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_warm_up_leaves_nothing_to_compile_on_gpu():
    """After the engine's warm_up, serving compiles no function and loads no prefill kernel: prompts of many lengths
    read in chunks beside decoding streams, several finishing in one step (the LM head at several rows), and a
    prompt deep enough that the attention kernel splits its keys (the split and merge kernels)."""
    from torch._dynamo.utils import counters

    from smollm3.infer import Engine
    from smollm3.ops import prefill_attention as pa

    cfg = preset("tiny")
    cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_attention_heads = 256, 704, 64, 8
    model = build_model(cfg).to("cuda", torch.bfloat16).eval()
    engine = Engine(model, None, max_model_len=1024, max_num_seqs=16, max_num_batched_tokens=256)
    engine.runner.cache.split_keys = 256  # a 700-token prompt is cut twice
    engine.warm_up()

    def loaded():  # compiled variants per kernel (Triton >= 3.3 keeps them in device_caches, older in cache)
        caches = [getattr(k, "device_caches", None) for k in (pa._prefill_kernel, pa._merge_kernel)]
        return [sum(len(c[0]) for c in d.values()) if d is not None else sum(len(c) for c in k.cache.values())
                for d, k in zip(caches, (pa._prefill_kernel, pa._merge_kernel))]

    before, graphs = loaded(), counters["stats"]["unique_graphs"]
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in (700, 5, 40, 300, 77, 3, 9)]
    out = engine.generate(prompts, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    assert len(out) == len(prompts) and engine.stats["prefill_steps"] > len(prompts) // 2
    assert counters["stats"]["unique_graphs"] == graphs, "a step compiled a function that warm_up did not"
    assert loaded() == before, "a step loaded a prefill kernel that warm_up did not"
