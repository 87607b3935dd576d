"""Block shapes for the Triton document-masked attention kernels (smollm3.ops.attention_triton), against torch's FA2.

    PYTHONPATH=src:benchmarks python3 benchmarks/tune_attention.py --out tune.json

Packs are cut as bench_attention.py cuts them and passed as the trainer passes them (offsets padded with empty
documents; q, k, v strided views of one stacked tensor). `--sweep` names the kernels whose block shapes are swept on
the document packs (`--sweep-on causal`: on one window-long document a pack, the long-context stages' case): fwd,
dkdv, dq (each sweep keeps the best shape for the next); `--grid` picks the sweep. Every
configuration is checked against FA2 on the same inputs (output, log-sum-exp, dq, dk, dv as max |diff| / max |FA2|)
and timed as GPU time: `--iters` calls captured in one CUDA graph, so the host's launch cost is left out. The other
layouts run the module's chosen shapes.
"""

from __future__ import annotations

import argparse
import functools
import itertools

import numpy as np
import torch

from bench_attention import doc_lengths, pack_offsets, write_result
from smollm3.ops import attention_triton as AT


def fa2_forward(q, k, v, cu, max_len, scale):
    out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max_len, max_len, 0.0, True,
                                                                      False, scale=scale)
    return out, lse, rng, unused


def fa2_backward(dout, q, k, v, out, lse, cu, max_len, scale, rng, unused):
    return torch.ops.aten._flash_attention_backward(dout, q, k, v, out, lse, cu, cu, max_len, max_len, 0.0, True, rng,
                                                    unused, scale=scale)


def timed(fn, iters: int) -> float:
    """GPU ms per call: `iters` calls captured in one CUDA graph, so the host's launch cost is left out (in the
    compiled trainer the kernel's launch overlaps the GPU's work)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (5 * iters)


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--packs", default="1,4")
    ap.add_argument("--sweep", default="fwd,dkdv,dq", help="which kernels' block shapes to sweep (on --sweep-on)")
    ap.add_argument("--grid", default="full", choices=("full", "tma"),
                    help="full: session 8's block-shape sweep (pointer loads); tma: shapes with TMA descriptor loads, "
                         "key blocks up to 128 wide, and session 8's shapes with pointer loads for reference")
    ap.add_argument("--sweep-on", default="documents", choices=("documents", "causal"),
                    help="the layout the sweep runs on: packs of documents (the trainer's 4k packs) or one causal "
                         "document a pack (--seq 65536: the long-context stages)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev, H, KV, D = torch.device("cuda"), 16, 4, 128
    scale = D ** -0.5
    sweeps = {  # --grid full: the block-shape sweeps of session 8
        "fwd": [dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s, REVERSE=True)
                for m, n, w, s in itertools.product((64, 128), (32, 64), (4, 8), (2, 3)) if n <= m],
        "dkdv": [dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s, HEADS=heads)
                 for n, m, w, s, heads in itertools.product((64, 128), (32, 64), (4, 8), (1, 2), (1, 2, 4))
                 if m <= n],
        "dq": [dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s, REVERSE=True)
               for m, n, w, s in itertools.product((64, 128), (32, 64), (4, 8), (1, 2, 3)) if n <= m],
    }
    if args.grid == "tma":  # blocks loaded through TMA descriptors; key blocks up to 128 wide (session 9)
        rows_keys = ((64, 64), (64, 128), (128, 64), (128, 128))
        sweeps = {"fwd": [dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s, REVERSE=True, TMA=True)
                          for (m, n), w, s in itertools.product(rows_keys, (4, 8), (2, 3, 4))]}
        sweeps["dq"] = [dict(c) for c in sweeps["fwd"]]
        sweeps["dkdv"] = [dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s, HEADS=1, TMA=True)
                          for (m, n), w, s in itertools.product(((32, 64), (64, 64), (32, 128), (64, 128)), (4, 8),
                                                                (2, 3))]
        for kernel, cfgs in sweeps.items():  # the session-8 shapes with pointer loads, for reference
            cfgs.insert(0, {**{"fwd": AT.FWD, "dq": AT.DQ, "dkdv": AT.DKDV}[kernel], "num_stages": 2, "TMA": False})
    rows = []
    for packs, layout in itertools.product([int(p) for p in args.packs.split(",")], ("documents", "causal", "ragged")):
        rng = np.random.default_rng(0)
        if layout == "ragged":  # a total that is no multiple of any block, documents of odd lengths
            lengths = [1, 77, 1000, 300, 1, 2555]
        else:
            lengths = [n for _ in range(packs) for n in (doc_lengths(args.seq, rng) if layout == "documents"
                                                         else [args.seq])]
        total = sum(lengths)
        cu, pairs = pack_offsets(lengths, 1, dev)
        max_len = max(lengths) if layout == "ragged" else args.seq
        flop = 4 * pairs * D * H
        g = torch.Generator(device=dev).manual_seed(packs)
        qkv = torch.randn(total, H + 2 * KV, D, device=dev, dtype=torch.bfloat16, generator=g)
        q, k, v = qkv.split([H, KV, KV], dim=1)  # strided views, as the model's stacked projection gives
        dout = torch.randn(total, H, D, device=dev, dtype=torch.bfloat16, generator=g)
        ref_out, ref_lse, rs, un = fa2_forward(q, k, v, cu, max_len, scale)
        ref_grads = fa2_backward(dout, q, k, v, ref_out, ref_lse, cu, max_len, scale, rs, un)
        t_f = timed(functools.partial(fa2_forward, q, k, v, cu, max_len, scale), args.iters)
        t_b = timed(functools.partial(fa2_backward, dout, q, k, v, ref_out, ref_lse, cu, max_len, scale, rs, un),
                    args.iters)
        name = f"{layout} x{packs}"
        print(f"{name}: {len(lengths)} docs, FA2 forward {t_f:.4f} ms ({flop / t_f / 1e9:.0f} TFLOP/s), backward "
              f"{t_b:.4f} ms ({2.5 * flop / t_b / 1e9:.0f})", flush=True)
        rows.append({"layout": layout, "packs": packs, "backend": "fa2", "fwd_ms": round(t_f, 4),
                     "bwd_ms": round(t_b, 4), "fwd_tflops": round(flop / t_f / 1e9, 1),
                     "bwd_tflops": round(2.5 * flop / t_b / 1e9, 1)})
        best = {"fwd": AT.FWD, "dkdv": AT.DKDV, "dq": AT.DQ}
        for kernel in ("fwd", "dkdv", "dq"):
            cfgs = sweeps[kernel] if layout == args.sweep_on and kernel in args.sweep.split(",") else [best[kernel]]
            timings = []
            for cfg in cfgs:
                trial = {**best, kernel: cfg}
                try:
                    out, lse = AT.forward(q, k, v, cu, scale, trial["fwd"])
                    grads = AT.backward(dout, q, k, v, out, lse, cu, scale, trial["dkdv"], trial["dq"])
                    err = [rel(out, ref_out), rel(lse, ref_lse)] + [rel(a, b) for a, b in zip(grads, ref_grads)]
                    ok = all(e < 2e-2 for e in err)
                    delta = torch.empty_like(lse)
                    part = {"fwd": functools.partial(AT.forward, q, k, v, cu, scale, cfg),
                            "dkdv": functools.partial(AT.backward_dkdv, dout, q, k, v, lse, delta, cu, scale, cfg),
                            "dq": functools.partial(AT.backward_dq, dout, q, k, v, out, lse, delta, cu, scale, cfg)}
                    AT.backward_dq(dout, q, k, v, out, lse, delta, cu, scale, trial["dq"])  # delta, for dK/dV
                    t = timed(part[kernel], args.iters)
                except Exception as e:  # a configuration the compiler rejects (shared memory) is reported, not fatal
                    print(f"  {kernel} {cfg} failed: {type(e).__name__}: {str(e)[:160]}", flush=True)
                    continue
                ref_t = t_f if kernel == "fwd" else t_b  # a backward kernel against FA2's whole backward
                row = {"layout": layout, "packs": packs, "backend": "triton", "kernel": kernel, **cfg,
                       "ms": round(t, 4), "vs_fa2": round(ref_t / t, 3),
                       "rel_err_out_lse_dq_dk_dv": [round(e, 5) for e in err], "ok": ok}
                rows.append(row)
                timings.append((t if ok else float("inf"), cfg))
                print(f"  {kernel} {cfg} {t:.4f} ms (x{row['vs_fa2']:.3f} FA2's {'forward' if kernel == 'fwd' else 'backward'})"
                      f" err {row['rel_err_out_lse_dq_dk_dv']}{'' if ok else '  WRONG'}", flush=True)
            if len(timings) > 1:
                best[kernel] = min(timings, key=lambda x: x[0])[1]
                print(f"  best {kernel}: {best[kernel]}", flush=True)
        whole = timed(functools.partial(AT.backward, dout, q, k, v, out, lse, cu, scale, best["dkdv"], best["dq"]),
                      args.iters)
        print(f"  backward with {best['dkdv']} {best['dq']}: {whole:.4f} ms (x{t_b / whole:.3f} FA2)", flush=True)
        rows.append({"layout": layout, "packs": packs, "best": best, "bwd_ms": round(whole, 4),
                     "bwd_vs_fa2": round(t_b / whole, 3)})
    write_result(args.out, args, rows)


if __name__ == "__main__":
    main()
