"""Batch-1 decode (3B preset, bf16, CUDA graphs, decode kernels) with the decode attention's key splits chosen by
other rules than decode_kernels.attention's: is its merge kernel worth its split? Policies are alternated in one
process; each is timed as bench_infer times decode ((t(n) - t(1)) / (n - 1), best of 3) at two prompt lengths.

    PYTHONPATH=src python3 nsplit.py OUT.json
"""
import json
import sys
import time

import torch
import triton

from smollm3 import build_model, preset
from smollm3.infer import Engine, SamplingParams
from smollm3.infer.cache import kv_bytes_per_token
from smollm3.ops import decode_kernels as kern

ORIGINAL = kern.attention


def policy_attention(min_chunk, max_programs=256):
    """decode_kernels.attention with splits of at least min_chunk keys (the original: 64) and at most
    max_programs programs."""
    def attention(qkv, cos, sin, k_cache, v_cache, lengths, tables, kv_len, *, heads, kv_heads, scale, rope):
        b = qkv.shape[0]
        D, bs = k_cache.shape[-1], k_cache.shape[2]
        g = heads // kv_heads
        block = 64
        nsplit = max(1, min(triton.cdiv(kv_len, min_chunk), max_programs // max(1, b * kv_heads)))
        nsplit = 1 << (nsplit.bit_length() - 1)
        chunk = triton.cdiv(triton.cdiv(kv_len, nsplit), block) * block
        out = torch.empty(b, heads * D, dtype=qkv.dtype, device=qkv.device)
        part = ml = out
        if nsplit > 1:
            part = torch.empty(b, heads, nsplit, D, dtype=torch.float32, device=qkv.device)
            ml = torch.empty(b, heads, nsplit, 2, dtype=torch.float32, device=qkv.device)
        kern._attention_kernel[(b, kv_heads, nsplit)](
            qkv, cos, sin, k_cache, v_cache, lengths, tables, out, part, ml, qkv.stride(0), cos.stride(0),
            tables.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), scale, chunk, H=heads,
            KV=kv_heads, D=D, G=g, GP=max(16, triton.next_power_of_2(g)), BLOCK=block, BS=bs, NSPLIT=nsplit,
            ROPE=rope, num_warps=4, **kern._pdl(qkv))
        if nsplit > 1:
            kern._merge_kernel[(b, heads)](part, ml, out, H=heads, D=D, NSPLIT=nsplit, num_warps=4, **kern._pdl(qkv))
        return out
    return attention


POLICIES = {"original": ORIGINAL, "chunk64": policy_attention(64), "chunk256": policy_attention(256),
            "chunk1024": policy_attention(1024), "one_split": policy_attention(1 << 30),
            "chunk64_128prog": policy_attention(64, 128)}


def rate(engine, prompt, n, repeats=3):
    sp = lambda k: SamplingParams(max_tokens=k, temperature=0.0, ignore_eos=True)  # noqa: E731

    def t(k):
        torch.cuda.synchronize()
        s = time.perf_counter()
        engine.generate([prompt], sp(k))
        torch.cuda.synchronize()
        return time.perf_counter() - s
    t1 = min(t(1) for _ in range(repeats))
    tn = min(t(n) for _ in range(repeats))
    return (n - 1) / (tn - t1)


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    cfg = preset("smollm3-3b")
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16).eval()
    gen = torch.Generator().manual_seed(1)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": torch.cuda.get_device_name(), "rows": []}
    for plen in (128, 4096):
        prompt = torch.randint(0, cfg.vocab_size, (plen,), generator=gen).tolist()
        max_len = plen + 256 + 16
        engines = {}
        for name, fn in POLICIES.items():
            kern.attention = fn
            kv = kv_bytes_per_token(cfg, torch.bfloat16) * (max_len + 128) * 2
            e = Engine(model, None, max_num_seqs=1, max_model_len=max_len, kv_cache_memory=kv, eos_token_ids=[])
            e.generate([prompt], SamplingParams(max_tokens=256, temperature=0.0, ignore_eos=True))  # graphs
            engines[name] = e
        for rep in range(2):
            for name in (list(POLICIES) if rep == 0 else list(reversed(POLICIES))):
                kern.attention = POLICIES[name]  # captured graphs hold their kernels; eager paths see this
                r = rate(engines[name], prompt, 256)
                row = {"prompt": plen, "policy": name, "rep": rep, "tok_s": round(r, 1)}
                res["rows"].append(row)
                print(row, flush=True)
                with open(out, "w") as f:
                    json.dump(res, f, indent=1)
        engines = None
        torch.cuda.empty_cache()
    kern.attention = ORIGINAL


if __name__ == "__main__":
    main()
