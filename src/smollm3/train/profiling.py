"""`log.profile_step: N`: step N runs under torch.profiler; its Chrome trace, kernel table and a summary land in
out_dir/profile/. On a GPU only device activity is traced: tracing every CPU op slows the host enough to open gaps
between kernels that an unprofiled step does not have. The summary says how busy the GPU was (the union of its
kernels' intervals against the step's wall time), where the idle time sits (the gaps between consecutive kernels,
binned by length, and the longest ones with the kernels on either side), and which kernels took the most time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

GAP_BINS_US = (10, 100, 1000)  # gaps under 10 us are launch spacing; the longer ones are the host falling behind


def start(device: torch.device) -> tuple[profile, float]:
    on_gpu = device.type == "cuda"
    prof = profile(activities=[ProfilerActivity.CUDA] if on_gpu else [ProfilerActivity.CPU], record_shapes=not on_gpu)
    prof.__enter__()
    return prof, time.perf_counter()


def finish(prof: profile, t0: float, device: torch.device, out: Path, step: int, rank: int) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall_ms = (time.perf_counter() - t0) * 1e3
    prof.__exit__(None, None, None)
    out.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out / f"step{step}_rank{rank}.json"))
    averages = prof.key_averages()
    (out / f"step{step}_rank{rank}_kernels.txt").write_text(
        averages.table(sort_by="self_device_time_total" if device.type == "cuda" else "self_cpu_time_total",
                       row_limit=100))
    device_events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                     and not e.name.startswith("## ")]  # inductor's graph spans cover their kernels: not kernels
    kernels = sorted(((e.time_range.start, e.time_range.end, e.name) for e in device_events))
    busy, gaps = busy_and_gaps(kernels)
    top = sorted(({"kernel": e.key[:100], "calls": e.count, "ms": round(e.self_device_time_total / 1e3, 3)}
                  for e in averages if e.device_type == torch.autograd.DeviceType.CUDA and not e.key.startswith("## ")),
                 key=lambda r: -r["ms"])[:40]
    summary = {"step": step, "wall_ms": round(wall_ms, 2), "gpu_busy_ms": round(busy / 1e3, 2),
               "kernel_sum_ms": round(sum(b - a for a, b, _ in kernels) / 1e3, 2), "kernels": len(kernels),
               "gaps": bin_gaps(gaps),
               "longest_gaps": [{"us": round(g, 1), "at_ms": round(t / 1e3, 2), "after": p[:80], "before": n[:80]}
                                for g, p, n, t in sorted(gaps, reverse=True)[:25]],
               "top": top}
    (out / f"step{step}_rank{rank}_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def busy_and_gaps(kernels: list[tuple[float, float, str]]) -> tuple[float, list[tuple[float, str, str, float]]]:
    """Kernels as (start, end, name) sorted by start, in us -> (the length of the union of their intervals, the idle
    gaps between them as (length, kernel before, kernel after, offset from the first start))."""
    busy, end, last, gaps = 0.0, None, None, []  # last: the kernel that ends at `end`
    for a, b, name in kernels:
        if end is not None and a > end:
            gaps.append((a - end, last, name, end - kernels[0][0]))
        busy += max(0.0, b - max(a, end if end is not None else a))
        if end is None or b > end:
            end, last = b, name
    return busy, gaps


def bin_gaps(gaps: list[tuple]) -> dict:
    binned = {}
    for lo, hi in zip((0,) + GAP_BINS_US, GAP_BINS_US + (float("inf"),)):
        sel = [g[0] for g in gaps if lo <= g[0] < hi]
        binned[f"{lo}-{hi}us"] = {"count": len(sel), "ms": round(sum(sel) / 1e3, 2)}
    return binned
