"""Decode (3B preset, bf16, CUDA graphs, decode kernels) with and without the attention kernel pulling o_proj's
weight into L2 (decode_kernels.attention's `prefetch`, branch l2-prefetch): batch 1 at prompts 128 and 4,096, and
32 rows at prompt 128. Engines with each setting are captured once and alternated in one process; each rate is timed
as bench_infer times decode ((t(n) - t(1)) / (n - 1), best of 3). The greedy tokens must be the same with and
without (a prefetch changes no value).

    PYTHONPATH=src python3 prefetch.py OUT.json [ROWS:PROMPT,...]

Call 7 (s28.sh 8) ran it on branch merge-prefetch, where the merge kernel issues the prefetch instead (batch 1 only).
"""
import json
import sys
import time

import torch

from smollm3 import build_model, preset
from smollm3.infer import Engine, SamplingParams
from smollm3.infer.cache import kv_bytes_per_token
from smollm3.ops import decode_kernels as kern

WITH = kern.attention


def without(*args, prefetch=None, **kwargs):
    return WITH(*args, **kwargs)


POLICIES = {"prefetch": WITH, "none": without}


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


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    cfg = preset("smollm3-3b")
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16).eval()
    gen = torch.Generator().manual_seed(1)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": torch.cuda.get_device_name(), "rows": []}
    spec = sys.argv[2] if len(sys.argv) > 2 else "1:128,1:4096,32:128"
    cases = [tuple(int(x) for x in c.split(":")) for c in spec.split(",")]
    for rows, plen in cases:
        prompts = [torch.randint(0, cfg.vocab_size, (plen,), generator=gen).tolist() for _ in range(rows)]
        max_len = plen + 256 + 16
        engines, tokens = {}, {}
        for name, fn in POLICIES.items():
            kern.attention = fn
            kv = kv_bytes_per_token(cfg, torch.bfloat16) * (max_len + 128) * (rows + 1)
            e = Engine(model, None, max_num_seqs=rows, max_model_len=max_len, kv_cache_memory=kv, eos_token_ids=[])
            tokens[name] = timed(e, prompts, 256)[1]  # captures the graphs
            engines[name] = e
        same = tokens["prefetch"] == tokens["none"]
        print(f"rows {rows} prompt {plen}: greedy tokens equal with and without: {same}", flush=True)
        for rep in range(2):
            for name in (list(POLICIES) if rep == 0 else list(reversed(POLICIES))):
                kern.attention = POLICIES[name]
                row = {"rows": rows, "prompt": plen, "policy": name, "rep": rep, "same_tokens": same,
                       "tok_s": round(rate(engines[name], prompts, 256), 1)}
                res["rows"].append(row)
                print(row, flush=True)
                with open(out, "w") as f:
                    json.dump(res, f, indent=1)
        engines = None
        torch.cuda.empty_cache()
    kern.attention = WITH


if __name__ == "__main__":
    main()
