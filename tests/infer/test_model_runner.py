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
