"""The model runner's decode block tables (infer/model_runner.py): kept on the host and rewritten only where a row
changed, they must always equal the tables built from scratch from the requests' lists, whatever happens between
steps: tables growing, rows reordered or reassigned, preemption (a table replaced by other blocks of the same
length), padding rows, the batch and the KV bucket changing."""

import random

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
