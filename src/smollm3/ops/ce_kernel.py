"""The chunked cross-entropy's pass over a [rows, vocab] block of logits as one Triton kernel (CUDA).

Each program walks one row: once for its log-sum-exp (a running max and sum per lane over vocabulary tiles) and
its target's logit, and, when asked, once more to write d nll / d logits = softmax - onehot(target) (times a
per-row gradient) in the logits' dtype. That is the least traffic the maths allows: the logits read twice, the
gradient written once. torch.compile's fused reduction did the same maths, but its runtime autotuning settled on
configurations 1.9x apart from one run to the next (490 against 910 us for 1,024 x 128,256 bf16 logits on the H100:
benchmarks/results/2026-11-24-h100-train-host.md).
"""

from __future__ import annotations

import torch

try:  # triton ships with CUDA builds of torch
    import triton
    import triton.language as tl
except ImportError:
    triton = None

BLOCK = 4096  # vocabulary tile: 128,256 = 31.3 tiles at SmolLM3's vocabulary


def available(logits: torch.Tensor) -> bool:
    return triton is not None and logits.is_cuda and logits.dtype in (torch.bfloat16, torch.float16, torch.float32)


if triton is not None:
    @triton.jit
    def _row_lse(base, V, BLOCK: tl.constexpr):
        cols = tl.arange(0, BLOCK)
        m = tl.full([BLOCK], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK], tl.float32)
        for off in range(0, V, BLOCK):
            x = tl.load(base + off + cols, mask=off + cols < V, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, x)
            # a lane that has seen only padding keeps m = -inf, where exp(-inf - -inf) would be NaN
            s = tl.where(m_new == float("-inf"), 0.0, s * tl.exp(m - m_new) + tl.exp(x - m_new))
            m = m_new
        top = tl.max(m, axis=0)
        return top + tl.log(tl.sum(s * tl.exp(m - top), axis=0))

    @triton.jit
    def _ce_rows(logits_ptr, stride, targets_ptr, grad_ptr, lse_ptr, nll_ptr, dlogits_ptr, dstride, V,
                 BLOCK: tl.constexpr, FORWARD: tl.constexpr, DLOGITS: tl.constexpr, SCALE: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * stride
        target = tl.load(targets_ptr + row)
        if FORWARD:
            lse = _row_lse(base, V, BLOCK)
            tl.store(lse_ptr + row, lse)
            tl.store(nll_ptr + row, lse - tl.load(base + target).to(tl.float32))
        else:
            lse = tl.load(lse_ptr + row)
        if DLOGITS:
            cols = tl.arange(0, BLOCK)
            out = dlogits_ptr + row * dstride
            g = 1.0
            if SCALE:
                g = tl.load(grad_ptr + row).to(tl.float32)
            for off in range(0, V, BLOCK):
                idx = off + cols
                x = tl.load(base + idx, mask=idx < V, other=0.0).to(tl.float32)
                p = tl.exp(x - lse) - tl.where(idx == target, 1.0, 0.0)
                tl.store(out + idx, (p * g).to(out.dtype.element_ty), mask=idx < V)


def _launch(logits, targets, lse, nll, dlogits, grad, forward: bool):
    rows, vocab = logits.shape
    if rows == 0:
        return
    if logits.stride(1) != 1 or (dlogits is not None and dlogits.stride(1) != 1):
        raise ValueError("ce_kernel: logits and dlogits need a contiguous vocabulary axis")
    block = min(BLOCK, triton.next_power_of_2(vocab))
    dummy = lse  # pointers of the disabled branches are never read
    _ce_rows[(rows,)](logits, logits.stride(0), targets, grad if grad is not None else dummy, lse,
                      nll if nll is not None else dummy, dlogits if dlogits is not None else logits,
                      dlogits.stride(0) if dlogits is not None else 0, vocab, BLOCK=block, FORWARD=forward,
                      DLOGITS=dlogits is not None, SCALE=grad is not None, num_warps=8)


def lse_nll(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, nll: torch.Tensor,
            dlogits: torch.Tensor | None):
    """Writes each row's log-sum-exp and nll (fp32) into `lse`, `nll`, and d nll / d logits into `dlogits` (the
    logits' shape and dtype, e.g. a slice of a whole micro-batch's buffer) unless it is None."""
    _launch(logits, targets.contiguous(), lse, nll, dlogits, None, forward=True)


def dlogits(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, grad: torch.Tensor | None):
    """d nll / d logits from a forward's lse, times each row's `grad` when given, in the logits' dtype."""
    out = torch.empty_like(logits)
    _launch(logits, targets.contiguous(), lse.float().contiguous(), None, out,
            None if grad is None else grad.float().contiguous(), forward=False)
    return out
