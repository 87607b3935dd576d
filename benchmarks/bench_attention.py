"""Document-masked attention kernels on one GPU, forward and forward+backward, at the 3B preset's shape.

    python3 benchmarks/bench_attention.py --out results.json

Packs of `--seq` tokens are cut into documents with exponential lengths (mean 1024, as bench_train.py), 16 query
heads over 4 KV heads of 128. Each backend is timed with CUDA events and checked against torch's flash-attention
varlen (FA2, the trainer's kernel) on the same inputs, with the document offsets and length bound the compiled
trainer passes (offsets padded with empty documents to a power-of-two count, bound = the row length): the output
and the three input gradients, as max |diff| over max |reference|. TFLOP/s count only the unmasked (query, key)
pairs: 4 * pairs * head_dim * heads forward, 2.5x that backward.

Backends: fa2 (torch's FA2: aten._flash_attention_forward/backward called directly, GQA native; the model's varlen
path where attention_triton's kernels do not apply; benchmarks/tune_attention.py times those against it),
fa2-exact (the same with the longest document as the length bound, as eager calls pass),
fa2-op (the same kernels through torch.nn.attention.varlen's Python custom op, K/V heads repeated where that
takes no GQA), flex (compiled FlexAttention with a document-causal block mask), triton (ours, ops/attention_triton.py,
as the trainer calls it), sdpa-cudnn_attention / sdpa-flash_attention / sdpa-efficient_attention (torch's SDPA held
to one backend, plain causal: timed on the causal layout only, where each pack is one document). With `--packs 1` a call is one
layer's attention for one 4,096-token micro-batch, so host time per call shows; more packs make it GPU-bound.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from smollm3.ops.attention import DocumentMask


def doc_lengths(seq: int, rng) -> list[int]:
    out = []
    while sum(out) < seq:
        out.append(max(16, int(rng.exponential(1024))))
    out[-1] -= sum(out) - seq
    return [n for n in out if n > 0]


def pack_offsets(lengths: list[int], rows: int, device) -> tuple[torch.Tensor, int]:
    """Documents of `lengths` laid out in `rows` equal rows -> (cu_seqlens as the trainer passes them: DocumentMask's,
    padded with empty documents; the number of unmasked (query, key) pairs)."""
    positions = torch.cat([torch.arange(n) for n in lengths]).view(rows, -1)
    cu = DocumentMask.from_position_ids(positions).cu_seqlens.to(device)
    return cu, sum(n * (n + 1) // 2 for n in lengths)


def write_result(path: str | None, args, rows: list[dict]) -> None:
    if path:
        result = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                  "args": vars(args), "rows": rows}
        with open(path, "w") as f:
            json.dump(result, f, indent=1)


def fa2(q, k, v, cu, max_len, scale):
    from smollm3.ops.attention import _varlen_impl  # torch's FA2 (attention._FlashVarlen) or the flash-attn package

    return _varlen_impl()(q, k, v, cu, max_len, scale)


def fa2_custom_op(q, k, v, cu, max_len, scale):
    """The same FA2 kernels through torch.nn.attention.varlen's Python custom op (the trainer's path before)."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    if "enable_gqa" not in params:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scale, **causal)
    return varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scale, enable_gqa=True, **causal)


def triton_kernels(q, k, v, cu, max_len, scale):
    """Ours: ops/attention_triton.py's kernels as the trainer's varlen backend calls them."""
    from smollm3.ops.attention import _TritonVarlen

    return _TritonVarlen.apply(q, k, v, cu, scale)


def make_sdpa(packs: int, backend_name: str):
    """torch's SDPA on one backend (CUDNN_ATTENTION, FLASH_ATTENTION, ...), plain causal over each pack: valid only
    where every pack is one document (the causal layout)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def run(q, k, v, cu, max_len, scale):
        def rows(x):  # [packs * seq, heads, D] -> [packs, heads, seq, D]
            return x.view(packs, -1, *x.shape[1:]).transpose(1, 2)
        with sdpa_kernel(backend):
            o = torch.nn.functional.scaled_dot_product_attention(rows(q), rows(k), rows(v), is_causal=True,
                                                                 scale=scale, enable_gqa=True)
        return o.transpose(1, 2).reshape(q.shape)
    return run


def make_flex(lengths, heads, device):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    doc = torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                  torch.tensor(lengths, device=device))
    n = doc.numel()
    mask = create_block_mask(lambda b, h, qi, ki: (doc[qi] == doc[ki]) & (qi >= ki), 1, None, n, n, device=device)
    compiled = torch.compile(flex_attention, dynamic=False)

    def run(q, k, v, cu, max_len, scale):
        o = compiled(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=mask,
                     scale=scale, enable_gqa=True)
        return o[0].transpose(0, 1)
    return run


def timed(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def measure(fn, q, k, v, dout, cu, max_len, scale, iters):
    """-> ([out, dq, dk, dv] in fp32, forward ms, forward+backward ms)."""
    qq, kk, vv = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(qq, kk, vv, cu, max_len, scale)
    out.backward(dout)
    got = [out.detach().float(), qq.grad.float(), kk.grad.float(), vv.grad.float()]

    def fwd():
        with torch.no_grad():
            fn(q, k, v, cu, max_len, scale)

    def fwd_bwd():
        qq.grad = kk.grad = vv.grad = None
        fn(qq, kk, vv, cu, max_len, scale).backward(dout)
    return got, timed(fwd, iters), timed(fwd_bwd, iters)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--backends", default="fa2,fa2-exact,fa2-op,flex")
    ap.add_argument("--packs", type=int, default=1, help="packs of --seq tokens in one call")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    rows = []
    for layout in ("documents", "causal"):
        rng = np.random.default_rng(0)
        lengths = [n for _ in range(args.packs) for n in (doc_lengths(args.seq, rng) if layout == "documents"
                                                          else [args.seq])]
        total = args.seq * args.packs
        # as the trainer calls the kernels: the row length as the bound on every document (what compiled layers pass)
        cu, pairs = pack_offsets(lengths, args.packs, dev)
        max_len, scale = args.seq, args.head_dim ** -0.5
        flop_fwd = 4 * pairs * args.head_dim * args.heads
        g = torch.Generator(device=dev).manual_seed(0)
        q = torch.randn(total, args.heads, args.head_dim, device=dev, dtype=torch.bfloat16, generator=g)
        k = torch.randn(total, args.kv_heads, args.head_dim, device=dev, dtype=torch.bfloat16, generator=g)
        v = torch.randn(total, args.kv_heads, args.head_dim, device=dev, dtype=torch.bfloat16, generator=g)
        dout = torch.randn(total, args.heads, args.head_dim, device=dev, dtype=torch.bfloat16, generator=g)
        ref = None
        for name in args.backends.split(","):
            if name.startswith("sdpa-") and layout != "causal":
                continue  # plain causal attention: right only where a pack is one document
            fn = {"fa2": fa2, "fa2-exact": fa2, "fa2-op": fa2_custom_op, "triton": triton_kernels}.get(name) or (
                make_sdpa(args.packs, name[5:].upper()) if name.startswith("sdpa-") else
                make_flex(lengths, args.heads, dev))
            bound = max(lengths) if name.endswith("-exact") else max_len
            try:
                got, t_f, t_fb = measure(fn, q, k, v, dout, cu, bound, scale, args.iters)
            except Exception as e:  # a backend this torch build lacks is reported, not fatal
                print(f"{layout:<9} {name:<6} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                rows.append({"layout": layout, "backend": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
                continue
            if ref is None:
                ref = got
            err = [round(((a - b).abs().max() / b.abs().max()).item(), 5) for a, b in zip(got, ref)]
            row = {"layout": layout, "backend": name, "docs": len(lengths), "pairs": pairs, "fwd_ms": round(t_f, 4),
                   "fwd_bwd_ms": round(t_fb, 4), "fwd_tflops": round(flop_fwd / t_f / 1e9, 1),
                   "fwd_bwd_tflops": round(3.5 * flop_fwd / t_fb / 1e9, 1),
                   "rel_err_out_dq_dk_dv_vs_fa2": err, "packs": args.packs}
            rows.append(row)
            print(f"{layout:<9} {name:<6} fwd {t_f:7.3f} ms ({row['fwd_tflops']:6.1f} TFLOP/s)  fwd+bwd {t_fb:7.3f} ms "
                  f"({row['fwd_bwd_tflops']:6.1f} TFLOP/s)  rel err vs fa2 {err}", flush=True)
    write_result(args.out, args, rows)


if __name__ == "__main__":
    main()
