"""Where an engine's time goes under a serving load, step by step, without HTTP: every request added at once, then
`Engine.step()` until done. Each step is classed by what it ran (decode only, decode + prompt chunks, prompt chunks
only) and timed on the host. Passes run in turn on fresh prompts: an async pass lets the device run behind the host,
as the server does; a sync pass synchronizes after every step, so its times are host + device in series. Chosen
steps can run under torch.profiler (--profile-steps): device time against wall time, top kernels and host ops.

    python3 benchmarks/engine_steps.py --model DIR --max-model-len 65536 --profile-steps 5,30 --out $OUT/steps.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict

import torch

from smollm3.infer import SamplingParams
from smollm3.infer.llm import build_engine


def profiled(engine) -> dict:
    """One step under torch.profiler, the device synchronized at its end: its wall time against its kernels' device
    time (host-bound when the first is much larger), the top kernels and the top host-side ops."""
    from torch.profiler import ProfilerActivity, profile

    cuda = engine.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        t = time.perf_counter()
        engine.step()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
    events = prof.key_averages()
    kernels = sorted((e for e in events if getattr(e, "self_device_time_total", 0) > 0),
                     key=lambda e: -e.self_device_time_total)
    ops = sorted((e for e in events if e.self_cpu_time_total > 0), key=lambda e: -e.self_cpu_time_total)
    return {"wall_ms": round(wall * 1e3, 2),
            "device_ms": round(sum(e.self_device_time_total for e in kernels) / 1e3, 2),
            "kernels": [(e.key[:90], e.count, round(e.self_device_time_total / 1e3, 3)) for e in kernels[:12]],
            "host_ops": [(e.key[:90], e.count, round(e.self_cpu_time_total / 1e3, 3)) for e in ops[:12]]}


def run(engine, prompts, params, sync: bool, profile_steps: set[int] = frozenset()) -> dict:
    plans, profiles = [], []
    schedule = engine.scheduler.schedule

    def traced(*args, **kwargs):
        plan = schedule(*args, **kwargs)
        plans.append((len(plan.decode), sum(n for _, n in plan.prefill)))
        return plan

    engine.scheduler.schedule = traced
    cuda = engine.device.type == "cuda"
    before = torch.cuda.memory_stats() if cuda else {}
    try:
        for p in prompts:
            engine.add_request(p, params)
        rows, start = [], time.perf_counter()
        while engine.has_work():
            if len(rows) in profile_steps:  # timed under the profiler: not in the step table
                profiles.append({"step": len(rows), **profiled(engine), "plan": plans[-1]})
                rows.append((*plans[-1], None))
                continue
            t = time.perf_counter()
            engine.step()
            if sync and engine.device.type == "cuda":
                torch.cuda.synchronize()
            rows.append((*plans[-1], time.perf_counter() - t))
        wall = time.perf_counter() - start
    finally:
        engine.scheduler.schedule = schedule
    kinds = defaultdict(lambda: {"steps": 0, "ms": 0.0, "decode_rows": 0, "prompt_tokens": 0})
    timed = [r for r in rows if r[2] is not None]
    for decode, prompt, s in timed:
        k = kinds["decode" if not prompt else "prefill" if not decode else "decode+prefill"]
        k["steps"] += 1
        k["ms"] += s * 1e3
        k["decode_rows"] += decode
        k["prompt_tokens"] += prompt
    for k in kinds.values():
        k["ms_per_step"] = round(k["ms"] / k["steps"], 2)
        k["ms"] = round(k["ms"], 1)
    after = torch.cuda.memory_stats() if cuda else {}
    # the caching allocator's calls to cudaMalloc / cudaFree and its retries after a failed cudaMalloc (which free
    # every cached block and synchronise) during the pass: a first pass that grows the pool pays for them
    allocator = {k: after.get(k, 0) - before.get(k, 0) for k in
                 ("num_device_alloc", "num_device_free", "num_alloc_retries", "num_sync_all_streams")} if cuda else {}
    return {"sync_every_step": sync, "wall_s": round(wall, 2), "steps": len(rows), "kinds": dict(kinds),
            "allocator": allocator,
            "slowest_steps": [(d, p, round(s * 1e3, 1)) for d, p, s in sorted(timed, key=lambda r: -r[2])[:8]],
            "profiled_steps": profiles}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--max-model-len", type=int, required=True)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--profile-steps", default="",
                    help="steps (0-based, in every pass) to run under torch.profiler, e.g. 5,20: device time against "
                         "wall time, top kernels and host ops (the pass's wall time then includes the profiler)")
    ap.add_argument("--passes", default="async,sync,async",
                    help="the passes in order: async (the device runs behind the host, as in the server) or sync")
    ap.add_argument("--no-pad-prefill", action="store_true",
                    help="prefill at each step's exact token count, no warm-up of its lengths (the engine before "
                         "padding, for an A/B)")
    ap.add_argument("--no-prefill-kernel", action="store_true",
                    help="prompt chunks attend chunk by chunk in torch ops, not in one Triton kernel per layer "
                         "(Engine(prefill_kernel=False), for an A/B)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    engine, _ = build_engine(args.model, max_model_len=args.max_model_len, log=lambda line: None,
                             prefill_kernel=False if args.no_prefill_kernel else None)
    if args.no_pad_prefill:
        engine.runner.pad_prefill = False
    started = time.perf_counter()
    graphs, lengths = engine.warm_up()
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": str(engine.device), "args": vars(args),
           "kv_cache_tokens": engine.kv_cache_tokens, "graphs": graphs,
           "prefill_lengths": lengths, "warm_up_s": round(time.perf_counter() - started, 1), "passes": []}
    if engine.device.type == "cuda":
        res["device"] = torch.cuda.get_device_name()
    vocab = engine.config.vocab_size

    def prompts(seed: int, n: int):  # a seed per pass: no prompt shares a cached prefix with an earlier pass
        rng = random.Random(seed)
        return [[rng.randrange(min(1000, vocab // 2), vocab) for _ in range(args.input_len)] for _ in range(n)]

    params = SamplingParams(max_tokens=args.output_len, temperature=0.0, ignore_eos=True)
    engine.generate(prompts(99, 1), params)  # one-time costs of the first prefill
    steps = {int(s) for s in args.profile_steps.split(",") if s}
    for i, mode in enumerate(args.passes.split(",")):
        row = run(engine, prompts(i, args.requests), params, mode == "sync", steps)
        row["output_tok_s"] = round(args.requests * args.output_len / row["wall_s"], 1)
        res["passes"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "profiled_steps"}), flush=True)
        for prof in row["profiled_steps"]:
            print(f"  step {prof['step']} {prof['plan']}: wall {prof['wall_ms']} ms, device {prof['device_ms']} ms; "
                  f"top kernels {prof['kernels'][:3]}; top host ops {prof['host_ops'][:3]}", flush=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
