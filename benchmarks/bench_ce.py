"""The chunked cross-entropy's per-chunk pass on one GPU: the Triton kernel (ops/ce_kernel.py) against the same
maths compiled by torch.compile (the previous path, dynamic shapes, as the chunk tails vary) and eager torch.

    python3 benchmarks/bench_ce.py --out results.json

One chunk: 1,024 rows x 128,256 bf16 logits (SmolLM3's vocabulary). "forward" writes lse, nll and d nll / d logits
(the logits read twice, the gradient written once: 3 x 263 MB); "backward" recomputes the scaled gradient from a
forward's lse (one read, one write). Bandwidth is those bytes over the time.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench_attention import timed

from smollm3.ops import ce_kernel
from smollm3.ops import cross_entropy as CE


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=128_256)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(args.rows, args.vocab, device="cuda", generator=g) * 4).bfloat16()
    targets = torch.randint(0, args.vocab, (args.rows,), device="cuda", generator=g)
    grad = torch.randn(args.rows, device="cuda", generator=g)
    lse, nll, dl = torch.empty(args.rows, device="cuda"), torch.empty(args.rows, device="cuda"), torch.empty_like(logits)

    def forward_eager(logits, targets):
        lse, nll = CE._lse_nll(logits, targets)
        return lse, nll, CE._dlogits(logits, lse, targets)
    forward_compiled = torch.compile(forward_eager, dynamic=True)
    backward_compiled = torch.compile(CE._dlogits, dynamic=True)
    cases = {
        "forward/triton": lambda: ce_kernel.lse_nll(logits, targets, lse, nll, dl),
        "forward/torch.compile": lambda: forward_compiled(logits, targets),
        "forward/eager": lambda: forward_eager(logits, targets),
        "backward/triton": lambda: ce_kernel.dlogits(logits, lse, targets, grad),
        "backward/torch.compile": lambda: backward_compiled(logits, lse, targets, grad),
        "backward/eager": lambda: CE._dlogits(logits, lse, targets, grad),
    }
    size = logits.numel() * logits.element_size()
    rows = []
    for name, fn in cases.items():
        us = timed(fn, args.iters) * 1e3
        moved = (3 if name.startswith("forward") else 2) * size
        rows.append({"case": name, "us": round(us, 1), "tb_per_s": round(moved / us / 1e6, 2)})
        print(f"{name:<24} {us:9.1f} us  {moved / us / 1e6:5.2f} TB/s", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(),
                       "torch": torch.__version__, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
