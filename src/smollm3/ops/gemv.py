"""Bandwidth-bound matrix-vector products for small-batch decode: y[b, N] = x[b, K] @ w[N, K]^T, b small.

At batch 1 the decode step is one pass over every weight, so each product should stream its weight at the copy
bandwidth. cuBLAS reaches ~2.2 TB/s on these shapes on an H100 (3.0 TB/s copy): its GEMV-shaped kernels tile for
a matrix product. Here a Triton kernel gives each program BN rows of w and walks K in BK-wide, 16-byte-vector
loads, accumulating in fp32 (b = 1: products summed once at the end; b > 1: a tensor-core dot with the batch padded
to 16). Which kernel and tile runs is decided per (b, N, K, dtype) by timing, once, on the device, with the L2 cache
flushed before every timed call (every candidate must stream from HBM, as in the real step); cuBLAS is one of the
candidates, so a shape where it wins keeps it. Only bf16/fp16 weights use Triton (fp32 stays on cuBLAS, exact).

`small_linear` is a torch custom op, so it sits inside torch.compile'd code and CUDA graphs; it never tunes while
a graph is being captured (an untuned shape then falls back to cuBLAS).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:  # triton ships with CUDA builds of torch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover (CPU-only installs)
    triton = None

ATEN = "aten"
_choice: dict[tuple, object] = {}
tuning_log: list[dict] = []  # one row per tuned shape: times of cuBLAS and of the best Triton tile


def available() -> bool:
    return triton is not None and torch.cuda.is_available() and os.environ.get("SMOLLM3_TRITON_GEMV", "1") != "0"


if triton is not None:
    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, y_ptr, B, N, K, sxb, swn, syb, sys,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr):
        # program (n, s) computes rows [n*BN, n*BN+BN) over K-slice s (K here is the slice length; split-K writes
        # fp32 partials at y + s*sys, summed by the caller)
        pid = tl.program_id(0)
        ks = tl.program_id(1)
        rn = pid * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK) + ks * K
        y_ptr += ks * sys
        nmask = rn < N
        w_ptrs = w_ptr + rn[:, None] * swn + rk[None, :]
        if DOT:
            rm = tl.arange(0, BM)
            mmask = rm < B
            x_ptrs = x_ptr + rm[:, None] * sxb + rk[None, :]
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for _ in tl.range(0, K, BK):  # K % BK == 0 (the tuner only offers such tiles)
                w = tl.load(w_ptrs, mask=nmask[:, None], other=0.0)
                x = tl.load(x_ptrs, mask=mmask[:, None], other=0.0)
                acc += tl.dot(x, tl.trans(w))
                w_ptrs += BK
                x_ptrs += BK
            tl.store(y_ptr + rm[:, None] * syb + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                     mask=mmask[:, None] & nmask[None, :])
        else:
            acc = tl.zeros((BN, BK), dtype=tl.float32)
            x_ptrs = x_ptr + rk
            for _ in tl.range(0, K, BK):
                w = tl.load(w_ptrs, mask=nmask[:, None], other=0.0)
                x = tl.load(x_ptrs)
                acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
                w_ptrs += BK
                x_ptrs += BK
            tl.store(y_ptr + rn, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=nmask)


# (BN, BK, num_warps, num_stages); split-K tiles take one BK-wide K-slice per program: (BN, BK, num_warps)
_SUM_TILES = [(4, 1024, 4, 1), (8, 512, 4, 1), (8, 256, 4, 3), (16, 256, 4, 1), (16, 256, 8, 3), (16, 512, 8, 1),
              (32, 256, 8, 1), (32, 128, 4, 3), (64, 128, 8, 1)]
_DOT_TILES = [(16, 256, 4, 3), (32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4), (64, 256, 8, 3), (128, 128, 8, 3)]


_SPLIT_SUM_TILES = [(8, 256, 4), (16, 256, 4), (32, 256, 8), (16, 512, 4)]
_SPLIT_DOT_TILES = [(16, 256, 4), (32, 256, 4), (64, 256, 8)]


def candidates(b: int, n: int, k: int) -> list[tuple]:
    """Triton configurations (BM, BN, BK, DOT, num_warps, num_stages, SPLIT) for this shape. Split-K (SPLIT > 1,
    one BK-wide slice per program) is offered for long K with few rows (the down projection: N 2048, K 11008)."""
    if b > 64:
        return []
    dot = b > 1
    bm = 1 if not dot else max(16, 1 << (b - 1).bit_length())
    out = [(bm, bn, bk, dot, nw, ns, 1) for bn, bk, nw, ns in (_DOT_TILES if dot else _SUM_TILES) if k % bk == 0]
    if k >= 4 * n:
        out += [(bm, bn, bk, dot, nw, 1, k // bk) for bn, bk, nw in (_SPLIT_DOT_TILES if dot else _SPLIT_SUM_TILES)
                if k % bk == 0]
    return out


def launch(x: torch.Tensor, w: torch.Tensor, cfg: tuple, out: torch.Tensor | None = None) -> torch.Tensor:
    bm, bn, bk, dot, nw, ns, split = cfg
    b, k = x.shape
    n = w.shape[0]
    y = torch.empty(b, n, dtype=x.dtype, device=x.device) if out is None else out
    grid = (triton.cdiv(n, bn), split)
    if split == 1:
        _gemv_kernel[grid](x, w, y, b, n, k, x.stride(0), w.stride(0), y.stride(0), 0,
                           BM=bm, BN=bn, BK=bk, DOT=dot, num_warps=nw, num_stages=ns)
        return y
    part = torch.empty(split, b, n, dtype=torch.float32, device=x.device)
    _gemv_kernel[grid](x, w, part, b, n, k // split, x.stride(0), w.stride(0), n, b * n,
                       BM=bm, BN=bn, BK=bk, DOT=dot, num_warps=nw, num_stages=ns)
    return torch.sum(part, 0, out=y) if y.dtype == torch.float32 else y.copy_(part.sum(0))


def _tune(x: torch.Tensor, w: torch.Tensor):
    from triton.testing import do_bench

    b, k = x.shape
    n = w.shape[0]
    nbytes = w.numel() * w.element_size()
    ref = F.linear(x, w)
    times = {ATEN: do_bench(lambda: F.linear(x, w), warmup=5, rep=25, return_mode="median")}
    for cfg in candidates(b, n, k):
        try:
            y = launch(x, w, cfg)
            err = ((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()
            if not err < 2e-2:  # a wrong tile is never chosen (NaN fails too)
                continue
            times[cfg] = do_bench(lambda c=cfg: launch(x, w, c), warmup=5, rep=25, return_mode="median")
        except Exception:  # noqa: BLE001 (a tile that does not compile or fit is skipped)
            continue
    best = min(times, key=times.get)
    tri = {c: t for c, t in times.items() if c != ATEN}
    best_tri = min(tri, key=tri.get) if tri else None
    tuning_log.append({"b": b, "n": n, "k": k, "dtype": str(w.dtype).replace("torch.", ""),
                       "cublas_us": round(times[ATEN] * 1e3, 2), "cublas_tbps": round(nbytes / times[ATEN] / 1e9, 3),
                       "triton_us": round(tri[best_tri] * 1e3, 2) if tri else None,
                       "triton_tbps": round(nbytes / tri[best_tri] / 1e9, 3) if tri else None,
                       "triton_tile": list(best_tri) if tri else None, "chosen": "cublas" if best == ATEN else "triton"})
    return best


def choose(x: torch.Tensor, w: torch.Tensor):
    if not (available() and x.is_cuda and w.dtype in (torch.bfloat16, torch.float16) and x.dtype == w.dtype
            and x.dim() == 2 and w.is_contiguous() and w.shape[1] % 128 == 0):
        return ATEN
    key = (x.shape[0], w.shape[0], w.shape[1], w.dtype)
    c = _choice.get(key)
    if c is None:
        if torch.cuda.is_current_stream_capturing():
            return ATEN  # never time inside a capture; warm-up runs before it
        c = _choice[key] = _tune(x.contiguous(), w)
    return c


@torch.library.custom_op("smollm3::small_linear", mutates_args=())
def small_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """F.linear(x, w) for x [b, K], b small: the faster of cuBLAS and the Triton GEMV for this shape."""
    c = choose(x, w)
    if c == ATEN:
        return F.linear(x, w)
    return launch(x.contiguous(), w, c)


@small_linear.register_fake
def _(x, w):
    return x.new_empty(x.shape[0], w.shape[0])
