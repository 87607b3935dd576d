"""32-stream decode (3B preset, bf16, CUDA graphs, main's fused step) under other rules, alternated in one process:
- the decode attention's key splits: main's (up to 256 programs: 2 splits a row at 32 rows, hence a merge kernel),
  one split (no merge), 4 and 8 splits;
- ops/gemv.py's tuner timing each candidate back to back inside a CUDA graph on L2-overflowing weight copies (as
  decode_kernels.py's does) instead of alone with the L2 flushed.
Each timed as bench_infer times decode: step = (t(256) - t(1)) / 255 for all 32 rows, best of 3.

    PYTHONPATH=src python3 batch32.py OUT.json
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

from smollm3 import build_model, preset
from smollm3.infer import Engine, SamplingParams
from smollm3.infer.cache import kv_bytes_per_token
from smollm3.ops import decode_kernels as kern
from smollm3.ops import gemv

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from nsplit import ORIGINAL, policy_attention  # noqa: E402

DEFAULT_TUNE = gemv._tune


def tune_in_graph(x, w):
    """gemv._tune's choice, each candidate timed as decode_kernels._tune times its tiles."""
    b, k = x.shape
    n = w.shape[0]
    nbytes = w.numel() * w.element_size()
    copies = [w] + [w.clone() for _ in range(min(7, (160 << 20) // nbytes))]
    reps = max(8, len(copies))
    ref = F.linear(x, w).float()
    times = {}
    for cfg in [gemv.ATEN] + gemv.candidates(b, n, k):
        def call(ww, c=cfg):
            return F.linear(x, ww) if c == gemv.ATEN else gemv.launch(x, ww, c)
        try:
            y = call(w).float()
            if not ((y - ref).norm() / ref.norm().clamp_min(1e-30)).item() < 2e-2:
                continue
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for i in range(reps):
                    call(copies[i % len(copies)])
            g.replay()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(5):
                g.replay()
            e.record()
            e.synchronize()
            times[cfg] = s.elapsed_time(e) / (5 * reps)
        except Exception:  # noqa: BLE001
            continue
    best = min(times, key=times.get)
    gemv.tuning_log.append({"b": b, "n": n, "k": k, "in_graph": True, "chosen": "cublas" if best == gemv.ATEN
                            else list(best), "us": round(times[best] * 1e3, 2),
                            "cublas_us": round(times[gemv.ATEN] * 1e3, 2)})
    return best


VARIANTS = {"main": (ORIGINAL, DEFAULT_TUNE), "one_split": (policy_attention(64, 128), DEFAULT_TUNE),
            "4_splits": (policy_attention(64, 512), DEFAULT_TUNE), "8_splits": (policy_attention(64, 1024), DEFAULT_TUNE),
            "tuner_in_graph": (ORIGINAL, tune_in_graph)}


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    cfg = preset("smollm3-3b")
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16).eval()
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, cfg.vocab_size, (128,), generator=gen).tolist() for _ in range(32)]
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": torch.cuda.get_device_name(), "rows": []}
    max_len = 128 + 256 + 16
    engines = {}
    for name, (attn, tune) in VARIANTS.items():
        kern.attention, gemv._tune = attn, tune
        gemv._choice.clear()  # each variant tunes its own shapes; its graphs keep what they captured
        kv = kv_bytes_per_token(cfg, torch.bfloat16) * (max_len + 128) * 33
        e = Engine(model, None, max_num_seqs=32, max_model_len=max_len, kv_cache_memory=kv, eos_token_ids=[])
        e.generate(prompts, SamplingParams(max_tokens=256, temperature=0.0, ignore_eos=True))
        engines[name] = e
        print(name, "ready", flush=True)
    kern.attention, gemv._tune = ORIGINAL, DEFAULT_TUNE
    res["tuning_log"] = gemv.tuning_log

    def t(e, k):
        torch.cuda.synchronize()
        s = time.perf_counter()
        e.generate(prompts, SamplingParams(max_tokens=k, temperature=0.0, ignore_eos=True))
        torch.cuda.synchronize()
        return time.perf_counter() - s
    for rep in range(2):
        for name in (list(VARIANTS) if rep == 0 else list(reversed(VARIANTS))):
            e = engines[name]
            t1 = min(t(e, 1) for _ in range(3))
            tn = min(t(e, 256) for _ in range(3))
            step = (tn - t1) / 255
            row = {"variant": name, "rep": rep, "step_ms": round(step * 1e3, 3), "tok_s": round(32 / step, 1)}
            res["rows"].append(row)
            print(row, flush=True)
            with open(out, "w") as f:
                json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
