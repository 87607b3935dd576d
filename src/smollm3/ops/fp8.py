"""FP8 matmuls for the decoder layers' linear projections (`train.fp8: rowwise | tensorwise`).

Each projection's forward GEMM (y = x W^T) and input-gradient GEMM (dx = dy W) run in float8 e4m3 through
`torch._scaled_mm` with dynamic scales: every activation and output gradient is scaled by its absolute maximum
(per row, or over the whole tensor) so that it spans e4m3's range (448), quantized, and multiplied on the tensor
cores at twice the bf16 rate; the GEMM's epilogue applies the scales and writes bf16. The weight-gradient GEMM
(dW = dy^T x) stays bf16 and adds into the fp32 `.grad` as in precision.py, so what the optimizer sees keeps full
precision, and the weights are quantized once per optimizer step (two e4m3 copies, one per GEMM layout), not per
micro-batch. This is torchao's float8 training (dynamic scaling, e4m3 everywhere) without its wgrad in FP8.

- rowwise: one scale per token row of x and dy, per output row of W (forward) and per input column (dgrad): an
  outlier costs its own row only, and a token's values never depend on other tokens'. The one to use.
- tensorwise: one scale per tensor. Its GEMMs alone are up to 25% faster (benchmarks/bench_gemm.py), but
  quantizing takes two passes (amax, then cast), one outlier coarsens the whole tensor, and the scale couples every
  token of the micro-batch, later ones included. The trainer step was no faster than rowwise.

On the H100 (3B preset, grad-accum 32) rowwise made the trainer step 1.13x faster than bf16
(benchmarks/results/2026-11-24-h100-train-swiglu.md), with the loss of a 135M model within 0.6% of bf16's after
1,000 steps (benchmarks/results/2026-11-24-h100-train-fp8.md).

The LM head and the embedding stay bf16 (the logits feed a 128k-way softmax). Parameters, gradients, optimizer and
checkpoints stay fp32, so a run can switch FP8 on or off at any checkpoint. Needs compute capability 8.9 (Ada,
Hopper) or later on CUDA; on the CPU torch emulates it (tests).
"""

from __future__ import annotations

import functools

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448
RECIPES = ("rowwise", "tensorwise")


def quantize(t: torch.Tensor, rowwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """t (2-D) as e4m3 values q and fp32 scales s with t ~= q * s: s = amax / 448 per row ([rows, 1]) or for the
    whole tensor ([]). The clamp keeps a value rounded past 448 finite (e4m3fn has no infinity: it would be NaN)."""
    scale = _scale(t.abs().amax(dim=-1, keepdim=True) if rowwise else t.abs().amax())
    return _cast(t, scale), scale


def _scale(amax: torch.Tensor) -> torch.Tensor:
    return amax.float().clamp(min=1e-12) / E4M3_MAX


def _cast(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def supported(device: torch.device) -> bool:
    return device.type == "cpu" or (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9))


def weight_copies(out: int, inp: int, rowwise: bool, device) -> tuple[torch.Tensor, ...]:
    """Storage for a weight's two e4m3 layouts and their scales: (w, w_scale, wt, wt_scale). `w` [out, in] serves
    the forward (a scale per output row); `wt` [in, out] serves the input gradient, dx = dy @ W, whose second
    operand must be column-major (a scale per input column). Tensorwise scales are 0-D, rowwise ones 2-D: the
    GEMMs tell the recipe from that. Plain tensors (not an object holding them) so that torch.compile treats them
    like the bf16 copies: inputs of one graph shared by every layer, not per-layer constants."""
    return (torch.empty(out, inp, dtype=E4M3, device=device), torch.empty((1, out) if rowwise else (), device=device),
            torch.empty(inp, out, dtype=E4M3, device=device), torch.empty((1, inp) if rowwise else (), device=device))


@torch.no_grad()
def refresh(copies: tuple[torch.Tensor, ...], weights: list[torch.Tensor], gain: torch.Tensor | None = None):
    """Quantize the fp32 `weights` (times `gain` along their input axis, where given: a folded RMSNorm gain),
    stacked along their output rows (q/k/v, gate/up: one GEMM serves them), into
    their `weight_copies` in place: once per optimizer step, into fixed storage, so compiled graphs see the same
    tensors every step. Straight from fp32: no bf16 copy of these weights exists. Compiled on CUDA (one graph per
    projection kind): eager, its abs/amax/divide/clamp/cast passes took ~86 ms a step on the 3B preset."""
    (_refresh_compiled() if weights[0].is_cuda else _refresh)(copies, weights, gain)


def _refresh(copies, weights, gain=None):
    w, w_scale, wt, wt_scale = copies
    if gain is not None:
        weights = [x * gain for x in weights]
    if w_scale.dim() == 2:  # rowwise: per output row for the forward, per input column (over all members) for dgrad
        row_amax = torch.cat([x.abs().amax(1) for x in weights])
        col_amax = torch.stack([x.abs().amax(0) for x in weights]).amax(0)
    else:
        row_amax = col_amax = torch.stack([x.abs().amax() for x in weights]).amax()
    row_scale, col_scale = _scale(row_amax), _scale(col_amax)
    w_scale.copy_(row_scale.reshape(w_scale.shape))
    wt_scale.copy_(col_scale.reshape(wt_scale.shape))
    col = col_scale[:, None] if col_scale.dim() else col_scale
    rows = 0
    for x in weights:
        n = x.shape[0]
        w[rows:rows + n] = _cast(x, row_scale[rows:rows + n, None] if row_scale.dim() else row_scale)
        wt[:, rows:rows + n] = _cast(x.t(), col)
        rows += n


@functools.cache
def _refresh_compiled():
    """torch.compile(_refresh), made at the first CUDA call: made at import, it pulled torch._dynamo into every
    `smollm3` command's start (~1 s on 2 cores), CPU-only ones included."""
    return torch.compile(_refresh, dynamic=False)


def scaled_mm(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor, dtype) -> torch.Tensor:
    """a [M, K] @ b^T for e4m3 a and b [N, K], both row-major (so b^T is the column-major operand the FP8 GEMM
    wants), their scales applied in the epilogue; the result in `dtype`."""
    return torch._scaled_mm(a, b.t(), scale_a=a_scale, scale_b=b_scale, out_dtype=dtype)
