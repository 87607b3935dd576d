"""Target 9 in one process, profiled (session 24's script, fixed: the model on the GPU, the loop ends with the long
prompt; `python3 t9_profile.py $OUT`): the 3B preset (random bf16 weights), 64 streams decoding, then a 32,768-token
prompt at cap 256; wall time of each engine step by kind, and a torch.profiler window of steps deep in the prompt:
GPU kernel time against wall time, the top kernels, and host calls that wait on the GPU."""
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from smollm3 import build_model, preset
from smollm3.infer import Engine, SamplingParams

out = sys.argv[1]
SMOKE = not torch.cuda.is_available()  # a CPU check of the script itself: the tiny preset, short prompts
dev = "cpu" if SMOKE else "cuda"
sync = torch.cuda.synchronize if not SMOKE else (lambda: None)
torch.manual_seed(0)
# on the device explicitly: session 24's run built it under `with torch.device("cuda")`, which left the weights on the
# CPU (the engine captured no graphs and the run reached no measurement)
model = build_model(preset("tiny" if SMOKE else "smollm3-3b")).to(device=dev,
                                                                  dtype=torch.float32 if SMOKE else torch.bfloat16)
assert next(model.parameters()).device.type == dev
eng = Engine(model, None, max_model_len=1024 if SMOKE else 65536, kv_cache_memory=None if SMOKE else 40 << 30,
             max_num_batched_tokens=2048, max_prefill_tokens_during_decode=64 if SMOKE else 256)
t = time.perf_counter()
print("warm_up", eng.warm_up(), f"{time.perf_counter() - t:.1f} s", flush=True)
V = model.config.vocab_size
g = torch.Generator().manual_seed(0)
sp = SamplingParams(max_tokens=300 if SMOKE else 3000, temperature=0.0, ignore_eos=True)
for _ in range(64):
    eng.add_request(torch.randint(V // 2, V, (64 if SMOKE else 512,), generator=g).tolist(), sp)
while eng.stats["decode_steps"] < 30:
    eng.step()
sync()
alone = []
for _ in range(40):
    t = time.perf_counter()
    eng.step()
    alone.append(time.perf_counter() - t)
long = eng.add_request(torch.randint(V // 2, V, (1000 if SMOKE else 32768,), generator=g).tolist(), SamplingParams(max_tokens=1))
kinds, walls = [], []
prof_at = 2 if SMOKE else 100  # steps into the prompt: depth ~25k
prof = None
for i in range(10_000):
    if long.finished:  # its prompt read and its one token sampled
        break
    if i == prof_at:
        sync()
        prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
        prof.__enter__()
        t_prof = time.perf_counter()
    d0, p0 = eng.stats["decode_steps"], eng.stats["prefill_steps"]
    t = time.perf_counter()
    eng.step()
    walls.append(time.perf_counter() - t)
    kinds.append((eng.stats["decode_steps"] - d0, eng.stats["prefill_steps"] - p0))
    if i == prof_at + 9:
        sync()
        wall_prof = time.perf_counter() - t_prof
        prof.__exit__(None, None, None)
med = lambda x: sorted(x)[len(x) // 2] * 1e3  # noqa: E731
print(f"decode-only step wall p50 {med(alone):.2f} ms; during the prompt ({len(walls)} steps): "
      f"step wall p50 {med(walls):.2f} ms, p90 {sorted(walls)[int(len(walls) * .9)] * 1e3:.2f} ms; "
      f"kinds {sorted(set(kinds))}", flush=True)
print("walls of steps", prof_at, "..", prof_at + 9, [round(w * 1e3, 2) for w in walls[prof_at:prof_at + 10]])
ev = prof.key_averages()
gpu = sum(e.self_device_time_total for e in ev) / 1e3
print(f"profiled 10 steps: wall {wall_prof * 1e3:.1f} ms, GPU kernel time {gpu:.1f} ms (sum over streams)")
print(ev.table(sort_by="self_device_time_total", row_limit=22, max_name_column_width=70))
print(ev.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=70))
prof.export_chrome_trace(f"{out}/t9-trace.json")
