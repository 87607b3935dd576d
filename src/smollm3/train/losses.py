"""Losses for every stage of the recipe: token cross-entropy (pretraining, mid-training, SFT), completion
log-probs, and the DPO / APO preference losses, as plain functions over tensors (the token cross-entropy itself is
an op: ops/cross_entropy.py).

Conventions, shared with the data pipeline: labels are already shifted (label[t] is the target for logits[t]),
-100 marks positions that carry no loss (prompt, padding, document ends). Reductions happen in fp32 whatever the
activation dtype. The preference losses follow TRL's `DPOTrainer` exactly (reference/smollm3.md §4; parity with
the installed TRL is tested in tests/train/test_losses.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smollm3.ops.linear import index_add_in_order
from smollm3.ops.cross_entropy import (IGNORE_INDEX, at_least_fp32, chunked_cross_entropy,  # noqa: F401 (re-exported)
                                       cross_entropy)

PREFERENCE_LOSSES = ("sigmoid", "apo_zero", "apo_down")

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
        row = at_least_fp32(row_logits)
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
    lp, seg = at_least_fp32(token_logps.reshape(-1)), segment_ids.reshape(-1)
    keep = seg >= 0
    if num_segments is None:
        num_segments = int(seg.max().item()) + 1 if keep.any() else 0
    return index_add_in_order(lp.new_zeros(num_segments), seg[keep], lp[keep])


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
