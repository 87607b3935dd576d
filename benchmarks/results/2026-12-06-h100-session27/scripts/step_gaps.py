"""Where the engine's decode steps lose time beyond their graphs: torch.profiler over Engine.generate (CPU and CUDA
activities) at 1 and 32 rows, then from the kernel timeline: each step's span from its first kernel to its last, and
the device's idle gaps, split into gaps inside a step's graph and gaps between steps.

    PYTHONPATH=src python3 step_gaps.py OUT_DIR
"""
import gzip
import json
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from smollm3 import build_model, preset
from smollm3.infer import Engine, SamplingParams
from smollm3.infer.cache import kv_bytes_per_token


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    cfg = preset("smollm3-3b")
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16).eval()
    gen = torch.Generator().manual_seed(1)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": torch.cuda.get_device_name(), "rows": []}
    for b in (1, 32):
        prompts = [torch.randint(0, cfg.vocab_size, (128,), generator=gen).tolist() for _ in range(b)]
        max_len = 128 + 256 + 16
        kv = kv_bytes_per_token(cfg, torch.bfloat16) * (max_len + 128) * (b + 1)
        e = Engine(model, None, max_num_seqs=b, max_model_len=max_len, kv_cache_memory=kv, eos_token_ids=[])
        sp = SamplingParams(max_tokens=96, temperature=0.0, ignore_eos=True)
        e.generate(prompts, sp)
        e.generate(prompts, sp)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t = time.perf_counter()
            e.generate(prompts, sp)
            torch.cuda.synchronize()
            wall = time.perf_counter() - t
        prof.export_chrome_trace(f"/tmp/trace_b{b}.json")
        with open(f"/tmp/trace_b{b}.json", "rb") as src, gzip.open(f"{out}/trace_b{b}.json.gz", "wb") as dst:
            dst.write(src.read())
        kernels = sorted((ev for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA),
                         key=lambda ev: ev.time_range.start)
        # a decode step ends with the argmax (the greedy pick; the head's last kernel in both paths)
        ends = [i for i, ev in enumerate(kernels) if "argmax" in ev.name]
        steps, inside, between = [], [], []
        for j in range(1, len(ends)):
            first, last = ends[j - 1] + 1, ends[j]
            seg = kernels[first:last + 1]
            span = seg[-1].time_range.end - seg[0].time_range.start
            busy_end = seg[0].time_range.start
            idle = 0.0
            for ev in seg:
                if ev.time_range.start > busy_end:
                    idle += ev.time_range.start - busy_end
                busy_end = max(busy_end, ev.time_range.end)
            steps.append(span)
            inside.append(idle)
            between.append(seg[0].time_range.start - kernels[first - 1].time_range.end)
        med = lambda xs: sorted(xs)[len(xs) // 2] if xs else None  # noqa: E731
        cpu = {}
        for ev in prof.key_averages():
            if ev.key.startswith(("cudaGraphLaunch", "cudaEventSynchronize", "cudaMemcpyAsync", "cudaStreamSynchronize",
                                  "cudaEventRecord", "cudaLaunchKernel", "cudaHostAlloc", "cudaMallocHost")):
                cpu[ev.key] = {"count": ev.count, "cpu_us_total": round(ev.cpu_time_total, 1)}
        row = {"batch": b, "tokens": 96, "wall_ms": round(wall * 1e3, 2), "kernels": len(kernels),
               "decode_steps_seen": len(steps), "step_span_us_p50": med(steps), "idle_inside_step_us_p50": med(inside),
               "gap_before_step_us_p50": med(between), "gap_before_step_us_max": max(between) if between else None,
               "gap_before_step_us_all": [round(x, 1) for x in between], "cuda_api": cpu}
        res["rows"].append(row)
        print({k: v for k, v in row.items() if k != "gap_before_step_us_all"}, flush=True)
        with open(f"{out}/step_gaps.json", "w") as f:
            json.dump(res, f, indent=1)
        e = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
