"""The 3B preset's projection GEMMs for one micro-batch, bf16 against FP8 (ops/fp8.py), on one GPU.

    python3 benchmarks/bench_gemm.py --tokens 4096 --out gemm.json

For each decoder projection (q/k/v stacked, o, gate/up stacked, down) and each GEMM of its training step:
forward y = x W^T and input gradient dx = dy W in bf16 (cuBLAS) and in FP8 (`torch._scaled_mm`, rowwise and
tensorwise scales, with and without quantizing the activation or gradient operand first, compiled as in training);
the weight gradient W.grad += dy^T x in bf16 into fp32 (the trainer's `accumulate_wgrad`) and into bf16 alone.
Reports ms and TFLOP/s, and sums one micro-batch's 36 layers, so the FP8 saving can be read against the trainer's
step time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_attention import timed

from smollm3 import preset
from smollm3.ops import fp8 as F8
from smollm3.ops.linear import accumulate_wgrad


def shapes(cfg) -> dict[str, tuple[int, int]]:
    """name -> (in_features, out_features) of one decoder layer's GEMMs (stacked as the trainer stacks them)."""
    h, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
    return {"qkv": (h, cfg.num_attention_heads * cfg.head_dim + 2 * kv), "o": (cfg.num_attention_heads * cfg.head_dim, h),
            "gate_up": (h, 2 * cfg.intermediate_size), "down": (cfg.intermediate_size, h)}


def bench_shape(m: int, k: int, n: int, iters: int) -> dict:
    """One GEMM a [m, k] @ W^T for W [n, k] (a forward or an input gradient), every way; ms each."""
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    w = (torch.randn(n, k, device="cuda", generator=g) / k**0.5).bfloat16()
    row = {"bf16": timed(lambda: torch.mm(a, w.t()), iters)}
    for recipe in F8.RECIPES:
        row.update({f"fp8_{recipe}_{key}": v for key, v in bench_fp8(a, w, recipe == "rowwise", iters).items()})
    return row


def bench_fp8(a, w, rowwise: bool, iters: int) -> dict:
    wq, w_scale, _, _ = copies = F8.weight_copies(*w.shape, rowwise, w.device)
    F8.refresh(copies, [w.float()])
    aq, a_scale = F8.quantize(a, rowwise)
    quantize = torch.compile(lambda t: F8.quantize(t, rowwise), dynamic=False)
    ref = a.double() @ w.double().t()
    got = F8.scaled_mm(*quantize(a), wq, w_scale, torch.bfloat16)
    return {"gemm": timed(lambda: F8.scaled_mm(aq, a_scale, wq, w_scale, torch.bfloat16), iters),
            "quantize": timed(lambda: quantize(a), iters),
            "rel_err": round(((got.double() - ref).norm() / ref.norm()).item(), 5)}


def bench_wgrad(m: int, k: int, n: int, iters: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    dy = torch.randn(m, n, device="cuda", generator=g).bfloat16()
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    grad = torch.zeros(n, k, device="cuda")
    return {"bf16_into_fp32": timed(lambda: accumulate_wgrad(grad, dy, x), iters),
            "bf16_alone": timed(lambda: torch.mm(dy.t(), x), iters)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm3-3b")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per micro-batch (the GEMMs' M)")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cfg = preset(args.preset)
    m, layers = args.tokens, cfg.num_hidden_layers
    rows, total = [], {}
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  {args.preset}  M = {m} tokens")
    for name, (inp, out) in shapes(cfg).items():
        for gemm, (k, n) in (("forward", (inp, out)), ("dgrad", (out, inp))):
            r = {"proj": name, "gemm": gemm, "m": m, "k": k, "n": n, **bench_shape(m, k, n, args.iters)}
            rows.append(r)
        # dW [out, in] = dy^T [out, M] @ x [M, in]: the tokens are the reduction
        rows.append({"proj": name, "gemm": "wgrad", "m": out, "k": m, "n": inp, **bench_wgrad(m, inp, out, args.iters)})
    for r in rows:
        flop = 2 * r["m"] * r["k"] * r["n"]
        r["tflops"] = {key: round(flop / v / 1e9, 1) for key, v in r.items()
                       if isinstance(v, float) and not key.endswith("rel_err")}
        for key, v in r.items():
            if isinstance(v, float) and not key.endswith("rel_err"):
                total[f"{r['gemm']}:{key}"] = total.get(f"{r['gemm']}:{key}", 0.0) + v * layers
        print(f"{r['proj']:>8} {r['gemm']:>7}  " + "  ".join(f"{key} {v:.3f} ms ({r['tflops'][key]} TF)"
                                                           for key, v in r.items() if key in r["tflops"]))
    total = {key: round(v, 2) for key, v in total.items()}
    print("one micro-batch, all layers (ms):", json.dumps(total, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(),
                                              "torch": torch.__version__, "args": vars(args), "rows": rows,
                                              "per_micro_batch_ms": total}, indent=2))


if __name__ == "__main__":
    main()
