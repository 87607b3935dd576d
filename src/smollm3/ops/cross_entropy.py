"""Token cross-entropy in fp32, whole or chunked over the LM head so the [tokens, vocab] logits never exist.

Conventions, shared with the data pipeline: labels are already shifted (label[t] is the target for logits[t]),
-100 marks positions that carry no loss (prompt, padding, document ends). The chunked form's pass over a block of
logits is one Triton kernel on the GPU (ce_kernel.py); its PyTorch reference is `_lse_nll` / `_dlogits` here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from smollm3.ops import ce_kernel
from smollm3.ops.linear import accumulate_wgrad
from smollm3.ops.settings import OpSettings

IGNORE_INDEX = -100  # the label of a position that carries no loss (prompt, padding, document ends); torch's default
REDUCTIONS = ("mean", "sum", "none")


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                  reduction: str = "mean") -> torch.Tensor:
    """Token cross-entropy in fp32 over the positions whose label is not `ignore_index`.

    logits [..., V], labels [...]. "mean" divides by the number of counted tokens (a batch with none gives 0, not
    NaN, so an all-prompt micro-batch cannot poison a step); "none" returns per-token losses, 0 where ignored."""
    _check_reduction(reduction)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"cross_entropy: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree; "
                         "labels must have the logits' shape minus the vocabulary axis (shift them before the call)")
    per_token = F.cross_entropy(at_least_fp32(logits.reshape(-1, logits.shape[-1])), labels.reshape(-1),
                                ignore_index=ignore_index, reduction="none")
    return _reduce(per_token, (labels != ignore_index).sum(), reduction, labels.shape)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int = 1024,
                          ignore_index: int = IGNORE_INDEX, reduction: str = "mean",
                          weight_grad: torch.Tensor | None = None, label_index: torch.Tensor | None = None,
                          stored_dlogits_bytes: int = OpSettings.stored_dlogits_bytes) -> torch.Tensor:
    """`cross_entropy(hidden @ weight.T, labels)` without ever holding the [tokens, vocab] logits.

    hidden [..., D] (the final-norm output), weight [V, D] (the LM head), labels [...]. Logits are formed `chunk`
    tokens at a time, so extra memory is a few [chunk, V] fp32 blocks (1024 x 128256 x 4 B = 0.5 GB at SmolLM3's
    vocabulary) instead of [B*T, V] fp32, plus, when training and it fits `stored_dlogits_bytes`, the gradient with
    respect to the logits in the matmul dtype (see _ChunkedNLL). Ignored positions are dropped
    before any matmul, so masked prompts cost nothing. With `weight_grad` (an fp32 [V, D] buffer; `weight` is then a
    bf16 copy that needs no grad) the weight's gradient is added into that buffer by the gradient GEMMs instead of
    being returned (ops/linear.py, train/precision.py). `label_index`: the flat positions whose label is not `ignore_index`, on
    labels' device, found by the caller where the labels are still on the CPU (trainer._to_device); found here
    otherwise, which makes the host wait for the GPU (the count of kept rows is a shape). Ignored positions in it
    add nothing to the loss or the gradients."""
    _check_reduction(reduction)
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"chunked_cross_entropy: hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} "
                         "disagree; labels must have hidden's shape minus the feature axis")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"chunked_cross_entropy: weight {tuple(weight.shape)} must be [vocab, {hidden.shape[-1]}] "
                         "(the LM head's weight, as nn.Linear stores it)")
    if chunk < 1:
        raise ValueError(f"chunked_cross_entropy: chunk must be >= 1, got {chunk}")
    flat_labels = labels.reshape(-1)
    if label_index is None:
        label_index = (flat_labels != ignore_index).nonzero().squeeze(1)
    # autograd scatters the gradient back to the kept rows
    rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, label_index)
    dtype = _matmul_dtype(rows, weight)
    store = torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad) \
        and rows.shape[0] * weight.shape[0] * dtype.itemsize <= stored_dlogits_bytes
    targets = flat_labels.index_select(0, label_index)
    # label_index may also name ignored positions (padding to a fixed row count, train/graphs.py): they count nothing
    ignored = targets == ignore_index
    nll = _ChunkedNLL.apply(rows, weight, targets.masked_fill(ignored, 0), chunk, weight_grad, store)
    per_token = nll.new_zeros(flat_labels.shape).index_copy(0, label_index, nll.masked_fill(ignored, 0.0))
    return _reduce(per_token, (~ignored).sum() if reduction == "mean" else None, reduction, labels.shape)


class _ChunkedNLL(torch.autograd.Function):
    """-log softmax(rows @ weight.T)[target] per row, chunk by chunk.

    When a gradient will be needed and d nll / d logits fits in OpSettings.stored_dlogits_bytes (4,096 tokens x
    128,256 x bf16 = 1.05 GB), the forward keeps it: the backward then skips the logits GEMM it would otherwise
    redo, 1.4% of a 3B trainer step on the H100 (benchmarks/results/2026-11-24-h100-train-fused.md, run 7). It keeps
    it (without
    the per-row upstream gradient, which is not known yet; the backward applies it to the [rows, hidden] operands,
    so any per-token weighting still works: reduction "none", DPO sums). Otherwise the backward recomputes each
    chunk's logits. Evaluation does no gradient work at all."""

    @staticmethod
    def forward(ctx, rows, weight, targets, chunk, weight_grad, store):
        dtype = _matmul_dtype(rows, weight)
        w = weight.to(dtype)
        n = rows.shape[0]
        nll = torch.empty(n, dtype=torch.promote_types(dtype, torch.float32), device=rows.device)
        lse = torch.empty_like(nll)
        dlogits = torch.empty(n, w.shape[0], dtype=dtype, device=rows.device) if store else None
        with torch.autocast(rows.device.type, enabled=False):
            for s in range(0, n, chunk):
                logits = rows[s:s + chunk].to(dtype) @ w.T
                _lse_nll_pass(logits, targets[s:s + chunk], lse[s:s + chunk], nll[s:s + chunk],
                              None if dlogits is None else dlogits[s:s + chunk])
        ctx.save_for_backward(rows, weight, targets, lse, dlogits)
        ctx.chunk, ctx.dtype, ctx.weight_grad = chunk, dtype, weight_grad
        return nll

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_nll):
        rows, weight, targets, lse, dlogits = ctx.saved_tensors
        dtype, chunk = ctx.dtype, ctx.chunk
        w = weight.to(dtype)
        want_rows = ctx.needs_input_grad[0]
        want_weight = ctx.needs_input_grad[1] and ctx.weight_grad is None  # else it goes into ctx.weight_grad
        grad_rows = grad_weight = None
        with torch.autocast(rows.device.type, enabled=False):
            if dlogits is not None:
                # kept unscaled: each row's upstream gradient multiplies the [rows, hidden] operands instead, and
                # each product is one GEMM over all rows (the fp32 weight gradient is read and written once)
                scale = grad_nll[:, None]
                if want_rows:
                    grad_rows = ((dlogits @ w) * scale).to(rows.dtype)
                if want_weight or ctx.weight_grad is not None:
                    scaled = (rows * scale).to(dtype)
                    if ctx.weight_grad is not None:
                        accumulate_wgrad(ctx.weight_grad, dlogits, scaled)
                    else:
                        grad_weight = dlogits.T @ scaled
            else:
                grad_rows = torch.empty_like(rows) if want_rows else None
                grad_weight = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) if want_weight else None
                into = grad_weight if ctx.weight_grad is None else ctx.weight_grad
                for s in range(0, rows.shape[0], chunk):
                    r = rows[s:s + chunk].to(dtype)
                    logits = r @ w.T
                    g = _dlogits_pass(logits, lse[s:s + chunk], targets[s:s + chunk], grad_nll[s:s + chunk])
                    if grad_rows is not None:
                        grad_rows[s:s + chunk] = (g @ w).to(rows.dtype)
                    if into is not None:  # in its GEMM: `+= g.T @ r` would round to bf16 and add in a pass
                        accumulate_wgrad(into, g, r)
        return grad_rows, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None, None


def _lse_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = at_least_fp32(logits)
    lse = torch.logsumexp(logits, dim=-1)
    return lse, lse - logits.gather(1, targets[:, None]).squeeze(1)


def _dlogits(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor,
             grad: torch.Tensor | None = None) -> torch.Tensor:
    """d nll / d logits = softmax - onehot(target), scaled by each row's incoming gradient (if given), in the logits'
    dtype."""
    onehot = torch.arange(logits.shape[1], device=logits.device) == targets[:, None]
    g = torch.exp(at_least_fp32(logits) - lse[:, None]) - onehot.to(lse.dtype)
    return (g if grad is None else g * grad[:, None]).to(logits.dtype)


def _lse_nll_pass(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, nll: torch.Tensor,
                  dlogits: torch.Tensor | None):
    """One chunk's lse and nll, and d nll / d logits unless `dlogits` is None, written into the given slices: one
    Triton kernel on the GPU (ce_kernel.py), the same maths eagerly elsewhere (and for fp64)."""
    if ce_kernel.available(logits):
        ce_kernel.lse_nll(logits, targets, lse, nll, dlogits)
        return
    lse[:], nll[:] = _lse_nll(logits, targets)
    if dlogits is not None:
        dlogits[:] = _dlogits(logits, lse, targets)


def _dlogits_pass(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, grad: torch.Tensor):
    if ce_kernel.available(logits):
        return ce_kernel.dlogits(logits, lse, targets, grad)
    return _dlogits(logits, lse, targets, grad)


def _matmul_dtype(rows: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    # under autocast the LM head would run in the autocast dtype; match it so chunked == plain forward
    device = rows.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(rows.dtype, weight.dtype)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 go up to fp32 for the softmax; fp64 (gradcheck) stays fp64
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _check_reduction(reduction: str):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction {reduction!r} is not one of {', '.join(REDUCTIONS)}")


def _reduce(per_token: torch.Tensor, counted, reduction: str, shape) -> torch.Tensor:
    """`counted`: how many positions carry loss, read by "mean" only (an int, or a 0-d tensor so the host need not
    wait for it)."""
    if reduction == "none":
        return per_token.reshape(shape)
    total = per_token.sum()
    if reduction == "sum":
        return total
    return total / (counted.clamp(min=1) if torch.is_tensor(counted) else max(counted, 1))
