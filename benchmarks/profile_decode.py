"""Where a decode step's time goes: GPU time of one captured step alone (graph replays back to back) against the
engine's whole step (host bookkeeping included), and the top kernels inside the graph.

    python3 benchmarks/profile_decode.py --out $OUT/profile_decode.json     # 3B preset, bf16, CUDA
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from smollm3 import build_model, preset
from smollm3.infer import Engine, SamplingParams
from smollm3.infer.cache import kv_bytes_per_token


def replay_ms(graph, n: int = 100) -> float:
    graph.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e3


def top_kernels(graph, n: int = 20, k: int = 15) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            graph.replay()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    total = sum(e.self_device_time_total for e in events)
    rows = sorted(({"kernel": e.key[:80], "calls_per_step": e.count / n, "us_per_step": e.self_device_time_total / n}
                   for e in events), key=lambda r: -r["us_per_step"])
    print(f"  kernels per step {sum(r['calls_per_step'] for r in rows):.0f}, kernel time {total / n / 1e3:.3f} ms")
    for r in rows[:k]:
        print(f"  {r['us_per_step']:8.1f} us  {r['calls_per_step']:5.0f}x  {r['kernel']}")
    return rows[:k]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="smollm3-3b")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(preset(args.preset), device="cuda", dtype=torch.bfloat16).eval()
    max_len = 512
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": torch.cuda.get_device_name(), "rows": []}
    for fast, kernels in ((True, True), (True, False), (False, None)):
        engine = Engine(model, None, max_num_seqs=32, max_model_len=max_len, eos_token_ids=[], fast_decode=fast,
                        decode_kernels=kernels,
                        kv_cache_memory=kv_bytes_per_token(model.config, torch.bfloat16) * max_len * 32)
        sp = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True)
        for b in (1, 32):
            prompts = [[5 + i] * 128 for i in range(b)]
            engine.generate(prompts, sp)  # captures the (b, 256) graph
            t = time.perf_counter()
            engine.generate(prompts, sp)
            step_ms = (time.perf_counter() - t) / 64 * 1e3  # 1 prefill + 63 decode steps: an upper bound
            graph = engine.runner._graphs[(b, 256)]
            # each replay advances the rows' lengths (pipelined decode keeps the next step's inputs on the device):
            # start at 100 so that the 101 + 21 replays below stay inside the graph's 256 KV positions
            engine.runner.lengths_buf[:b].fill_(100)
            replay = replay_ms(graph)
            engine.runner.lengths_buf[:b].fill_(100)
            row = {"fused_step": fast, "decode_kernels": kernels, "batch": b,
                   "graph_replay_ms": round(replay, 3), "engine_step_ms": round(step_ms, 3)}
            print(f"fused={fast} kernels={kernels} batch {b}: graph replay {row['graph_replay_ms']} ms, engine step "
                  f"{row['engine_step_ms']} ms", flush=True)
            row["top_kernels"] = top_kernels(graph)
            res["rows"].append(row)
        engine = None
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
