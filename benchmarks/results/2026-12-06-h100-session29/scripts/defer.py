"""Batch-1 decode (3B preset, bf16, CUDA graphs, decode kernels) with the attention's key splits merged by a kernel of
their own (main: fast.DEFER_MERGE = 0) and by o_proj as it reads them (DEFER_MERGE = 8: contexts up to 512 keys;
64: every context), at prompts 128, 1,024 and 4,096 (+ 256 new tokens). Engines with each setting are captured once
and alternated in one process; each rate is timed as bench_infer times decode ((t(n) - t(1)) / (n - 1), best of 3),
and set against bench_infer's roofline (copy bandwidth / (weights + mean KV read)). The greedy tokens must be equal.

    PYTHONPATH=src python3 defer.py OUT.json [ROWS:PROMPT:POLICY/POLICY,...]
"""
import json
import sys
import time

import torch

from smollm3 import build_model, preset
from smollm3.infer import Engine, SamplingParams, fast
from smollm3.infer.cache import kv_bytes_per_token
from smollm3.ops import decode_kernels as kern


def timed(engine, prompts, n):
    torch.cuda.synchronize()
    s = time.perf_counter()
    out = engine.generate(prompts, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
    torch.cuda.synchronize()
    return time.perf_counter() - s, [r.output_ids for r in out]


def rate(engine, prompts, n, repeats=3):
    t1 = min(timed(engine, prompts, 1)[0] for _ in range(repeats))
    tn = min(timed(engine, prompts, n)[0] for _ in range(repeats))
    return len(prompts) * (n - 1) / (tn - t1)


def copy_bandwidth(nbytes=2 << 30, iters=10):
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    best = float("inf")
    for _ in range(iters):
        torch.cuda.synchronize()
        s = time.perf_counter()
        b.copy_(a)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - s)
    return 2 * nbytes / best


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    cfg = preset("smollm3-3b")
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = copy_bandwidth()
    gen = torch.Generator().manual_seed(1)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": torch.cuda.get_device_name(),
           "copy_bandwidth_gbps": round(bw / 1e9, 1), "rows": []}
    print(res, flush=True)
    spec = sys.argv[2] if len(sys.argv) > 2 else "1:128:0/8,1:1024:0/64,1:4096:0/64"
    for case in spec.split(","):
        rows, plen, pols = case.split(":")
        rows, plen, pols = int(rows), int(plen), [int(p) for p in pols.split("/")]
        prompts = [torch.randint(0, cfg.vocab_size, (plen,), generator=gen).tolist() for _ in range(rows)]
        roofline = bw / (weights + kv_bytes_per_token(cfg, torch.bfloat16) * (plen + 128))
        max_len = plen + 256 + 16
        engines, tokens = {}, {}
        for pol in pols:
            fast.DEFER_MERGE = pol
            kv = kv_bytes_per_token(cfg, torch.bfloat16) * (max_len + 128) * (rows + 1)
            e = Engine(model, None, max_num_seqs=rows, max_model_len=max_len, kv_cache_memory=kv, eos_token_ids=[])
            tokens[pol] = timed(e, prompts, 256)[1]  # captures the graphs
            engines[pol] = e
        same = all(tokens[p] == tokens[pols[0]] for p in pols)
        print(f"rows {rows} prompt {plen}: greedy tokens equal under {pols}: {same}; roofline {roofline:.1f} tok/s",
              flush=True)
        for rep in range(2):
            for pol in (pols if rep == 0 else list(reversed(pols))):
                fast.DEFER_MERGE = pol
                tok_s = rate(engines[pol], prompts, 256)
                row = {"rows": rows, "prompt": plen, "defer_merge": pol, "rep": rep, "same_tokens": same,
                       "tok_s": round(tok_s, 1), "pct_roofline": round(100 * tok_s / roofline, 1)}
                res["rows"].append(row)
                print(row, flush=True)
                with open(out, "w") as f:
                    json.dump(res | {"tuning": kern.tuning_log}, f, indent=1)
        engines = None
        torch.cuda.empty_cache()
    for row in kern.tuning_log:
        if row["splits"] or row["residual"] and row["k"] == 2048 and row["n"] == 2048:
            print(row, flush=True)


if __name__ == "__main__":
    main()
