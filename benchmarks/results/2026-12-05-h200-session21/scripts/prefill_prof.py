"""Where a step's time goes while 64 streams decode and a 32k prompt is read (cap argv[1], default 512): prompt
steps through the fused pieces with CUDA graphs, without, and the model's eager forward, in one engine (on a tree
without fast_prefill.py: the eager forward only), and a kernel table of the last."""
import sys, time, torch
from smollm3 import build_model, preset
from smollm3.infer import Engine, SamplingParams

torch.manual_seed(0)
cfg = preset("smollm3-3b")
model = build_model(cfg).to("cuda", torch.bfloat16).eval()
eng = Engine(model, None, max_model_len=65536, kv_cache_memory=20 << 30, max_num_batched_tokens=2048,
             max_prefill_tokens_during_decode=int(sys.argv[1]) if len(sys.argv) > 1 else 512)
t = time.time(); print("warm_up", eng.warm_up(), f"{time.time() - t:.1f}s", flush=True)
runner = eng.runner
orig = runner.prefill
log = []
def timed(chunks):
    torch.cuda.synchronize(); t0 = time.perf_counter()
    out = orig(chunks)
    torch.cuda.synchronize(); log.append((sum(n for _, n in chunks), max(r.num_computed for r, _ in chunks),
                                          time.perf_counter() - t0))
    return out
runner.prefill = timed
g = torch.Generator().manual_seed(1)
rnd = lambda n: torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist()
for _ in range(64):
    eng.add_request(rnd(512), SamplingParams(max_tokens=6000, temperature=0, ignore_eos=True))
eng.step()
while eng.scheduler.waiting or any(r.num_computed < r.num_tokens for r in eng.scheduler.running):
    eng.step()
for _ in range(20): eng.step()
torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(50): eng.step()
torch.cuda.synchronize(); print(f"decode-only step {1e3 * (time.perf_counter() - t0) / 50:.2f} ms", flush=True)
pre = getattr(runner, "fast_prefill", None)
graphs = dict(pre.graphs) if pre is not None else {}
modes = ("graphs", "nographs", "eager", "graphs") if pre is not None else ("eager", "eager")
for turn, name in enumerate(modes):
    runner.fast_prefill = None if name == "eager" else pre
    if pre is not None:
        pre.graphs = graphs if name == "graphs" else {}
    log.clear()
    r = eng.add_request(rnd(32768), SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
    steps = []
    t_start = time.perf_counter()
    while not r.finished:
        torch.cuda.synchronize(); t0 = time.perf_counter(); eng.step(); torch.cuda.synchronize()
        steps.append(time.perf_counter() - t0)
    ttft = time.perf_counter() - t_start
    pf = [x for x in log]
    deep = [x for x in pf if x[1] > 24000]
    print(f"{name}: ttft {ttft:.2f}s steps {len(steps)} step p50 {1e3 * sorted(steps)[len(steps) // 2]:.1f} "
          f"p99 {1e3 * sorted(steps)[int(len(steps) * 0.99)]:.1f} max {1e3 * max(steps):.1f} ms; prefill calls {len(pf)} "
          f"mean {1e3 * sum(x[2] for x in pf) / len(pf):.1f} ms deep(>24k) n={len(deep)} chunk "
          f"{sum(x[0] for x in deep) / max(1, len(deep)):.0f} tok {1e3 * sum(x[2] for x in deep) / max(1, len(deep)):.1f} ms",
          flush=True)
    if turn == len(modes) - 1:  # one kernel table: 3 steps deep in a fresh prompt
        r = eng.add_request(rnd(32768), SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
        while r.num_computed < 28000:
            eng.step()
        torch.cuda.synchronize()
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as p:
            for _ in range(3):
                eng.step()
            torch.cuda.synchronize()
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60), flush=True)
        while not r.finished:
            eng.step()
