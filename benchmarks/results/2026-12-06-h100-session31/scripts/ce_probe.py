"""Where the 32k step's 64 calls of `unrolled_elementwise_kernel` (1.1 ms each, 1.5% of the step in session 28's
profile: 2 micro-batches x 32 chunks of the LM head's cross-entropy) come from, and what the LM head's weight-gradient
accumulation costs against the GEMM alone.

1. The real chunked cross-entropy (3B head: vocab 128,256 x 2,048, bf16 copy, fp32 `weight_grad`), forward and
   backward over 32,768 rows, under the profiler: its kernels, by GPU time.
2. One chunk's weight-gradient accumulation, timed (CUDA events, median of 20): accumulate_wgrad (addmm with
   out_dtype fp32 into the fp32 gradient), mm to an fp32 temporary then add_, and the bf16 mm alone (the GEMM's floor),
   each for the head's chunk [1,024 x 128,256]^T [1,024 x 2,048] and a layer's [32,768 x 2,048]^T [32,768 x 2,048].

    PYTHONPATH=src python3 ce_probe.py OUT.json
"""
import json
import sys

import torch

from smollm3.ops.cross_entropy import chunked_cross_entropy
from smollm3.ops.linear import accumulate_wgrad


def timed(fn, reps=20):
    fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[reps // 2]


def main():
    out = sys.argv[1]
    dev = torch.device("cuda")
    torch.manual_seed(0)
    V, D, T = 128256, 2048, 32768
    weight = (torch.randn(V, D, device=dev) * 0.02).to(torch.bfloat16)
    weight_grad = torch.zeros(V, D, device=dev)
    hidden = torch.randn(T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, V, (T,), device=dev)

    def step():
        nll = chunked_cross_entropy(hidden, weight, labels, reduction="none", weight_grad=weight_grad)
        nll.sum().backward()

    step()
    torch.cuda.synchronize()
    res = {"device": torch.cuda.get_device_name(), "ce_step_ms": timed(step, 5)}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=110)
    print(table, flush=True)
    res["ce_kernels"] = table

    for name, n, out_dim, in_dim in (("head chunk", 1024, V, D), ("layer o_proj", T, D, D)):
        dy = torch.randn(n, out_dim, device=dev, dtype=torch.bfloat16)
        x = torch.randn(n, in_dim, device=dev, dtype=torch.bfloat16)
        grad = torch.zeros(out_dim, in_dim, device=dev)
        flops = 2 * n * out_dim * in_dim
        rows = {
            "accumulate_wgrad": lambda g=grad, d=dy, a=x: accumulate_wgrad(g, d, a),
            "mm fp32 temp + add_": lambda g=grad, d=dy, a=x: g.add_(torch.mm(d.T, a, out_dtype=torch.float32)),
            "bf16 mm alone": lambda d=dy, a=x: torch.mm(d.T, a),
        }
        for label, fn in rows.items():
            ms = timed(fn)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
                fn()
                torch.cuda.synchronize()
            kernels = [(e.key[:90], round(e.device_time_total / 1e3, 3)) for e in p.key_averages()]
            row = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1), "kernels": kernels}
            print(name, label, row, flush=True)
            res[f"{name}: {label}"] = row
    json.dump(res, open(out, "w"), indent=1)


if __name__ == "__main__":
    main()
