"""Triton kernels for decode: a batch-1 step in five or six kernels a layer instead of ~14, and paged attention.

A batch-1 decode step streams every weight once; at 36 layers the rest of the step (norms, RoPE, the KV write,
attention, SwiGLU, residual adds) is ~0.6 ms of small kernels and launch gaps, a fifth of the step. Here each of
those rides on a kernel that runs anyway:
- `linear(x, w, ...)`: the batch-1 GEMV of gemv.py with RMSNorm folded in front (`norm=`), SwiGLU behind the fused
  gate/up product (`swiglu=`), or the residual add behind o_proj and down_proj (`residual=`);
- `attention(qkv, ...)`: RoPE on the new q and k, the KV-cache write and GQA attention over the paged cache (read
  through each row's block table) in one kernel (flash-decoding: the keys are split across programs, partial
  softmax states merged by a second small kernel); any batch size;
- `argmax(logits)`: the greedy choice.
Batch 1 only for the projections: at larger batches the tensor-core GEMMs with inductor's fusions win (fast.py).
Rounding follows the eager model's bf16 steps (matmul outputs, silu(gate), its product with up, residual adds)
except where fusing reorders them: RMSNorm's 1/rms multiplies the fp32 product (one pass over x, no statistics
pass first), and the attention scores stay fp32.
Tiles are chosen per shape by timing on the device, once, outside CUDA-graph capture (gemv.py's rule). On Hopper
every kernel is launched with programmatic dependent launch: it starts while its predecessor drains, loads its first
weight tile, and only then waits (GDC below); SMOLLM3_PDL=0 turns that off.
"""

from __future__ import annotations

import functools
import os

import torch

from smollm3.ops.gemv import triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _gdc_wait(GDC: tl.constexpr):
        # programmatic dependent launch: this kernel may start while the previous one finishes; wait for it (and its
        # memory) before reading what it wrote, then let the next kernel start the same way. Every kernel of the
        # chain waits, so "previous finished" covers all earlier kernels too.
        if GDC:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def _linear_step(acc, acc_up, ss, w, wu, x_ptr, lnw_ptr, rk, kmask, NORM: tl.constexpr, SWIGLU: tl.constexpr):
        x = tl.load(x_ptr + rk, mask=kmask, other=0.0).to(tl.float32)
        if NORM:
            ss += x * x
            x = (x * tl.load(lnw_ptr + rk, mask=kmask, other=0.0).to(tl.float32)).to(w.dtype).to(tl.float32)
        acc += w.to(tl.float32) * x[None, :]
        if SWIGLU:
            acc_up += wu.to(tl.float32) * x[None, :]
        return acc, acc_up, ss

    @triton.jit
    def _load_w(w_ptr, rn, nmask, k0, K, swn, N, BK: tl.constexpr, EVEN_K: tl.constexpr, SWIGLU: tl.constexpr):
        # the weight tile at columns [k0, k0+BK) of rows rn (and, SWIGLU, of the matching up rows N below)
        rk = k0 + tl.arange(0, BK)
        kmask = rk < K
        wmask = nmask[:, None] if EVEN_K else nmask[:, None] & kmask[None, :]
        w = tl.load(w_ptr + rn[:, None] * swn + rk[None, :], mask=wmask, other=0.0)
        wu = w
        if SWIGLU:
            wu = tl.load(w_ptr + (rn + N)[:, None] * swn + rk[None, :], mask=wmask, other=0.0)
        return w, wu, rk, kmask

    @triton.jit
    def _linear_kernel(x_ptr, lnw_ptr, r_ptr, w_ptr, y_ptr, N, K, swn, eps, NORM: tl.constexpr,
                       SWIGLU: tl.constexpr, RESID: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                       EVEN_K: tl.constexpr, GDC: tl.constexpr):
        # y[n] = f(x) . w[n] for one row x, output rows [pid*BN, pid*BN+BN); BK-wide 16-byte loads, fp32 sums.
        # NORM: f = RMSNorm(x) * lnw in one pass: y = rstd * (x * lnw) . w, rstd = rsqrt(mean(x^2) + eps) being
        # one number. SWIGLU: w holds gate rows then up rows (N each): y[n] = silu(gate[n]) * up[n].
        # RESID: y += r[n] (the projection rounded first, as in the eager model).
        # The first weight tile is loaded before waiting on the previous kernel: weights are never written.
        pid = tl.program_id(0)
        rn = pid * BN + tl.arange(0, BN)
        nmask = rn < N
        dt = w_ptr.dtype.element_ty
        acc = tl.zeros((BN, BK), dtype=tl.float32)
        acc_up = tl.zeros((BN, BK), dtype=tl.float32)
        ss = tl.zeros((BK,), dtype=tl.float32)
        w, wu, rk, kmask = _load_w(w_ptr, rn, nmask, 0, K, swn, N, BK, EVEN_K, SWIGLU)
        _gdc_wait(GDC)
        acc, acc_up, ss = _linear_step(acc, acc_up, ss, w, wu, x_ptr, lnw_ptr, rk, kmask, NORM, SWIGLU)
        for k0 in tl.range(BK, K, BK):
            w, wu, rk, kmask = _load_w(w_ptr, rn, nmask, k0, K, swn, N, BK, EVEN_K, SWIGLU)
            acc, acc_up, ss = _linear_step(acc, acc_up, ss, w, wu, x_ptr, lnw_ptr, rk, kmask, NORM, SWIGLU)
        out = tl.sum(acc, axis=1)
        if SWIGLU:
            up = tl.sum(acc_up, axis=1)
        if NORM:
            rstd = tl.rsqrt(tl.sum(ss, axis=0) / K + eps)
            out = out * rstd
            if SWIGLU:
                up = up * rstd
        if SWIGLU:  # gate and up round to bf16 (matmul outputs), silu(gate) too, then their product
            g = out.to(dt).to(tl.float32)
            out = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32) * up.to(dt).to(tl.float32)
        if RESID:
            out = out.to(dt).to(tl.float32) + tl.load(r_ptr + rn, mask=nmask, other=0.0).to(tl.float32)
        tl.store(y_ptr + rn, out.to(dt), mask=nmask)

    @triton.jit
    def _argmax_kernel(x_ptr, out_ptr, V, sx, BLOCK: tl.constexpr, GDC: tl.constexpr):
        # program b: the first index of row b's largest value (torch.argmax's choice among ties)
        b = tl.program_id(0)
        _gdc_wait(GDC)
        best = tl.max(tl.full((2,), float("-inf"), tl.float32), axis=0)
        idx = tl.sum(tl.zeros((2,), tl.int64), axis=0)
        for v0 in tl.range(0, V, BLOCK):
            r = v0 + tl.arange(0, BLOCK)
            vals = tl.load(x_ptr + b * sx + r, mask=r < V, other=float("-inf")).to(tl.float32)
            m = tl.max(vals, axis=0)
            i = tl.argmax(vals, axis=0)
            better = m > best
            idx = tl.where(better, v0 + i, idx)
            best = tl.where(better, m, best)
        tl.store(out_ptr + b, idx)

    @triton.jit
    def _kv_block(kc_ptr, vc_ptr, tbase, hoff, p0, L, stop, s_blk, s_ks, rd, HALF: tl.constexpr, BLOCK: tl.constexpr,
                  BS: tl.constexpr):
        # cached keys and values at positions [p0, p0+BLOCK) below L (zeros elsewhere), found through the block
        # table (position p: block tbase[p // BS], row p % BS); which are attended (valid) and which is the new
        # token's position L (now: taken from registers, not the cache)
        at = p0 + tl.arange(0, BLOCK)
        valid = at < stop
        cached = valid & (at < L)
        blk = tl.load(tbase + at // BS, mask=cached, other=0).to(tl.int64)  # int64: caches pass 2^31 elements
        off = (blk * s_blk + hoff + (at % BS) * s_ks)[:, None] + rd[None, :]
        return (tl.load(kc_ptr + off, mask=cached[:, None], other=0.0),
                tl.load(kc_ptr + off + HALF, mask=cached[:, None], other=0.0),
                tl.load(vc_ptr + off, mask=cached[:, None], other=0.0),
                tl.load(vc_ptr + off + HALF, mask=cached[:, None], other=0.0),
                valid, (at == L)[:, None])

    @triton.jit
    def _attend(m, lsum, acc1, acc2, q1, q2, k1, k2, v1, v2, kb1, kb2, vb1, vb2, valid, now, scale):
        # one block of keys into the online softmax (head dim in two halves, as RoPE splits it); the row `now`
        # holds the new key and value k1|k2, v1|v2
        kb1, kb2 = tl.where(now, k1[None, :], kb1), tl.where(now, k2[None, :], kb2)
        vb1, vb2 = tl.where(now, v1[None, :], vb1), tl.where(now, v2[None, :], vb2)
        s = (tl.dot(q1, tl.trans(kb1)) + tl.dot(q2, tl.trans(kb2))) * scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        pd = p.to(kb1.dtype)
        return (m_new, lsum * alpha + tl.sum(p, axis=1), acc1 * alpha[:, None] + tl.dot(pd, vb1),
                acc2 * alpha[:, None] + tl.dot(pd, vb2))

    @triton.jit
    def _prefetch_l2(ptr, lines, pid, nprog, LINE: tl.constexpr):
        # program pid's share of the first `lines` 128-byte lines at ptr (LINE elements each) requested into L2:
        # no registers filled, nothing waited for. The dummy result is what inline asm must return.
        per = tl.cdiv(lines, nprog)
        last = tl.minimum(pid * per + per, lines) - 1
        for i in tl.range(0, per, 1024):
            at = tl.minimum(pid * per + i + tl.arange(0, 1024), last).to(tl.int64)
            tl.inline_asm_elementwise("mov.u32 $0, 0;\n\tprefetch.global.L2 [$1];", "=r,l", [ptr + at * LINE],
                                      dtype=tl.int32, is_pure=False, pack=1)

    @triton.jit
    def _attention_kernel(qkv_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, len_ptr, table_ptr, o_ptr, part_ptr, ml_ptr,
                          s_qkv, s_cos, s_tb, s_blk, s_kh, s_ks, scale, CHUNK,
                          H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, G: tl.constexpr, GP: tl.constexpr,
                          BLOCK: tl.constexpr, BS: tl.constexpr, NSPLIT: tl.constexpr, ROPE: tl.constexpr,
                          GDC: tl.constexpr):
        # program (b, kv head, split): RoPE on the row's new q (G heads) and k, the cache write (by the split that
        # holds position L = lengths[b]), then online-softmax attention over positions [split*CHUNK, ...) ∩ [0, L],
        # the new key and value taken from registers. One split: the normalised output; several: partial states.
        # The cache is paged: row b's position p is in block table[b, p // BS] at row p % BS.
        # The split's first block of cached keys and values is loaded before waiting on the previous kernel: the
        # cache below L, the block table and the lengths were written by earlier steps, only qkv by the kernel just
        # before.
        b = tl.program_id(0).to(tl.int64)
        kvh = tl.program_id(1)
        sp = tl.program_id(2)
        HALF: tl.constexpr = D // 2
        rd = tl.arange(0, HALF)
        dt = kc_ptr.dtype.element_ty
        L = tl.load(len_ptr + b)
        start = sp * CHUNK
        stop = tl.minimum(start + CHUNK, L + 1)
        tbase = table_ptr + b * s_tb
        hoff = kvh * s_kh
        kb1, kb2, vb1, vb2, valid, now = _kv_block(kc_ptr, vc_ptr, tbase, hoff, start, L, stop, s_blk, s_ks, rd, HALF,
                                                   BLOCK, BS)
        _gdc_wait(GDC)
        rg = tl.arange(0, GP)
        gmask = rg < G
        row = qkv_ptr + b * s_qkv
        qoff = (kvh * G + rg)[:, None] * D + rd[None, :]
        q1 = tl.load(row + qoff, mask=gmask[:, None], other=0.0).to(tl.float32)
        q2 = tl.load(row + qoff + HALF, mask=gmask[:, None], other=0.0).to(tl.float32)
        kn = row + H * D + kvh * D
        k1 = tl.load(kn + rd).to(tl.float32)
        k2 = tl.load(kn + HALF + rd).to(tl.float32)
        vn = row + (H + KV) * D + kvh * D
        v1 = tl.load(vn + rd)
        v2 = tl.load(vn + HALF + rd)
        if ROPE:  # x * cos + rotate_half(x) * sin, on halves: rotate_half(x) = (-x2, x1)
            c1 = tl.load(cos_ptr + b * s_cos + rd).to(tl.float32)
            c2 = tl.load(cos_ptr + b * s_cos + HALF + rd).to(tl.float32)
            n1 = tl.load(sin_ptr + b * s_cos + rd).to(tl.float32)
            n2 = tl.load(sin_ptr + b * s_cos + HALF + rd).to(tl.float32)
            q1, q2 = q1 * c1[None, :] - q2 * n1[None, :], q2 * c2[None, :] + q1 * n2[None, :]
            k1, k2 = k1 * c1 - k2 * n1, k2 * c2 + k1 * n2
        q1, q2, k1, k2 = q1.to(dt), q2.to(dt), k1.to(dt), k2.to(dt)
        if (start <= L) & (L < start + CHUNK):
            at_l = tl.load(tbase + L // BS).to(tl.int64) * s_blk + hoff + (L % BS) * s_ks
            tl.store(kc_ptr + at_l + rd, k1)
            tl.store(kc_ptr + at_l + HALF + rd, k2)
            tl.store(vc_ptr + at_l + rd, v1)
            tl.store(vc_ptr + at_l + HALF + rd, v2)
        m = tl.full((GP,), float("-inf"), tl.float32)
        lsum = tl.zeros((GP,), tl.float32)
        acc1 = tl.zeros((GP, HALF), tl.float32)
        acc2 = tl.zeros((GP, HALF), tl.float32)
        if start <= L:  # an empty split (all its positions past L) keeps m = -inf, lsum = 0
            m, lsum, acc1, acc2 = _attend(m, lsum, acc1, acc2, q1, q2, k1, k2, v1, v2, kb1, kb2, vb1, vb2, valid,
                                          now, scale)
        # the split's later blocks (long contexts); names of their own: p0 is int64, and reusing the first block's
        # names would make them loop-carried
        for p0 in tl.range(start + BLOCK, stop, BLOCK):
            nk1, nk2, nv1, nv2, ok, is_l = _kv_block(kc_ptr, vc_ptr, tbase, hoff, p0, L, stop, s_blk, s_ks, rd, HALF,
                                                     BLOCK, BS)
            m, lsum, acc1, acc2 = _attend(m, lsum, acc1, acc2, q1, q2, k1, k2, v1, v2, nk1, nk2, nv1, nv2, ok, is_l,
                                          scale)
        heads = kvh * G + rg
        if NSPLIT == 1:
            out = o_ptr + b * H * D + heads[:, None] * D + rd[None, :]
            inv = 1.0 / lsum
            tl.store(out, (acc1 * inv[:, None]).to(dt), mask=gmask[:, None])
            tl.store(out + HALF, (acc2 * inv[:, None]).to(dt), mask=gmask[:, None])
        else:  # partial state of this split: part [b, H, NSPLIT, D], ml [b, H, NSPLIT, 2]
            slot = (b * H + heads) * NSPLIT + sp
            out = part_ptr + slot[:, None] * D + rd[None, :]
            tl.store(out, acc1, mask=gmask[:, None])
            tl.store(out + HALF, acc2, mask=gmask[:, None])
            tl.store(ml_ptr + slot * 2, m, mask=gmask)
            tl.store(ml_ptr + slot * 2 + 1, lsum, mask=gmask)

    @triton.jit
    def _merge_kernel(part_ptr, ml_ptr, o_ptr, pf_ptr, pf_lines, H: tl.constexpr, D: tl.constexpr,
                      NSPLIT: tl.constexpr, PREFETCH: tl.constexpr, LINE: tl.constexpr, GDC: tl.constexpr):
        # program (b, head): out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s
        b = tl.program_id(0)
        h = tl.program_id(1)
        if PREFETCH:  # while the attention kernel runs (latency-bound, the bandwidth idle): o_proj's weight into L2
            _prefetch_l2(pf_ptr, pf_lines, b * H + h, tl.num_programs(0) * H, LINE)
        _gdc_wait(GDC)
        rs = tl.arange(0, NSPLIT)
        rd = tl.arange(0, D)
        base = (b * H + h) * NSPLIT
        m = tl.load(ml_ptr + (base + rs) * 2)
        lsum = tl.load(ml_ptr + (base + rs) * 2 + 1)
        w = tl.exp(m - tl.max(m, axis=0))  # an empty split has m = -inf: weight 0
        acc = tl.load(part_ptr + (base + rs)[:, None] * D + rd[None, :])
        out = tl.sum(acc * w[:, None], axis=0) / tl.sum(lsum * w, axis=0)
        tl.store(o_ptr + (b * H + h) * D + rd, out.to(o_ptr.dtype.element_ty))


# (BN, BK, num_warps, num_stages); SWIGLU tiles read 2 x BN rows
_TILES = [(2, 1024, 4, 1), (4, 1024, 4, 1), (4, 512, 4, 3), (8, 512, 4, 1), (8, 256, 4, 3), (16, 256, 4, 1),
          (16, 256, 8, 3), (16, 512, 8, 1), (32, 256, 8, 1), (2, 2048, 8, 1), (4, 2048, 8, 1)]
_choice: dict[tuple, tuple] = {}
tuning_log: list[dict] = []


def _pdl(t: torch.Tensor) -> dict:
    """Launch options for programmatic dependent launch: Hopper or newer, compiled (not the CPU interpreter)."""
    return _pdl_options(t.device.index if t.is_cuda else None)


@functools.cache
def _pdl_options(cuda_index: int | None) -> dict:
    if cuda_index is not None and torch.cuda.get_device_capability(cuda_index)[0] >= 9 \
            and os.environ.get("SMOLLM3_PDL", "1") != "0":
        return {"GDC": True, "launch_pdl": True}
    return {"GDC": False}


def _launch(tile, x, w, y, *, norm=None, residual=None, eps=0.0, swiglu=False):
    bn, bk, nw, ns = tile
    n, k = y.shape[-1], w.shape[1]
    _linear_kernel[(triton.cdiv(n, bn),)](
        x, norm if norm is not None else w, residual if residual is not None else y, w, y, n, k, w.stride(0), eps,
        NORM=norm is not None, SWIGLU=swiglu, RESID=residual is not None, BN=bn, BK=bk, EVEN_K=k % bk == 0,
        num_warps=nw, num_stages=ns, **_pdl(w))
    return y


def linear(x: torch.Tensor, w: torch.Tensor, *, norm: torch.Tensor | None = None, eps: float = 0.0,
           swiglu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
    """y = f(x) @ w.T (+ residual) for one row x [1, K], one kernel. `norm` (an RMSNorm weight): f(x) = RMSNorm(x).
    `swiglu`: w is the fused [gate; up] weight [2N, K] and y = silu(x @ gate.T) * (x @ up.T). All contiguous, in
    w's dtype."""
    if x.shape[0] != 1 or x.shape[1] != w.shape[1]:
        raise ValueError(f"linear: x {tuple(x.shape)} must be one row of w's width {w.shape[1]}")
    n = w.shape[0] // 2 if swiglu else w.shape[0]
    y = torch.empty(1, n, dtype=w.dtype, device=w.device)
    kw = dict(norm=norm, residual=residual, eps=eps, swiglu=swiglu)
    key = (n, w.shape[1], w.dtype, norm is not None, swiglu, residual is not None)
    tile = _choice.get(key)
    if tile is None:
        if x.is_cuda and not torch.cuda.is_current_stream_capturing():
            tile = _tune(key, x, w, y, kw)
        _choice[key] = tile = tile or (4, 512, 4, 1)  # a safe default (CPU interpreter, or first seen in a capture)
    return _launch(tile, x, w, y, **kw)


def _tune(key, x, w, y, kw) -> tuple | None:
    """The fastest tile, timed as the decode step runs it: back to back inside a CUDA graph (launch gaps and the
    overlap of programmatic dependent launch included), on copies of w that together exceed the L2 cache."""
    nbytes = w.numel() * w.element_size()
    try:
        copies = [w] + [w.clone() for _ in range(min(7, (160 << 20) // nbytes))]
    except torch.OutOfMemoryError:  # a full GPU: time on w alone (small shapes then read partly from L2)
        copies = [w]
    reps = max(8, len(copies))
    times = {}
    for tile in _TILES:
        try:
            _launch(tile, x, w, y, **kw)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for i in range(reps):
                    _launch(tile, x, copies[i % len(copies)], y, **kw)
            graph.replay()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(5):
                graph.replay()
            end.record()
            end.synchronize()
            times[tile] = start.elapsed_time(end) / (5 * reps)
        except Exception:  # noqa: BLE001 (a tile that does not compile or fit is skipped)
            continue
    if not times:
        return None
    best = min(times, key=times.get)
    tuning_log.append({"n": key[0], "k": key[1], "norm": key[3], "swiglu": key[4], "residual": key[5],
                       "tile": list(best), "us": round(times[best] * 1e3, 2),
                       "tbps": round(nbytes / times[best] / 1e9, 3),
                       "all_us": {str(list(t)): round(v * 1e3, 2) for t, v in times.items()}})
    return best


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """torch.argmax(logits, -1) for [b, V] logits in one program per row, 32k entries a step (torch's reduction
    takes ~30 us on 128k entries, most of it waiting)."""
    out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    _argmax_kernel[(logits.shape[0],)](logits, out, logits.shape[1], logits.stride(0), BLOCK=32768, num_warps=32,
                                       **_pdl(logits))
    return out


def attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              lengths: torch.Tensor, tables: torch.Tensor, kv_len: int, *, heads: int, kv_heads: int, scale: float,
              rope: bool, prefetch: torch.Tensor | None = None) -> torch.Tensor:
    """Decode attention for one new token per row through a paged cache. qkv [b, (H + 2 KV) * D] before RoPE;
    k_cache, v_cache [num_blocks, KV, block_size, D] (one layer's); tables [b, >= kv_len / block_size] block ids
    per row; the new k, v are written at position lengths[b]; keys 0..lengths[b] are attended; kv_len bounds them
    all (the graph's bucket). `prefetch`: a tensor the next kernel reads (o_proj's weight), requested into the L2
    cache by the merge kernel's programs while they wait for the attention kernel, which is bound by memory latency
    and leaves the bandwidth idle (CUDA, several key splits). -> [b, H * D]."""
    b = qkv.shape[0]
    D, bs = k_cache.shape[-1], k_cache.shape[2]
    g = heads // kv_heads
    block = 64
    # enough programs to fill the GPU (~2 per SM), but chunks of at least one block
    nsplit = max(1, min(triton.cdiv(kv_len, 64), 256 // max(1, b * kv_heads)))
    nsplit = 1 << (nsplit.bit_length() - 1)
    chunk = triton.cdiv(triton.cdiv(kv_len, nsplit), block) * block
    out = torch.empty(b, heads * D, dtype=qkv.dtype, device=qkv.device)
    part = ml = out
    if nsplit > 1:
        part = torch.empty(b, heads, nsplit, D, dtype=torch.float32, device=qkv.device)
        ml = torch.empty(b, heads, nsplit, 2, dtype=torch.float32, device=qkv.device)
    assert k_cache.stride(-1) == 1 and k_cache.stride() == v_cache.stride() and bs & (bs - 1) == 0
    _attention_kernel[(b, kv_heads, nsplit)](
        qkv, cos, sin, k_cache, v_cache, lengths, tables, out, part, ml, qkv.stride(0), cos.stride(0),
        tables.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), scale, chunk, H=heads, KV=kv_heads,
        D=D, G=g, GP=max(16, triton.next_power_of_2(g)), BLOCK=block, BS=bs, NSPLIT=nsplit, ROPE=rope, num_warps=4,
        **_pdl(qkv))
    if nsplit > 1:
        pf = prefetch is not None and qkv.is_cuda
        line = 128 // (prefetch if pf else qkv).element_size()
        _merge_kernel[(b, heads)](part, ml, out, prefetch if pf else out, prefetch.numel() // line if pf else 0,
                                  H=heads, D=D, NSPLIT=nsplit, PREFETCH=pf, LINE=line, num_warps=4, **_pdl(qkv))
    return out
