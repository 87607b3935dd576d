"""Long-context prefill: a 128k-token prompt through the engine, SmolLM3-3B preset with YaRN x2, one GPU.

    python3 benchmarks/bench_long.py --out $OUT/bench_long.json                 # 3B, bf16, CUDA
    python3 benchmarks/bench_long.py --preset tiny --device cpu --prompt 2000 --out /tmp/long.json   # smoke test

The preset's 65,536 positions are stretched to 131,072 by `extend_context` (YaRN factor 2, in memory only, as
`smollm3 serve --max-model-len 131072` does). The engine prefills the whole prompt in one forward (flash SDPA,
causal, GQA without repeating K/V) and computes logits for the last position only, then samples one token.
Reported: time to first token (prefill + one sampled token), peak GPU memory, and the KV cache's bytes per token.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from smollm3 import build_model, preset
from smollm3.infer import Engine, SamplingParams, extend_context
from smollm3.infer.cache import kv_bytes_per_token


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm3-3b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-model-len", type=int, default=131072)
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default: max-model-len - 1)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = build_model(preset(args.preset), device=device, dtype=dtype).eval()
    notice = extend_context(model, args.max_model_len)
    n = args.prompt or args.max_model_len - 1
    kv_per_token = kv_bytes_per_token(model.config, dtype)
    engine = Engine(model, None, max_num_seqs=1, max_model_len=args.max_model_len, block_size=64,
                    kv_cache_memory=kv_per_token * (args.max_model_len + 64), eos_token_ids=[], fast_decode=False,
                    max_num_batched_tokens=args.max_model_len)  # one prefill, as the target was measured
    prompt = torch.randint(0, model.config.vocab_size, (n,), generator=torch.Generator().manual_seed(1)).tolist()
    sp = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    engine.generate([prompt[:1024]], sp)  # warm the kernels
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    ttft = []
    for _ in range(args.repeats):
        r = engine.generate([prompt], sp)[0]
        ttft.append(r.first_token_time - r.arrival_time)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "preset": args.preset, "dtype": str(dtype).replace("torch.", ""),
           "rope_scaling": model.config.rope_scaling, "notice": notice, "prompt_tokens": n,
           "ttft_s": [round(t, 3) for t in ttft], "ttft_best_s": round(min(ttft), 3),
           "prefill_tok_s": round(n / min(ttft)), "kv_bytes_per_token": kv_per_token,
           "kv_cache_gib": round(kv_per_token * args.max_model_len / 2**30, 2)}
    if device.type == "cuda":
        res["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(res, indent=1))
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
