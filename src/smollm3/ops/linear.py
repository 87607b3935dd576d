"""GEMMs that add their weight gradient into an fp32 `.grad` themselves, on per-step bf16 or FP8 weight copies.

The ops of training's gradient-accumulation fusion (train/precision.py; Megatron-LM's
`--gradient-accumulation-fusion`): each forward reads the step's compute copy of a weight, and each backward's
weight-gradient GEMM writes `grad += dy.T @ x` in fp32 (cuBLAS with beta = 1), so no bf16 gradient and no separate
add exist. The model's modules call `linear`, `scale`, `embedding` and `swiglu_linear` when the fusion has given
them a copy (model.py); their PyTorch reference is the plain module forward under autocast, which
tests/train/test_precision.py compares them with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smollm3.ops import fp8 as F8
from smollm3.ops.swiglu import swiglu, swiglu_backward_fp8, swiglu_forward


@torch.library.custom_op("smollm3::accumulate_wgrad", mutates_args=("grad",))
def accumulate_wgrad(grad: torch.Tensor, dy: torch.Tensor, x: torch.Tensor) -> None:
    """grad += dy.T @ x, accumulated in grad's dtype (fp32). dy [N, out], x [N, in], grad [out, in].

    An opaque op that declares its mutation, so a compiled backward calls it in place on `.grad` (no copy)."""
    if grad.is_cuda and grad.dtype == torch.float32 and dy.dtype == x.dtype and dy.dtype != torch.float32:
        torch.addmm(grad, dy.T, x, out_dtype=torch.float32, out=grad)  # fp32 C read and written by the GEMM
    else:
        grad.addmm_(dy.T.to(grad.dtype), x.to(grad.dtype))


@accumulate_wgrad.register_fake
def _(grad, dy, x):
    return None


@torch.library.custom_op("smollm3::accumulate_into", mutates_args=("grad",))
def accumulate_into(grad: torch.Tensor, value: torch.Tensor) -> None:
    """grad += value (small gradients: the RMSNorm weights)."""
    grad.add_(value)


@accumulate_into.register_fake
def _(grad, value):
    return None


def index_add_in_order(dest: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """dest.index_add_(0, index, src), summed in the same order on every run. CUDA's index_add_ adds with atomics:
    rows that share an index (a token id repeated in a batch) add in whatever order the threads reach them, so two
    runs of one training round differently. index_put_ with accumulate sorts the indices first and sums each
    index's rows in a fixed order. The CPU's index_add_ is serial already (and keeps its bits)."""
    if dest.is_cuda:
        return dest.index_put_((index,), src, accumulate=True)
    return dest.index_add_(0, index, src)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, grad):
        x = x.to(weight.dtype)
        ctx.save_for_backward(x, weight)
        ctx.grad = grad  # not saved: accumulating into it bumps its version, which saved tensors would refuse
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dy = dy.to(weight.dtype)
        accumulate_wgrad(ctx.grad, dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1]))
        return dy @ weight, None, None


class _Fp8Linear(torch.autograd.Function):
    """_Linear with its forward and input-gradient GEMMs in FP8 (fp8.py): x and dy quantized with dynamic
    scales, W from its per-step e4m3 copies; the weight gradient stays bf16, added into fp32 grad."""

    @staticmethod
    def forward(ctx, x, w, w_scale, wt, wt_scale, grad):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        y = _fp8_forward(x, w, w_scale)
        ctx.save_for_backward(x, wt, wt_scale)
        ctx.grad, ctx.shape = grad, shape
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x, wt, wt_scale = ctx.saved_tensors
        dy = dy.reshape(-1, dy.shape[-1]).to(x.dtype)
        dx = _fp8_backward(ctx.grad, dy, *F8.quantize(dy, wt_scale.dim() == 2), x, wt, wt_scale)
        return dx.reshape(ctx.shape), None, None, None, None, None


class _Fp8SwiGLU(torch.autograd.Function):
    """silu(gate) * up over the stacked gate/up projection in rowwise FP8: _Fp8Linear and then SwiGLU, with SwiGLU's
    backward and the rowwise quantization of its result in one kernel (swiglu.py)."""

    @staticmethod
    def forward(ctx, x, w, w_scale, wt, wt_scale, grad):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        gate_up = _fp8_forward(x, w, w_scale)
        ctx.save_for_backward(x, gate_up, wt, wt_scale)
        ctx.grad, ctx.shape = grad, shape
        h = swiglu_forward(gate_up)
        return h.reshape(*shape[:-1], h.shape[-1])

    @staticmethod
    def backward(ctx, dh):
        x, gate_up, wt, wt_scale = ctx.saved_tensors
        d_gate_up, dq, d_scale = swiglu_backward_fp8(gate_up, dh.reshape(-1, dh.shape[-1]).to(x.dtype))
        dx = _fp8_backward(ctx.grad, d_gate_up, dq, d_scale, x, wt, wt_scale)
        return dx.reshape(ctx.shape), None, None, None, None, None


def _fp8_forward(x, w, w_scale):
    """y = x W^T, x [N, in] quantized per row (or per tensor, as the weight's scale says)."""
    return F8.scaled_mm(*F8.quantize(x, w_scale.dim() == 2), w, w_scale, x.dtype)


def _fp8_backward(grad, dy, dyq, dy_scale, x, wt, wt_scale):
    """grad += dy^T x in bf16 into fp32; -> dx = dy W from dy's e4m3 values."""
    accumulate_wgrad(grad, dy, x)
    return F8.scaled_mm(dyq, dy_scale, wt, wt_scale, x.dtype)


def linear(x, weight, grad, fp8: tuple[torch.Tensor, ...] | None = None):
    """x @ weight.T with weight's gradient added into the fp32 `grad`; `fp8`: the weight's per-step e4m3 copies
    (fp8.weight_copies), which then serve the forward and input-gradient GEMMs in place of `weight`."""
    if fp8 is None:
        return _Linear.apply(x, weight, grad)
    return _Fp8Linear.apply(x, *fp8, grad)


def swiglu_linear(x, weight, grad, fp8: tuple[torch.Tensor, ...] | None = None):
    """silu(gate) * up from one GEMM over the stacked gate/up weight: SwiGLU's backward one Triton kernel on the GPU
    (swiglu.py); with rowwise FP8 that kernel also quantizes its result for the input-gradient GEMM."""
    if fp8 is None:
        return swiglu(_Linear.apply(x, weight, grad))
    return _Fp8SwiGLU.apply(x, *fp8, grad)


def scale(x, weight, grad):
    """x * weight, the weight's gradient (a sum over tokens) added into the fp32 `grad`: an RMSNorm gain."""
    return _Scale.apply(x, weight, grad)


def embedding(ids, weight, grad, param):
    """The lookup from the bf16 copy `weight`; the gradient goes into `grad` (`param`, the fp32 parameter, only makes
    the output require grad)."""
    return _Embedding.apply(ids, weight, grad, param)


class _Scale(torch.autograd.Function):
    """x * weight with the weight's gradient (a sum over tokens) added into fp32 grad: the RMSNorm gain."""

    @staticmethod
    def forward(ctx, x, weight, grad):
        ctx.save_for_backward(x, weight)
        ctx.grad = grad
        return x * weight

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        accumulate_into(ctx.grad, (dy.float() * x.float()).reshape(-1, x.shape[-1]).sum(0))
        return dy * weight, None, None


class _Embedding(torch.autograd.Function):
    """The lookup from the bf16 copy. `param` (the fp32 parameter) is an input only so that the output requires
    grad, as no other input here does; its gradient goes into `grad` directly, and autograd receives None."""

    @staticmethod
    def forward(ctx, ids, weight, grad, param):
        ctx.save_for_backward(ids)
        ctx.grad = grad
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, dy):
        (ids,) = ctx.saved_tensors
        index_add_in_order(ctx.grad, ids.reshape(-1), dy.reshape(-1, dy.shape[-1]).to(ctx.grad.dtype))
        return None, None, None, None
