"""Host time of getting the decode step's block tables to the device (`ModelRunner.upload`), per step, at many
requests with long contexts: the part of a serving step that grows with requests x context, not with the model.

    PYTHONPATH=src python3 benchmarks/bench_decode_tables.py --requests 256 --context 65536

Each request holds a full table for `--context` positions; every step `--grow` of them gain a block (at one new
block per block_size tokens, 256 requests gain ~4 a step). Runs on the CPU (a 1-layer model; the cache is tiny).
"""

from __future__ import annotations

import argparse
import random
import time

from smollm3 import build_model, preset
from smollm3.infer.model_runner import ModelRunner
from smollm3.infer.sampling import SamplingParams
from smollm3.infer.sequence import Request


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--context", type=int, default=65536)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--grow", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    cfg = preset("tiny")
    cfg.num_hidden_layers, cfg.max_position_embeddings = 1, args.context
    runner = ModelRunner(build_model(cfg), num_blocks=2000, block_size=args.block_size, max_num_seqs=args.requests,
                         max_model_len=args.context, cuda_graphs=False, fast_decode=False)
    rng = random.Random(0)
    nb = args.context // args.block_size
    reqs = [Request([1], SamplingParams()) for _ in range(args.requests)]
    for r in reqs:
        r.block_table = [rng.randrange(2000) for _ in range(nb - args.steps)]
    runner.upload(reqs, args.requests, args.context, tokens=False)
    t = time.perf_counter()
    for _ in range(args.steps):
        for r in rng.sample(reqs, args.grow):
            r.block_table.append(rng.randrange(2000))
        runner.upload(reqs, args.requests, args.context, tokens=False)
    print(f"upload: {(time.perf_counter() - t) / args.steps * 1e3:.3f} ms a step ({args.requests} requests, "
          f"{nb} blocks each, {args.grow} growing a step)")


if __name__ == "__main__":
    main()
