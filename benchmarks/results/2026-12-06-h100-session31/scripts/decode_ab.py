"""Batch-1 decode (3B preset, bf16, CUDA graphs, decode kernels) under several settings, engines captured once each and
alternated in one process:
- tiles: the GEMV tiles the tuner picks from main's candidates (decode_kernels._TILES, "main") or from a wider list
  ("wide": more rows a program, longer loads, deeper pipelines; the H200 streams 1.4x faster than the H100 with the
  same SMs, so each SM needs more bytes in flight);
- rows: how many gate and up rows (each) the merge kernel requests into L2 beside o_proj's weight while the attention
  runs (fast.GU_PREFETCH_ROWS; main: 0).
Decode is timed as bench_infer times it ((t(n) - t(1)) / (n - 1), best of 3) against bench_infer's roofline (copy
bandwidth / (weights + mean KV read)). The greedy tokens must be equal.

    PYTHONPATH=src python3 decode_ab.py OUT.json [PROMPT,...] [TILES:ROWS,...]
"""
import json
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
from bench_infer import copy_bandwidth, decode_rate, make_engine, ours_generate  # noqa: E402

from smollm3 import build_model, preset  # noqa: E402
from smollm3.infer import fast  # noqa: E402
from smollm3.infer.cache import kv_bytes_per_token  # noqa: E402
from smollm3.ops import decode_kernels as kern  # noqa: E402

MAIN = list(kern._TILES)
WIDE = MAIN + [(8, 1024, 4, 1), (8, 1024, 8, 1), (16, 1024, 8, 1), (4, 1024, 4, 2), (4, 1024, 8, 2), (8, 512, 4, 2),
               (8, 512, 8, 3), (4, 512, 4, 4), (2, 1024, 4, 2), (8, 2048, 8, 1), (1, 2048, 4, 1), (2, 4096, 8, 1),
               (32, 128, 4, 3), (16, 256, 8, 4), (32, 256, 8, 3), (16, 512, 8, 2), (4, 2048, 8, 2), (2, 2048, 4, 2)]


def main():
    out = sys.argv[1]
    prompts_at = [int(p) for p in (sys.argv[2] if len(sys.argv) > 2 else "128").split(",")]
    configs = [(c.split(":")[0], int(c.split(":")[1]))
               for c in (sys.argv[3] if len(sys.argv) > 3 else "main:0,main:2048,wide:0").split(",")]
    dev = torch.device("cuda")
    torch.manual_seed(0)
    cfg = preset("smollm3-3b")
    model = build_model(cfg, device=dev, dtype=torch.bfloat16).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = copy_bandwidth(dev, 2 << 30)
    gen = torch.Generator().manual_seed(1)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": torch.cuda.get_device_name(),
           "copy_bandwidth_gbps": round(bw, 1), "wide_extra": [list(t) for t in WIDE[len(MAIN):]], "rows": []}
    print(res, flush=True)
    for plen in prompts_at:
        prompt = torch.randint(0, cfg.vocab_size, (plen,), generator=gen).tolist()
        roofline = bw * 1e9 / (weights + kv_bytes_per_token(cfg, torch.bfloat16) * (plen + 128))
        engines, tokens, logs = {}, {}, {}
        for tiles, rows in configs:
            name = f"{tiles}:{rows}"
            kern._TILES[:] = WIDE if tiles == "wide" else MAIN
            kern._choice.clear()
            fast.GU_PREFETCH_ROWS = rows
            start = len(kern.tuning_log)
            e = make_engine(model, 1, plen + 256 + 16)
            tokens[name] = ours_generate(e, [prompt], 256)[0].output_ids  # tunes, then captures the graphs
            logs[name] = kern.tuning_log[start:]
            engines[name] = e
            print(name, "built", time.strftime("%T"), flush=True)
        names = list(engines)
        same = all(tokens[n] == tokens[names[0]] for n in names)
        print(f"prompt {plen}: greedy tokens equal: {same}; roofline {roofline:.1f} tok/s", flush=True)
        for name in names:
            for row in logs[name]:
                print(name, {k: row[k] for k in ("n", "k", "norm", "swiglu", "residual", "tile", "us", "tbps")},
                      flush=True)
        for rep in range(3):
            for name in (names if rep % 2 == 0 else names[::-1]):
                tok_s = decode_rate(lambda n, e=engines[name], p=prompt: ours_generate(e, [p], n), dev, 256)
                row = {"prompt": plen, "config": name, "rep": rep, "same_tokens": same, "tok_s": round(tok_s, 1),
                       "pct_roofline": round(100 * tok_s / roofline, 1)}
                res["rows"].append(row)
                print(row, flush=True)
                with open(out, "w") as f:
                    json.dump(res | {"tuning": logs}, f, indent=1)
        engines = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
