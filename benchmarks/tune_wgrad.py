"""The weight-gradient GEMM grad += dy^T x (bf16 into fp32) of the 3B preset's projections: cuBLAS against a
persistent Triton kernel, and the block shapes of the latter.

    PYTHONPATH=src:benchmarks python3 benchmarks/tune_wgrad.py --out wgrad.json

For each decoder projection's weight gradient (q/k/v and gate/up stacked as the trainer stacks them) at `--tokens`
tokens: cuBLAS accumulating into fp32 (`torch.addmm(..., out_dtype=torch.float32)`, the trainer's
ops.linear.accumulate_wgrad), cuBLAS writing bf16 alone (the same GEMM without the fp32 add: the rate to aim at),
and every Triton configuration of `--configs`. Each result is checked against an fp32 reference (|diff| / |ref|,
max; a tile left unwritten keeps the start value and shows as the whole product). GPU time per call: `--iters` calls in one CUDA graph (tune_attention.timed).

The Triton kernel (below) walks the output tiles persistently; per tile it runs the K loop from TMA-loaded dy and x
blocks (dy's block transposed in shared memory, as wgmma reads it), then adds the fp32 tile into `.grad` in column
slices through TMA. On the H100 it lost to cuBLAS on every shape (2026-11-24-h100-wgrad-attention-tma.md), so the
trainer keeps cuBLAS; the kernel stays here as the measured alternative.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import time

import torch
from bench_gemm import shapes
from tune_attention import rel, timed

from smollm3 import preset

try:  # triton ships with CUDA builds of torch
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    triton = None

CONFIG = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "SLICES": 4, "num_warps": 8,
          "num_stages": 3, "WARP_SPECIALIZE": False}


if triton is not None:

    @triton.jit
    def _wgrad_kernel(dy_desc, x_desc, g_desc, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SLICES: tl.constexpr, NUM_SMS: tl.constexpr,
                      WARP_SPECIALIZE: tl.constexpr):
        tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        per_group = GROUP_M * tiles_n
        for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, NUM_SMS, flatten=True,
                             warp_specialize=WARP_SPECIALIZE):
            # grouped order: GROUP_M row tiles share the x column blocks while they sit in L2
            first_m = (tile // per_group) * GROUP_M
            rows = min(tiles_m - first_m, GROUP_M)
            om = (first_m + tile % rows) * BLOCK_M
            on = (tile % per_group) // rows * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            for kk in range(k_tiles):
                a = dy_desc.load([kk * BLOCK_K, om])  # [BLOCK_K, BLOCK_M]: tokens x out
                b = x_desc.load([kk * BLOCK_K, on])  # [BLOCK_K, BLOCK_N]: tokens x in
                acc = tl.dot(a.T, b, acc)
            # the fp32 add in SLICES (2 or 4) column slices: a whole 128 x 256 fp32 tile would not fit in shared
            # memory
            acc = tl.reshape(acc, (BLOCK_M, SLICES, BLOCK_N // SLICES)).permute(0, 2, 1)
            if SLICES == 2:
                a0, a1 = tl.split(acc)
                g_desc.store([om, on], g_desc.load([om, on]) + a0)
                g_desc.store([om, on + BLOCK_N // 2], g_desc.load([om, on + BLOCK_N // 2]) + a1)
            else:
                acc = tl.reshape(acc, (BLOCK_M, BLOCK_N // SLICES, 2, 2))
                h0, h1 = tl.split(acc)
                a0, a2 = tl.split(h0)
                a1, a3 = tl.split(h1)
                w = BLOCK_N // 4
                g_desc.store([om, on], g_desc.load([om, on]) + a0)
                g_desc.store([om, on + w], g_desc.load([om, on + w]) + a1)
                g_desc.store([om, on + 2 * w], g_desc.load([om, on + 2 * w]) + a2)
                g_desc.store([om, on + 3 * w], g_desc.load([om, on + 3 * w]) + a3)

    @functools.cache
    def _sm_count(device_index: int) -> int:
        return torch.cuda.get_device_properties(device_index).multi_processor_count

    def accumulate(grad: torch.Tensor, dy: torch.Tensor, x: torch.Tensor, cfg: dict = CONFIG) -> None:
        """grad [out, in] fp32 += dy[tokens, out]^T @ x[tokens, in], in place."""
        (M, N), K = grad.shape, dy.shape[0]
        bm, bn, bk, slices = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["SLICES"]
        if slices not in (2, 4):
            raise ValueError(f"SLICES is {slices}; the kernel adds the fp32 tile in 2 or 4 column slices")
        dy_desc = TensorDescriptor.from_tensor(dy, [bk, bm])
        x_desc = TensorDescriptor.from_tensor(x, [bk, bn])
        g_desc = TensorDescriptor.from_tensor(grad, [bm, bn // slices])
        sms = _sm_count(grad.device.index if grad.device.index is not None else torch.cuda.current_device())
        grid = (min(sms, triton.cdiv(M, bm) * triton.cdiv(N, bn)),)
        _wgrad_kernel[grid](dy_desc, x_desc, g_desc, M, N, K, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                            GROUP_M=cfg["GROUP_M"], SLICES=slices, NUM_SMS=sms,
                            WARP_SPECIALIZE=cfg["WARP_SPECIALIZE"], num_warps=cfg["num_warps"],
                            num_stages=cfg["num_stages"])


def configs(which: str) -> list[dict]:
    if which == "default":
        return [dict(CONFIG)]
    out = []
    for (bm, bn), stages, slices, ws in itertools.product(((128, 256), (128, 128), (256, 128)), (3, 4), (2, 4),
                                                          (False, True)):
        if stages == 4 and bm * bn > 128 * 128:
            continue  # 4 stages of 128 x 256 x 64 bf16 blocks leave no shared memory for the fp32 slices
        out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=64, GROUP_M=8, SLICES=slices, num_warps=8,
                        num_stages=stages, WARP_SPECIALIZE=ws))
    return out


def bench_one(name, tokens, n_in, n_out, cfgs, iters, g) -> dict[str, tuple[float, float]]:
    """variant -> (max error against fp32, ms) for grad [n_out, n_in] += dy^T x over `tokens` tokens."""
    dy = torch.randn(tokens, n_out, device="cuda", generator=g).bfloat16()
    x = torch.randn(tokens, n_in, device="cuda", generator=g).bfloat16()
    base = torch.randn(n_out, n_in, device="cuda", generator=g)
    ref = base + dy.T.float() @ x.float()
    grad = base.clone()

    def cublas():
        torch.addmm(grad, dy.T, x, out_dtype=torch.float32, out=grad)

    def check(fn):
        grad.copy_(base)  # a tile the kernel skipped keeps `base` and is off from `ref` by the whole product
        fn()
        return rel(grad, ref)

    results = {"cublas_fp32": (check(cublas), timed(cublas, iters)),
               "cublas_bf16_alone": (float("nan"), timed(lambda: torch.mm(dy.T, x), iters))}
    for c in cfgs:
        key = "triton " + " ".join(f"{k}={v}" for k, v in c.items())
        try:
            t0 = time.time()
            err = check(lambda c=c: accumulate(grad, dy, x, c))
            results[key] = (err, timed(lambda c=c: accumulate(grad, dy, x, c), iters))
            print(f"{name} {key}: err {err:.2e} {results[key][1] * 1e3:.1f} us (first call {time.time() - t0:.1f} s)",
                  flush=True)
        except Exception as e:  # a configuration that does not compile or fit is reported and skipped
            print(f"{name} {key}: failed {type(e).__name__}: {str(e)[:200]}", flush=True)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--configs", default="sweep", choices=("sweep", "default"))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cfg = preset("smollm3-3b")
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device="cuda").manual_seed(0)
    rows, totals = [], {}
    for name, (n_in, n_out) in shapes(cfg).items():
        flop = 2 * args.tokens * n_in * n_out
        for key, (err, ms) in bench_one(name, args.tokens, n_in, n_out, configs(args.configs), args.iters, g).items():
            rows.append({"gemm": name, "variant": key, "err": err, "ms": ms, "tflops": flop / ms / 1e9})
            totals[key] = totals.get(key, 0.0) + ms * cfg.num_hidden_layers
    print(f"\n{'gemm':8} {'variant':70} {'err':>9} {'us':>8} {'TFLOP/s':>8}")
    for r in rows:  # cuBLAS and the fastest Triton configuration of each GEMM
        if r["variant"].startswith("cublas") or r["ms"] <= min(
                (x["ms"] for x in rows if x["gemm"] == r["gemm"] and x["variant"].startswith("triton")), default=0):
            print(f"{r['gemm']:8} {r['variant'][:70]:70} {r['err']:9.2e} {r['ms'] * 1e3:8.1f} {r['tflops']:8.0f}")
    print("\nper micro-batch, 36 layers (ms): " + ", ".join(
        f"{k}: {v:.2f}" for k, v in sorted(totals.items(), key=lambda kv: kv[1])[:6]))
    if args.out:
        import json

        with open(args.out, "w") as f:
            json.dump({"tokens": args.tokens, "rows": rows, "totals_ms": totals,
                       "device": torch.cuda.get_device_name()}, f, indent=1)


if __name__ == "__main__":
    main()
