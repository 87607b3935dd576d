"""bf16 compute weights over fp32 parameters, with each weight gradient added into fp32 `.grad` by its own GEMM.

Under plain autocast every micro-batch casts each fp32 weight to bf16 again, and autograd adds each micro-batch's
gradient into the fp32 `.grad` in a separate pass (bf16 grad -> fp32 copy -> add). On the 3B preset that is ~8 ms of
casts and ~16 ms of accumulation per 4,096-token micro-batch, an eighth of the step
(benchmarks/results/2026-11-24-h100-train-1gpu.md). `GradAccumFusion` does what Megatron-LM's
`--gradient-accumulation-fusion` does instead:

- bf16 copies of the weights are made once per optimizer step (`begin_step`), not once per micro-batch;
- every linear layer's weight-gradient GEMM writes `grad += dy.T @ x` in fp32 itself (cuBLAS with beta = 1,
  `accumulate_wgrad`), so no bf16 gradient and no separate add exist; the LM head (in the chunked cross-entropy),
  the embedding and the RMSNorm weights add into `.grad` the same way;
- projections that read the same input (q/k/v, gate/up) run as one GEMM over a stacked copy, their `.grad`s row
  slices of one stacked fp32 buffer (+2 to 4% more; the k and v GEMMs alone have N = 512); SwiGLU then reads the
  stacked gate/up output, its backward one Triton kernel on the GPU (ops/swiglu.py; with FP8 rowwise it also
  quantizes the gradient for the FP8 GEMM);
- each decoder layer's RMSNorm gains are folded into the stacked projection they feed: norm(x) * g @ W^T is
  norm(x) @ (W * g)^T, so the per-step copy is W * g and the GEMM accumulates G = sum dy^T norm(x), the gradient of
  W * g. As W and g are constant within a step, `end_step` finishes both exactly: W's gradient is G * g and g's is
  the column sum of G * W. The per-micro-batch gain multiply and its gradient's column reduction (which inductor
  finished in eager `aten.sum` calls, four small kernels a layer) are gone.

On the H100 the first two made the trainer step 11.5% faster than autocast in the same run, with 1.8 GiB less peak
memory (benchmarks/results/2026-11-24-h100-train-fused.md). Parameters, gradients, the optimizer, clipping and
checkpoints are untouched: all stay fp32, so a run can switch between this and autocast at any checkpoint. It is
applied from outside the model, like activation checkpointing: each module gets its step's copies as attributes
(`compute_weight`, `weight_grad`, `stacked_weight`, ...), and model.py's forward, finding them, runs its GEMMs
through ops/linear.py. Which of the above run is the model's OpSettings (stack_projections, swiglu_kernel,
fold_norm_gains, qkv_attention). Single-process only (FSDP2 has its own mixed precision).
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

from smollm3.model import SmolLM3Attention, SmolLM3Embedding, SmolLM3Linear, SmolLM3MLP, SmolLM3RMSNorm
from smollm3.ops import attention_triton
from smollm3.ops import fp8 as F8

WEIGHTED = (SmolLM3Linear, SmolLM3Embedding, SmolLM3RMSNorm)  # the modules whose weights the fusion serves
STACKS = (SmolLM3Attention, SmolLM3MLP)  # the modules whose projections can share one GEMM


class GradAccumFusion:
    """Applies the above to a SmolLM3ForCausalLM in place; call `begin_step()` before each optimizer step's first
    micro-batch (it refreshes the bf16 copies from the fp32 parameters and links `.grad`), `end_step()` after its
    last backward (it finishes the folded gains' gradients: `.grad` is incomplete before), and zero the gradients
    with `optimizer.zero_grad(set_to_none=False)` so the links hold. `fp8` ("rowwise" | "tensorwise") also runs
    the decoder layers' projections through FP8 GEMMs (ops/fp8.py)."""

    def __init__(self, model, dtype: torch.dtype = torch.bfloat16, fp8: str | None = None):
        self.dtype = dtype
        settings = model.settings
        for m in model.modules():
            if not isinstance(m, WEIGHTED) and any(True for _ in m.parameters(recurse=False)):
                raise TypeError(f"GradAccumFusion does not know {type(m).__name__}; set train.grad_accum_fusion: false")
        if not all(p.requires_grad for p in model.parameters()):
            raise ValueError("GradAccumFusion trains every weight; with frozen ones set train.grad_accum_fusion: false")
        if fp8 not in (None, *F8.RECIPES):
            raise ValueError(f"train.fp8 is {fp8!r}; use one of {', '.join(F8.RECIPES)} or null")
        self.modules = [m for m in model.modules() if isinstance(m, WEIGHTED)]
        self.stacks = [m for m in model.modules() if isinstance(m, STACKS)] if settings.stack_projections else []
        # each layer's norms and the stacked projections that read them: (norm, stack) whose gain folds into it
        self.folds = [(norm, stack) for layer in model.model.layers if self.stacks and settings.fold_norm_gains
                      for norm, stack in ((layer.input_layernorm, layer.self_attn),
                                          (layer.post_attention_layernorm, layer.mlp))]
        for norm, _ in self.folds:
            norm.folded = True
        # SwiGLU's backward as ops/swiglu.py's kernel; tensorwise FP8 keeps inductor's code, which fuses it with the
        # whole tensor's maximum
        for m in self.stacks:
            if isinstance(m, SmolLM3MLP):
                m.swiglu_kernel = settings.swiglu_kernel and fp8 != "tensorwise"
        self.qkv_attention = settings.qkv_attention and settings.triton_attention
        self.pending = False  # gradients accumulated since begin_step and not finished by end_step
        self.params = list(dict.fromkeys(m.weight for m in self.modules))  # the tied head/embedding once
        self.copies: dict[nn.Parameter, torch.Tensor] = {}
        # train.fp8: the decoder layers' projections (not the LM head) read per-step e4m3 copies of their weights
        members = {id(getattr(m, name)) for m in self.stacks for name in m.stacked}
        self.fp8_modules = [m for layer in model.model.layers for m in layer.modules()
                            if fp8 and (m in self.stacks or isinstance(m, SmolLM3Linear) and id(m) not in members)]
        self.rowwise = fp8 == "rowwise"
        # their weights are quantized straight from fp32 and get no bf16 copy (5 GiB less on the 3B preset)
        self.fp8_weights = {m: [getattr(m, name).weight for name in m.stacked] if m in self.stacks else [m.weight]
                            for m in self.fp8_modules}
        self.no_copy = {p for weights in self.fp8_weights.values() for p in weights}

    @torch.no_grad()
    def begin_step(self):
        """Cast the fp32 parameters into the bf16 copies; give every parameter a zeroed fp32 `.grad` the first
        time (lazily, so a checkpoint can be loaded before: DCP initialises optimizer state only without grads).

        The projections that share an input (q/k/v, gate/up) get one stacked copy and one stacked fp32 gradient
        buffer, each parameter's bf16 copy and `.grad` a row slice of them, so one GEMM serves them all."""
        for m in self.stacks:
            if isinstance(m, SmolLM3Attention):
                m.qkv_kernels = self.qkv_attention and attention_triton.runs_on(m.q_proj.weight.device)
            members = [getattr(m, name) for name in m.stacked]
            if any(lin.weight.grad is None for lin in members):
                w = members[0].weight
                m.stacked_grad = torch.zeros(sum(lin.out_features for lin in members), w.shape[1], dtype=w.dtype,
                                             device=w.device)
                m.stacked_weight = None if m in self.fp8_weights else torch.empty_like(m.stacked_grad,
                                                                                        dtype=self.dtype)
                rows = 0
                for lin in members:
                    lin.weight.grad = m.stacked_grad[rows:rows + lin.out_features]
                    if m.stacked_weight is not None:
                        self.copies[lin.weight] = m.stacked_weight[rows:rows + lin.out_features]
                    rows += lin.out_features
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if p not in self.copies and p not in self.no_copy:
                self.copies[p] = torch.empty_like(p, dtype=self.dtype)
        gains = {stack: norm.weight for norm, stack in self.folds}
        scaled = {getattr(m, name).weight for m in gains for name in m.stacked}
        plain = [p for p in self.copies if p not in scaled]
        torch._foreach_copy_([self.copies[p] for p in plain], plain)
        for m, gain in gains.items():
            if m.stacked_weight is not None:  # W * g, rounded once to bf16
                weights = [getattr(m, name).weight for name in m.stacked]
                (_scaled_copy_compiled() if gain.is_cuda else _scaled_copy)(m.stacked_weight, weights, gain)
        for m in self.modules:
            m.compute_weight, m.weight_grad = self.copies.get(m.weight), m.weight.grad
        for m, weights in self.fp8_weights.items():
            if m.fp8 is None:
                m.fp8 = F8.weight_copies(sum(w.shape[0] for w in weights), weights[0].shape[1], self.rowwise,
                                         weights[0].device)
            F8.refresh(m.fp8, weights, gains.get(m))
        self.pending = True

    @torch.no_grad()
    def end_step(self):
        """Finish the gradients of the folded gains after the step's last backward: each stack's fp32 `.grad` holds
        G, the gradient of W * g; W's is G * g and g's the column sum of G * W (added into g's `.grad`). Once per
        step (a no-op until the next begin_step)."""
        if not self.pending:
            return
        for norm, stack in self.folds:
            weights = [getattr(stack, name).weight for name in stack.stacked]
            (_unfold_compiled() if norm.weight.is_cuda else _unfold)(stack.stacked_grad, weights, norm.weight,
                                                                     norm.weight.grad)
        self.pending = False


def _scaled_copy(out, weights, gain):
    """out (the stacked bf16 copy) = the row-stacked `weights` times `gain` along their input axis."""
    out.copy_(torch.cat(weights) * gain)


@functools.cache
def _scaled_copy_compiled():
    """Compiled at the first CUDA call (not at import: see fp8._refresh_compiled): eager, the casts into bf16 took
    ~9 ms a step on the 3B preset (H100)."""
    return torch.compile(_scaled_copy, dynamic=False)


def _unfold(grad, weights, gain, gain_grad):
    """grad: the stacked gradient of W * g (W the row-stacked `weights`) -> W's; adds g's into gain_grad."""
    rows = 0
    for w in weights:
        gain_grad += (grad[rows:rows + w.shape[0]] * w).sum(0)
        rows += w.shape[0]
    grad.mul_(gain)


@functools.cache
def _unfold_compiled():
    """Compiled at the first CUDA call: 11 ms a step on the 3B preset (H100), 0.04 ms a micro-batch at grad-accum
    256."""
    return torch.compile(_unfold, dynamic=False)
