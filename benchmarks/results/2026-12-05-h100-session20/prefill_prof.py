"""Where a step's time goes while 64 streams decode and a 32k prompt is read at cap 512: the fused prefill
(runner.fast.prefill) against the model's eager forward, in one engine, and a kernel table of each."""
import sys, time, torch
from smollm3 import build_model, preset
from smollm3.infer import Engine, SamplingParams

torch.manual_seed(0)
cfg = preset("smollm3-3b")
model = build_model(cfg).to("cuda", torch.bfloat16).eval()
eng = Engine(model, None, max_model_len=65536, kv_cache_memory=14 << 30, max_num_batched_tokens=2048,
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
fast = runner.fast
def mode(name):
    runner.fast = fast if name == "fast" else None
    # decode must still use fast: only prefill reads runner.fast in _prefill; restore for decode via wrapper
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
orig_prefill_fn = runner._prefill
for name in ("fast", "eager", "fast"):
    def _prefill(*a, _n=name):
        runner.fast = fast if _n == "fast" else None
        try:
            return orig_prefill_fn(*a)
        finally:
            runner.fast = fast
    runner._prefill = _prefill
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
          f"max {1e3 * max(steps):.1f} ms; prefill calls {len(pf)} mean {1e3 * sum(x[2] for x in pf) / len(pf):.1f} ms "
          f"deep(>24k) n={len(deep)} chunk {sum(x[0] for x in deep) / max(1, len(deep)):.0f} tok "
          f"{1e3 * sum(x[2] for x in deep) / max(1, len(deep)):.1f} ms", flush=True)
    # profile 3 more deep steps with a fresh prompt
    r = eng.add_request(rnd(32768), SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
    while r.num_computed < 28000:
        eng.step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as p:
        for _ in range(3):
            eng.step()
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60), flush=True)
    while not r.finished:
        eng.step()
