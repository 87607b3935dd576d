"""Document-masked causal attention with grouped-query heads as Triton kernels: the varlen backend's training path.

Inputs as flash-attention varlen takes them: flattened tokens q [tokens, heads, D], k, v [tokens, kv_heads, D], and
cu_seqlens, the document offsets (padded at the end with empty documents, as DocumentMask builds them). torch's FA2
does the same work at ~140 TFLOP/s forward and ~130 backward on the trainer's 4,096-token packs of ~600-token
documents (H100): its 128-row tiles waste much of their work at document edges, and its GQA backward writes dK, dV
per query head before summing them. Here (benchmarks/results/2026-11-24-h100-attention-triton.md and
2026-11-24-h100-wgrad-attention-tma.md: 1.60x FA2's forward, 1.48x its backward on those packs):

- forward: 64 query rows of one head a program; key blocks from the first row's document start to the diagonal.
  A row's document start is the largest offset at or before it, found against the whole (short) offset vector, so
  rows of one block may belong to different documents. Only the blocks that cross a document start or the
  diagonal compute a mask. Writes the output and the natural-log log-sum-exp [heads, tokens].
- backward, dQ: the forward's walk again, recomputing the probabilities from the log-sum-exp; it also writes each
  row's delta = rowsum(dO * O).
- backward, dK and dV: 64 keys and one query head a program, walking the query rows from the diagonal to the end
  of each key's document (a program per KV head looping over its group measured slower: fewer, longer programs
  balance worse). With grouped heads each query head writes its share of dK, dV as fp32 rows of its own, and the
  shares are summed in head order afterwards: the gradients are the same bits on every run. (Adding the shares
  atomically into one fp32 sum, as before, made two runs of one training differ by up to 8e-3 in loss within 20
  steps: benchmarks/results/2026-12-05-h100-session18.) dK, dV leave as fp32 sums, so a compiled caller fuses
  their cast into what reads them next.

`backward_qkv` writes the gradient of the stacked q/k/v projection output that q, k and v were split from (and
rotated, where cos/sin are given) as one tensor: RoPE's backward runs on dQ in the dQ kernel's epilogue and on dK in
the kernel that rounds the fp32 dK, dV sums, so neither RoPE's backward nor the concatenation is a pass of its own.

On Hopper the blocks each loop streams (K/V, or Q/dO) load through TMA descriptors made in the kernel, pipelined
on mbarriers; Triton left the pointer loads unpipelined (3-9% of each kernel's time).
"""

from __future__ import annotations

import torch

try:  # triton ships with CUDA builds of torch
    import triton
    import triton.language as tl
except ImportError:
    triton = None

# block shapes measured on the H100 for head_dim 128 (benchmarks/tune_attention.py)
# (TMA: the loops' blocks load through tensor descriptors on Hopper, pipelined; the pointer loads were not)
FWD = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3, "REVERSE": True, "TMA": True}
DKDV = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2, "HEADS": 1, "TMA": True}
DQ = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2, "REVERSE": True, "TMA": True}


def runs_on(device: torch.device) -> bool:
    """Whether the kernels run on this device: CUDA, Ampere on, with Triton."""
    return triton is not None and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the kernels take q [tokens, heads, D], k, v [tokens, kv_heads, D]: a device they run on, half
    precision, D of 64 or 128, whole query groups."""
    return (runs_on(q.device) and q.dtype in (torch.bfloat16, torch.float16) and k.dtype == v.dtype == q.dtype
            and q.shape[-1] in (64, 128) and q.shape[1] % k.shape[1] == 0)


if triton is not None:
    LOG2E = 1.4426950408889634

    @triton.jit
    def _documents(CU, n_cu, total, pos, CU_BLOCK: tl.constexpr):
        """(start, end) of the document holding each position (offsets past n_cu read as `total`)."""
        cu = tl.load(CU + tl.arange(0, CU_BLOCK), mask=tl.arange(0, CU_BLOCK) < n_cu, other=total)
        before = cu[None, :] <= pos[:, None]
        start = tl.max(tl.where(before, cu[None, :], 0), 1)
        end = tl.min(tl.where(before, total, cu[None, :]), 1)
        return start, end

    @triton.jit
    def rows_source(ptr, stride, total, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, TMA: tl.constexpr):
        """Where a loop's [ROWS, HEAD_DIM] blocks come from: the pointer itself, or with TMA a tensor descriptor
        over [total, HEAD_DIM] (rows past `total` read as zeros, as the masked loads do)."""
        if TMA:  # one return per branch: Triton types a function by all its returns
            src = tl.make_tensor_descriptor(ptr, shape=[total, HEAD_DIM], strides=[stride, 1],
                                            block_shape=[ROWS, HEAD_DIM])
        else:
            src = ptr
        return src

    @triton.jit
    def _load_rows(src, start, rows, stride, offs_d, total, MASKED: tl.constexpr, TMA: tl.constexpr = False):
        """Rows start.. (`rows`) of a head: through the TMA descriptor, or as masked (MASKED) or plain loads."""
        if TMA:
            x = src.load([start, 0])
        else:
            p = src + rows[:, None].to(tl.int64) * stride + offs_d[None, :]
            if MASKED:
                x = tl.load(p, mask=(rows < total)[:, None], other=0.0)
            else:
                x = tl.load(p)
        return x

    # ---------------------------------------------------------------------------------------------------- forward
    @triton.jit
    def _fwd_block(acc, l_i, m_i, q, K, V, stride_kt, stride_vt, start, offs_m, doc_start, offs_n, offs_d, qk_scale,
                   total, MASKED: tl.constexpr, TMA: tl.constexpr):
        n = start + offs_n
        k = _load_rows(K, start, n, stride_kt, offs_d, total, MASKED, TMA)
        qk = tl.dot(q, tl.trans(k)) * qk_scale
        if MASKED:
            keep = (n[None, :] <= offs_m[:, None]) & (n[None, :] >= doc_start[:, None])
            qk = tl.where(keep, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(V, start, n, stride_vt, offs_d, total, MASKED, TMA)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return acc, l_i, m_new

    @triton.jit
    def _row_block(CU, n_cu, total, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CU_BLOCK: tl.constexpr,
                   REVERSE: tl.constexpr):
        """This program's query rows m0 + [0, BLOCK_M), their document starts, and their key blocks:
        [lo, unmasked) cross a document start, [unmasked, diag) need no mask, [diag, hi) hold the diagonal
        (diag is m0 rounded down to a key block, for key blocks wider than the row block)."""
        pid = tl.program_id(0)
        if REVERSE:  # the last rows of a pack, which see the most keys, start first
            pid = tl.num_programs(0) - 1 - pid
        m0 = pid * BLOCK_M
        offs_m = m0 + tl.arange(0, BLOCK_M)
        doc_start, _ = _documents(CU, n_cu, total, offs_m, CU_BLOCK)
        lo = (tl.min(doc_start, 0) // BLOCK_N) * BLOCK_N
        diag = m0 // BLOCK_N * BLOCK_N
        unmasked = tl.minimum(tl.cdiv(tl.max(doc_start, 0), BLOCK_N) * BLOCK_N, diag)
        return m0, offs_m, doc_start, lo, unmasked, diag, tl.minimum(m0 + BLOCK_M, total)

    @triton.jit
    def _fwd_kernel(Q, K, V, Out, LSE, CU, n_cu, total, qk_scale, stride_qt, stride_qh, stride_kt, stride_kh,
                    stride_vt, stride_vh, stride_ot, stride_oh, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CU_BLOCK: tl.constexpr, REVERSE: tl.constexpr,
                    TMA: tl.constexpr):
        m0, offs_m, doc_start, lo, unmasked, diag, hi = _row_block(CU, n_cu, total, BLOCK_M, BLOCK_N, CU_BLOCK, REVERSE)
        h = tl.program_id(1)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        q = _load_rows(Q + h * stride_qh, m0, offs_m, stride_qt, offs_d, total, True)
        K = rows_source(K + (h // GROUP) * stride_kh, stride_kt, total, BLOCK_N, HEAD_DIM, TMA)
        V = rows_source(V + (h // GROUP) * stride_vh, stride_vt, total, BLOCK_N, HEAD_DIM, TMA)
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: a row may see no key in its first blocks
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for start in range(lo, unmasked, BLOCK_N):
            acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, K, V, stride_kt, stride_vt, start, offs_m, doc_start,
                                       offs_n, offs_d, qk_scale, total, MASKED=True, TMA=TMA)
        for start in range(unmasked, diag, BLOCK_N):
            acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, K, V, stride_kt, stride_vt, start, offs_m, doc_start,
                                       offs_n, offs_d, qk_scale, total, MASKED=False, TMA=TMA)
        for start in range(diag, hi, BLOCK_N):
            acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, K, V, stride_kt, stride_vt, start, offs_m, doc_start,
                                       offs_n, offs_d, qk_scale, total, MASKED=True, TMA=TMA)
        row_ok = offs_m < total
        tl.store(Out + h * stride_oh + offs_m[:, None].to(tl.int64) * stride_ot + offs_d[None, :],
                 (acc / l_i[:, None]).to(Out.dtype.element_ty), mask=row_ok[:, None])
        # natural-log lse, as FA2 keeps it ([heads, tokens]); qk is in log2 units here
        tl.store(LSE + h * total + offs_m, (m_i + tl.math.log2(l_i)) / 1.4426950408889634, mask=row_ok)

    # --------------------------------------------------------------------------------------------------- backward
    @triton.jit
    def _dkdv_block(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qt, stride_dot, start, offs_n, doc_end, offs_m, offs_d,
                    qk_scale, total, MASKED: tl.constexpr, TMA: tl.constexpr):
        """Rows start.. of one head against this program's keys: adds their share of dK and dV (keys on axis 0)."""
        m = start + offs_m
        q = _load_rows(Q, start, m, stride_qt, offs_d, total, MASKED, TMA)
        do = _load_rows(DO, start, m, stride_dot, offs_d, total, MASKED, TMA)
        if MASKED:
            lse = tl.load(LSE + m, mask=m < total, other=0.0)
            delta = tl.load(DELTA + m, mask=m < total, other=0.0)
        else:
            lse = tl.load(LSE + m)
            delta = tl.load(DELTA + m)
        p_t = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :] * 1.4426950408889634)
        if MASKED:
            keep = (m[None, :] >= offs_n[:, None]) & (m[None, :] < doc_end[:, None])
            p_t = tl.where(keep, p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do)
        ds_t = p_t * (tl.dot(v, tl.trans(do)) - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q)
        return dk, dv

    @triton.jit
    def _dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, CU, n_cu, total, qk_scale, sm_scale,
                     stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
                     stride_dkp, stride_dkt, stride_dkh, stride_dvp, stride_dvt, stride_dvh,
                     GROUP: tl.constexpr, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, CU_BLOCK: tl.constexpr, TMA: tl.constexpr):
        """BLOCK_N keys of one KV head; rows of HEADS of its query heads from the keys' diagonal to their
        documents' end. dK, dV accumulate over those heads in registers and are written as share
        (h0 % GROUP) // HEADS of DK, DV [GROUP // HEADS, tokens, kv_heads, D]."""
        n0 = tl.program_id(0) * BLOCK_N
        h0 = tl.program_id(1) * HEADS
        kvh = h0 // GROUP
        offs_n = n0 + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        _, doc_end = _documents(CU, n_cu, total, offs_n, CU_BLOCK)
        hi = tl.max(doc_end, 0)
        # rows in [diag_end, unmasked) are past every key and inside every key's document: no mask
        diag_end = tl.minimum(n0 + BLOCK_N, hi)
        unmasked = tl.maximum(tl.minimum(tl.min(doc_end, 0) // BLOCK_M * BLOCK_M, hi), diag_end)
        k = _load_rows(K + kvh * stride_kh, n0, offs_n, stride_kt, offs_d, total, True)
        v = _load_rows(V + kvh * stride_vh, n0, offs_n, stride_vt, offs_d, total, True)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        for g in range(HEADS):
            h = h0 + g
            Qh = rows_source(Q + h * stride_qh, stride_qt, total, BLOCK_M, HEAD_DIM, TMA)
            DOh = rows_source(DO + h * stride_doh, stride_dot, total, BLOCK_M, HEAD_DIM, TMA)
            LSEh, DELTAh = LSE + h * total, DELTA + h * total
            for start in range(n0, diag_end, BLOCK_M):
                dk, dv = _dkdv_block(dk, dv, k, v, Qh, DOh, LSEh, DELTAh, stride_qt, stride_dot, start, offs_n,
                                     doc_end, offs_m, offs_d, qk_scale, total, MASKED=True, TMA=TMA)
            for start in range(diag_end, unmasked, BLOCK_M):
                dk, dv = _dkdv_block(dk, dv, k, v, Qh, DOh, LSEh, DELTAh, stride_qt, stride_dot, start, offs_n,
                                     doc_end, offs_m, offs_d, qk_scale, total, MASKED=False, TMA=TMA)
            for start in range(unmasked, hi, BLOCK_M):
                dk, dv = _dkdv_block(dk, dv, k, v, Qh, DOh, LSEh, DELTAh, stride_qt, stride_dot, start, offs_n,
                                     doc_end, offs_m, offs_d, qk_scale, total, MASKED=True, TMA=TMA)
        key_ok = (offs_n < total)[:, None]
        share = (h0 % GROUP) // HEADS
        rows = offs_n[:, None].to(tl.int64)
        dk_ptr = DK + share * stride_dkp + kvh * stride_dkh + rows * stride_dkt + offs_d[None, :]
        dv_ptr = DV + share * stride_dvp + kvh * stride_dvh + rows * stride_dvt + offs_d[None, :]
        tl.store(dk_ptr, (dk * sm_scale).to(DK.dtype.element_ty), mask=key_ok)
        tl.store(dv_ptr, dv.to(DV.dtype.element_ty), mask=key_ok)

    @triton.jit
    def _unrotate(x, COS, SIN, rows, stride_ct, offs_d, row_ok):
        """RoPE's backward on x [rows, D] (fp32): x * cos + R^T(x * sin), where the forward's rotate_half is
        R(y) = (-y2, y1) on the halves of D, so R^T(z) = (z2, -z1)."""
        M: tl.constexpr = x.shape[0]
        D: tl.constexpr = x.shape[1]
        tables = rows[:, None].to(tl.int64) * stride_ct + offs_d[None, :]
        c = tl.load(COS + tables, mask=row_ok[:, None], other=0.0).to(tl.float32)
        s = tl.load(SIN + tables, mask=row_ok[:, None], other=0.0).to(tl.float32)
        z1, z2 = tl.split(tl.permute(tl.reshape(x * s, [M, 2, D // 2]), [0, 2, 1]))
        return x * c + tl.reshape(tl.permute(tl.join(z2, -z1), [0, 2, 1]), [M, D])

    @triton.jit
    def _dq_block(dq, q, do, lse, delta, K, V, stride_kt, stride_vt, start, offs_m, doc_start, offs_n, offs_d,
                  qk_scale, total, MASKED: tl.constexpr, TMA: tl.constexpr):
        n = start + offs_n
        k = _load_rows(K, start, n, stride_kt, offs_d, total, MASKED, TMA)
        v = _load_rows(V, start, n, stride_vt, offs_d, total, MASKED, TMA)
        p = tl.math.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None])
        if MASKED:
            keep = (n[None, :] <= offs_m[:, None]) & (n[None, :] >= doc_start[:, None])
            p = tl.where(keep, p, 0.0)
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        return dq + tl.dot(ds.to(k.dtype), k)

    @triton.jit
    def _dq_kernel(Q, K, V, Out, DO, LSE, DELTA, DQ, COS, SIN, CU, n_cu, total, qk_scale, sm_scale,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                   stride_dot, stride_doh, stride_dqt, stride_dqh, stride_ct,
                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CU_BLOCK: tl.constexpr, REVERSE: tl.constexpr, TMA: tl.constexpr, ROPE: tl.constexpr):
        """BLOCK_M rows of one query head against their keys, as the forward walks them. Also writes those rows'
        delta = rowsum(dO * O), which the dK/dV kernel (launched after) reads: FA2 spends a pass on it.
        With ROPE, dQ leaves through RoPE's backward (q was rotated by COS, SIN)."""
        m0, offs_m, doc_start, lo, unmasked, diag, hi = _row_block(CU, n_cu, total, BLOCK_M, BLOCK_N, CU_BLOCK, REVERSE)
        h = tl.program_id(1)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < total
        q = _load_rows(Q + h * stride_qh, m0, offs_m, stride_qt, offs_d, total, True)
        do = _load_rows(DO + h * stride_doh, m0, offs_m, stride_dot, offs_d, total, True)
        lse = tl.load(LSE + h * total + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
        o = _load_rows(Out + h * stride_oh, m0, offs_m, stride_ot, offs_d, total, True)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        tl.store(DELTA + h * total + offs_m, delta, mask=row_ok)
        K = rows_source(K + (h // GROUP) * stride_kh, stride_kt, total, BLOCK_N, HEAD_DIM, TMA)
        V = rows_source(V + (h // GROUP) * stride_vh, stride_vt, total, BLOCK_N, HEAD_DIM, TMA)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for start in range(lo, unmasked, BLOCK_N):
            dq = _dq_block(dq, q, do, lse, delta, K, V, stride_kt, stride_vt, start, offs_m, doc_start, offs_n,
                           offs_d, qk_scale, total, MASKED=True, TMA=TMA)
        for start in range(unmasked, diag, BLOCK_N):
            dq = _dq_block(dq, q, do, lse, delta, K, V, stride_kt, stride_vt, start, offs_m, doc_start, offs_n,
                           offs_d, qk_scale, total, MASKED=False, TMA=TMA)
        for start in range(diag, hi, BLOCK_N):
            dq = _dq_block(dq, q, do, lse, delta, K, V, stride_kt, stride_vt, start, offs_m, doc_start, offs_n,
                           offs_d, qk_scale, total, MASKED=True, TMA=TMA)
        dq = dq * sm_scale
        if ROPE:
            dq = _unrotate(dq, COS, SIN, offs_m, stride_ct, offs_d, row_ok)
        tl.store(DQ + h * stride_dqh + offs_m[:, None].to(tl.int64) * stride_dqt + offs_d[None, :],
                 dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])

    @triton.jit
    def _finish_dkdv_kernel(DK, DV, COS, SIN, DKV, total, stride_dkp, stride_dkt, stride_dkh, stride_dvp,
                            stride_dvt, stride_dvh, stride_ct, stride_gt, SHARES: tl.constexpr,
                            KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, ROPE: tl.constexpr):
        """BLOCK tokens of one KV head: the SHARES of dK (summed in order, then through RoPE's backward with ROPE)
        and of dV, rounded into DKV, the [tokens, 2 * KV heads * D] columns of the stacked gradient after dQ's."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        h = tl.program_id(1)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs < total
        rows = offs[:, None].to(tl.int64)
        dk = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
        for p in tl.static_range(SHARES):
            dk += tl.load(DK + p * stride_dkp + h * stride_dkh + rows * stride_dkt + offs_d[None, :],
                          mask=row_ok[:, None], other=0.0).to(tl.float32)
            dv += tl.load(DV + p * stride_dvp + h * stride_dvh + rows * stride_dvt + offs_d[None, :],
                          mask=row_ok[:, None], other=0.0).to(tl.float32)
        if ROPE:
            dk = _unrotate(dk, COS, SIN, offs, stride_ct, offs_d, row_ok)
        out = DKV + rows * stride_gt + offs_d[None, :]
        tl.store(out + h * HEAD_DIM, dk.to(DKV.dtype.element_ty), mask=row_ok[:, None])
        tl.store(out + (KV_HEADS + h) * HEAD_DIM, dv.to(DKV.dtype.element_ty), mask=row_ok[:, None])

    # ------------------------------------------------------------------------------------------------- launchers
    def _cu_block(cu_seqlens):
        return max(16, triton.next_power_of_2(cu_seqlens.numel()))

    def _scratch(size: int, alignment: int, stream):
        return torch.empty(size, dtype=torch.int8, device="cuda")

    def _tma(cfg, *streamed) -> bool:
        """Whether the loop's blocks load through TMA descriptors made in the kernel (cfg "TMA"; Hopper; every row
        stride and head start 16-byte aligned). The descriptors live in scratch memory that Triton asks torch for;
        the allocator is set at each launch because Triton keeps it per thread, and the backward runs in autograd's."""
        if not cfg.get("TMA") or torch.cuda.get_device_capability(streamed[0].device)[0] < 9:
            return False
        if not all(t.stride(0) * t.element_size() % 16 == 0 and t.stride(1) * t.element_size() % 16 == 0
                   and t.data_ptr() % 16 == 0 for t in streamed):
            return False
        triton.set_allocator(_scratch)
        return True

    def _rows(x):
        """x with its last axis contiguous (the kernels take any other strides)."""
        return x if x.stride(-1) == 1 else x.contiguous()

    def forward(q, k, v, cu_seqlens, scale, cfg=FWD):
        """(out [tokens, heads, D], lse [heads, tokens] fp32, natural log)."""
        q, k, v = _rows(q), _rows(k), _rows(v)
        total, heads, d = q.shape
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # contiguous, whatever q's layout
        lse = torch.empty(heads, total, dtype=torch.float32, device=q.device)
        grid = (triton.cdiv(total, cfg["BLOCK_M"]), heads)
        _fwd_kernel[grid](
            q, k, v, out, lse, cu_seqlens, cu_seqlens.numel(), total, scale * LOG2E,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0),
            out.stride(1), GROUP=heads // k.shape[1], HEAD_DIM=d, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
            CU_BLOCK=_cu_block(cu_seqlens), REVERSE=cfg["REVERSE"], TMA=_tma(cfg, k, v),
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        return out, lse

    def backward(dout, q, k, v, out, lse, cu_seqlens, scale, dkdv_cfg=DKDV, dq_cfg=DQ):
        """(dq, dk, dv) for the forward's inputs, output and lse; dk and dv in fp32 where grouped heads' shares are
        summed (`grad_dtype`), so that a compiled caller fuses their cast into whatever reads them next."""
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        dk, dv = _backward_into(dq, dout, q, k, v, out, lse, cu_seqlens, scale, dkdv_cfg, dq_cfg)
        return dq, dk.sum(0), dv.sum(0)  # over the shares, in a fixed order

    def backward_qkv(dout, q, k, v, out, lse, cu_seqlens, scale, rope=None, dkdv_cfg=DKDV, dq_cfg=DQ):
        """The gradient of the stacked projection output [tokens, (heads + 2 kv_heads) * D] that q, k, v were
        split from, in q's dtype; `rope`: (cos, sin) [tokens, D] where q and k were rotated by them, so the
        gradient is the one before RoPE."""
        total, heads, d = q.shape
        kv = k.shape[1]
        dqkv = torch.empty(total, (heads + 2 * kv) * d, dtype=q.dtype, device=q.device)
        rope = None if rope is None else tuple(_rows(t) for t in rope)
        dk, dv = _backward_into(dqkv[:, :heads * d].view(total, heads, d), dout, q, k, v, out, lse, cu_seqlens,
                                scale, dkdv_cfg, dq_cfg, rope)
        dkv = dqkv[:, heads * d:]
        cos, sin = rope if rope is not None else (dk[0], dk[0])  # unused without ROPE
        _finish_dkdv_kernel[(triton.cdiv(total, 64), kv)](
            dk, dv, cos, sin, dkv, total, dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1),
            dv.stride(2), cos.stride(0), dkv.stride(0), SHARES=dk.shape[0], KV_HEADS=kv, HEAD_DIM=d, BLOCK=64,
            ROPE=rope is not None, num_warps=4)
        return dqkv

    def _backward_into(dq, dout, q, k, v, out, lse, cu_seqlens, scale, dkdv_cfg, dq_cfg, rope=None):
        """dQ into `dq` (through RoPE's backward with `rope`), then the shares of (dk, dv) (`backward_dkdv`)."""
        dout, q, k, v, out = _rows(dout), _rows(q), _rows(k), _rows(v), _rows(out)
        delta = torch.empty_like(lse)
        backward_dq(dout, q, k, v, out, lse, delta, cu_seqlens, scale, dq_cfg, dq=dq, rope=rope)  # writes delta
        return backward_dkdv(dout, q, k, v, lse, delta, cu_seqlens, scale, dkdv_cfg)

    def backward_dkdv(dout, q, k, v, lse, delta, cu_seqlens, scale, cfg):
        """(dk, dv) as shares [GROUP // HEADS, tokens, kv_heads, D], each the sum over HEADS query heads of a group,
        in `grad_dtype`; their sum over axis 0 is the gradient."""
        total, heads, d = q.shape
        group, heads_per = heads // k.shape[1], cfg["HEADS"]
        dtype = grad_dtype(q, k, cfg)
        dk, dv = (torch.empty(group // heads_per, *k.shape, dtype=dtype, device=k.device) for _ in range(2))
        _dkdv_kernel[(triton.cdiv(total, cfg["BLOCK_N"]), heads // heads_per)](
            q, k, v, dout, lse, delta, dk, dv, cu_seqlens, cu_seqlens.numel(), total, scale * LOG2E, scale,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), dout.stride(0),
            dout.stride(1), dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
            GROUP=group, HEADS=heads_per, HEAD_DIM=d, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
            CU_BLOCK=_cu_block(cu_seqlens), TMA=_tma(cfg, q, dout), num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"])
        return dk, dv

    def grad_dtype(q, k, cfg=DKDV) -> torch.dtype:
        """dk's and dv's dtype out of `backward`: fp32 where several shares are summed."""
        return torch.float32 if cfg["HEADS"] < q.shape[1] // k.shape[1] else k.dtype

    def backward_dq(dout, q, k, v, out, lse, delta, cu_seqlens, scale, cfg, dq=None, rope=None):
        """dq (into `dq` if given: any strides, last axis contiguous); also writes delta. `rope`: (cos, sin)
        [tokens, D] that rotated q: dq through RoPE's backward."""
        total, heads, d = q.shape
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device) if dq is None else dq
        cos, sin = rope if rope is not None else (dq, dq)  # unused without ROPE
        _dq_kernel[(triton.cdiv(total, cfg["BLOCK_M"]), heads)](
            q, k, v, out, dout, lse, delta, dq, cos, sin, cu_seqlens, cu_seqlens.numel(), total,
            scale * LOG2E, scale, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1), dout.stride(0), dout.stride(1), dq.stride(0), dq.stride(1), cos.stride(0),
            GROUP=heads // k.shape[1], HEAD_DIM=d, CU_BLOCK=_cu_block(cu_seqlens), BLOCK_M=cfg["BLOCK_M"],
            BLOCK_N=cfg["BLOCK_N"], REVERSE=cfg["REVERSE"], TMA=_tma(cfg, k, v), ROPE=rope is not None,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        return dq

    # Opaque custom ops: a compiled graph calls them with the real tensors, whose strides the launchers read then
    # (inductor may lay a traced view out differently), and inductor needs no look inside the kernels.
    @torch.library.custom_op("smollm3::doc_attention_forward", mutates_args=())
    def doc_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                              scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(out [tokens, heads, D], lse [heads, tokens]) for q [tokens, heads, D], k, v [tokens, kv_heads, D]
        (last axis contiguous), causal within the documents that cu_seqlens delimits."""
        return forward(q, k, v, cu_seqlens, scale)

    @doc_attention_forward.register_fake
    def _(q, k, v, cu_seqlens, scale):
        return q.new_empty(q.shape), q.new_empty(q.shape[1], q.shape[0], dtype=torch.float32)

    @torch.library.custom_op("smollm3::doc_attention_backward", mutates_args=())
    def doc_attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               out: torch.Tensor, lse: torch.Tensor, cu_seqlens: torch.Tensor,
                               scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dq, dk, dv) of doc_attention_forward, contiguous; dk, dv in `grad_dtype`."""
        return backward(dout, q, k, v, out, lse, cu_seqlens, scale)

    @torch.library.custom_op("smollm3::doc_attention_backward_qkv", mutates_args=())
    def doc_attention_backward_qkv(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                   out: torch.Tensor, lse: torch.Tensor, cu_seqlens: torch.Tensor, scale: float,
                                   cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
        """`backward_qkv`: the gradient of the stacked q/k/v projection output, before RoPE where cos, sin given."""
        return backward_qkv(dout, q, k, v, out, lse, cu_seqlens, scale, None if cos is None else (cos, sin))

    @doc_attention_backward_qkv.register_fake
    def _(dout, q, k, v, out, lse, cu_seqlens, scale, cos, sin):
        return q.new_empty(q.shape[0], (q.shape[1] + 2 * k.shape[1]) * q.shape[2])

    @doc_attention_backward.register_fake
    def _(dout, q, k, v, out, lse, cu_seqlens, scale):
        return q.new_empty(q.shape), k.new_empty(k.shape, dtype=grad_dtype(q, k)), v.new_empty(v.shape,
                                                                                             dtype=grad_dtype(q, k))
