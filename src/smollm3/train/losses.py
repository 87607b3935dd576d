"""Losses for every stage of the recipe: token cross-entropy (pretraining, mid-training, SFT), completion
log-probs, and the DPO / APO preference losses, as plain functions over tensors.

Conventions, shared with the data pipeline: labels are already shifted (label[t] is the target for logits[t]),
-100 marks positions that carry no loss (prompt, padding, document ends). Reductions happen in fp32 whatever the
activation dtype. The preference losses follow TRL's `DPOTrainer` exactly (reference/smollm3.md §4; parity with
the installed TRL is tested in tests/train/test_losses.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from smollm3.train import ce_kernel

IGNORE_INDEX = -100
REDUCTIONS = ("mean", "sum", "none")
PREFERENCE_LOSSES = ("sigmoid", "apo_zero", "apo_down")


# ------------------------------------------------------------------------------------------------------------------
# token cross-entropy


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                  reduction: str = "mean") -> torch.Tensor:
    """Token cross-entropy in fp32 over the positions whose label is not `ignore_index`.

    logits [..., V], labels [...]. "mean" divides by the number of counted tokens (a batch with none gives 0, not
    NaN, so an all-prompt micro-batch cannot poison a step); "none" returns per-token losses, 0 where ignored."""
    _check_reduction(reduction)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"cross_entropy: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree; "
                         "labels must have the logits' shape minus the vocabulary axis (shift them before the call)")
    per_token = F.cross_entropy(_at_least_fp32(logits.reshape(-1, logits.shape[-1])), labels.reshape(-1),
                                ignore_index=ignore_index, reduction="none")
    return _reduce(per_token, (labels != ignore_index).sum(), reduction, labels.shape)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int = 1024,
                          ignore_index: int = IGNORE_INDEX, reduction: str = "mean",
                          weight_grad: torch.Tensor | None = None,
                          label_index: torch.Tensor | None = None) -> torch.Tensor:
    """`cross_entropy(hidden @ weight.T, labels)` without ever holding the [tokens, vocab] logits.

    hidden [..., D] (the final-norm output), weight [V, D] (the LM head), labels [...]. Logits are formed `chunk`
    tokens at a time, so extra memory is a few [chunk, V] fp32 blocks (1024 x 128256 x 4 B = 0.5 GB at SmolLM3's
    vocabulary) instead of [B*T, V] fp32, plus, when training and it fits STORED_DLOGITS_BYTES, the gradient with
    respect to the logits in the matmul dtype (see _ChunkedNLL). Ignored positions are dropped
    before any matmul, so masked prompts cost nothing. With `weight_grad` (an fp32 [V, D] buffer; `weight` is then a
    bf16 copy that needs no grad) the weight's gradient is added into that buffer by the gradient GEMMs instead of
    being returned (train/precision.py). `label_index`: the flat positions whose label is not `ignore_index`, on
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
        and rows.shape[0] * weight.shape[0] * dtype.itemsize <= STORED_DLOGITS_BYTES
    targets = flat_labels.index_select(0, label_index)
    # label_index may also name ignored positions (padding to a fixed row count, train/graphs.py): they count nothing
    ignored = targets == ignore_index
    nll = _ChunkedNLL.apply(rows, weight, targets.masked_fill(ignored, 0), chunk, weight_grad, store)
    per_token = nll.new_zeros(flat_labels.shape).index_copy(0, label_index, nll.masked_fill(ignored, 0.0))
    return _reduce(per_token, (~ignored).sum() if reduction == "mean" else None, reduction, labels.shape)


# d nll / d logits of a whole micro-batch is kept from the forward when it fits here (4,096 tokens x 128,256 x bf16
# = 1.05 GB): the backward then skips the logits GEMM it would otherwise redo, 1.4% of a 3B trainer step on the
# H100 (benchmarks/results/2026-11-24-h100-train-fused.md, run 7)
STORED_DLOGITS_BYTES = 2 * 2**30


class _ChunkedNLL(torch.autograd.Function):
    """-log softmax(rows @ weight.T)[target] per row, chunk by chunk.

    When a gradient will be needed and d nll / d logits fits in STORED_DLOGITS_BYTES, the forward keeps it (without
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
        if ctx.weight_grad is not None:
            from smollm3.train.precision import accumulate_wgrad
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
                for s in range(0, rows.shape[0], chunk):
                    r = rows[s:s + chunk].to(dtype)
                    logits = r @ w.T
                    g = _dlogits_pass(logits, lse[s:s + chunk], targets[s:s + chunk], grad_nll[s:s + chunk])
                    if grad_rows is not None:
                        grad_rows[s:s + chunk] = (g @ w).to(rows.dtype)
                    if ctx.weight_grad is not None:
                        accumulate_wgrad(ctx.weight_grad, g, r)
                    elif grad_weight is not None:
                        grad_weight += g.T @ r
        return grad_rows, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None, None


def _lse_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = _at_least_fp32(logits)
    lse = torch.logsumexp(logits, dim=-1)
    return lse, lse - logits.gather(1, targets[:, None]).squeeze(1)


def _dlogits(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor,
             grad: torch.Tensor | None = None) -> torch.Tensor:
    """d nll / d logits = softmax - onehot(target), scaled by each row's incoming gradient (if given), in the logits'
    dtype."""
    onehot = torch.arange(logits.shape[1], device=logits.device) == targets[:, None]
    g = torch.exp(_at_least_fp32(logits) - lse[:, None]) - onehot.to(lse.dtype)
    return (g if grad is None else g * grad[:, None]).to(logits.dtype)


def _lse_nll_pass(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, nll: torch.Tensor,
                  dlogits: torch.Tensor | None):
    """One chunk's lse and nll, and d nll / d logits unless `dlogits` is None, written into the given slices: one
    Triton kernel on the GPU (train/ce_kernel.py), the same maths eagerly elsewhere (and for fp64)."""
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


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
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


# ------------------------------------------------------------------------------------------------------------------
# completion log-probs (DPO / APO inputs)


def token_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """log softmax(logits)[label] per position in fp32, 0 where the label is ignored. logits [B, T, V] -> [B, T].

    One row at a time, so the fp32 copy of the logits is [T, V], not [B, T, V] (TRL's selective_log_softmax)."""
    if logits.shape[:-1] != labels.shape or logits.dim() != 3:
        raise ValueError(f"token_logps: expected logits [B, T, V] and labels [B, T], got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    keep = labels != ignore_index
    safe = labels.masked_fill(~keep, 0)
    out = []
    for row_logits, row_labels in zip(logits, safe):
        row = _at_least_fp32(row_logits)
        out.append(row.gather(-1, row_labels[:, None]).squeeze(-1) - torch.logsumexp(row, dim=-1))
    return torch.stack(out).masked_fill(~keep, 0.0)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Sum of the label tokens' log-probs per row over non-ignored positions -> [B] fp32: TRL's completion
    log-prob log pi(y|x) when the prompt's labels are -100."""
    return token_logps(logits, labels, ignore_index).sum(-1)


def packed_sequence_logps(token_logps: torch.Tensor, segment_ids: torch.Tensor,
                          num_segments: int | None = None) -> torch.Tensor:
    """Per-segment sums of per-token log-probs for a packed (padding-free) row -> [num_segments] fp32.

    segment_ids gives each token's sequence (e.g. 2*pair for chosen, 2*pair+1 for rejected), -1 for tokens that
    belong to none (prompts, padding). num_segments defaults to max id + 1; pass it to keep trailing empty
    segments, or to avoid the device sync."""
    if token_logps.shape != segment_ids.shape:
        raise ValueError(f"packed_sequence_logps: token_logps {tuple(token_logps.shape)} and segment_ids "
                         f"{tuple(segment_ids.shape)} must have the same shape (one segment id per token)")
    lp, seg = _at_least_fp32(token_logps.reshape(-1)), segment_ids.reshape(-1)
    keep = seg >= 0
    if num_segments is None:
        num_segments = int(seg.max().item()) + 1 if keep.any() else 0
    return lp.new_zeros(num_segments).index_add(0, seg[keep], lp[keep])


# ------------------------------------------------------------------------------------------------------------------
# preference losses (TRL DPOTrainer; reference/smollm3.md §4.2)


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor, loss_type: str = "sigmoid", beta: float = 0.1,
                    label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO ("sigmoid") or APO ("apo_zero", "apo_down") loss from completion log-probs, each [pairs].

    -> (loss averaged over pairs, chosen rewards beta*Δ_w, rejected rewards beta*Δ_l), rewards detached, where
    Δ = log pi_theta(y|x) - log pi_ref(y|x). SmolLM3's alignment used apo_zero with beta 0.05."""
    if loss_type not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss_type {loss_type!r}; valid: {', '.join(PREFERENCE_LOSSES)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (it scales the implicit reward), got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5) (the assumed label-flip probability), got "
                         f"{label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies only to loss_type 'sigmoid' (conservative DPO); {loss_type} "
                         "has no smoothed form: set label_smoothing to 0")
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1:
        raise ValueError(f"preference_loss: the four log-prob tensors must share one shape [pairs], got {shapes}")
    dtype = torch.promote_types(policy_chosen.dtype, torch.float32)  # fp32 at least; float64 stays for gradcheck
    chosen_delta = policy_chosen.to(dtype) - ref_chosen.to(dtype)
    rejected_delta = policy_rejected.to(dtype) - ref_rejected.to(dtype)
    if loss_type == "sigmoid":
        logits = chosen_delta - rejected_delta
        losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                  - F.logsigmoid(-beta * logits) * label_smoothing)
    elif loss_type == "apo_zero":  # raise chosen above the model's default, push rejected down (APO eq. 7)
        losses = (1 - torch.sigmoid(beta * chosen_delta)) + torch.sigmoid(beta * rejected_delta)
    else:  # apo_down: lower both, rejected more (APO eq. 8)
        losses = torch.sigmoid(beta * chosen_delta) + (1 - torch.sigmoid(beta * (chosen_delta - rejected_delta)))
    return losses.mean(), beta * chosen_delta.detach(), beta * rejected_delta.detach()


__all__ = ["IGNORE_INDEX", "PREFERENCE_LOSSES", "chunked_cross_entropy", "cross_entropy", "packed_sequence_logps",
           "preference_loss", "sequence_logps", "token_logps"]
