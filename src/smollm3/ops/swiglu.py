"""SwiGLU over the stacked gate/up projection, with its backward as one Triton kernel on the GPU.

The fused trainer computes gate and up with one GEMM (precision.py), so SwiGLU's input is [..., 2I] = [gate | up]
and its gradient is the same stacked [d gate | d up]. Left to torch.compile, that gradient is a `cat` of two
pointwise results, generated as one kernel over the 2I output columns that loads, per column, what either half
needs: ~630 MB of traffic a layer for the 3B preset at 4,096 tokens, 208 us on the H100. The kernel here walks the
I columns once, reads gate, up and d h once each and writes both halves: 450 MB, the least the maths allows; 161 us
in training, and the whole trainer step 1.2% faster in one process alternating the two
(benchmarks/results/2026-11-24-h100-train-swiglu.md).

With FP8 rowwise (fp8.py) a second kernel also quantizes the gradient it writes, per row, for the FP8
input-gradient GEMM (`swiglu_backward_fp8`, used by precision._Fp8SwiGLU): +1.9% on that trainer step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smollm3.ops import fp8 as F8

try:  # triton ships with CUDA builds of torch
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
except ImportError:
    triton = None

BLOCK = 1024  # columns per program


def _kernels_for(t: torch.Tensor) -> bool:
    return triton is not None and t.is_cuda


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up = [gate | up] along the last axis."""
    return _SwiGLU.apply(gate_up)


def swiglu_forward(gate_up: torch.Tensor) -> torch.Tensor:
    """The forward maths, without autograd's saving (inductor fuses it where compiled)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate_up):
        ctx.save_for_backward(gate_up)
        return swiglu_forward(gate_up)

    @staticmethod
    def backward(ctx, dh):
        (gate_up,) = ctx.saved_tensors
        if _kernels_for(gate_up):
            return torch.ops.smollm3.swiglu_backward(gate_up.contiguous(), dh.contiguous())
        return swiglu_backward_reference(gate_up, dh)


def swiglu_backward_fp8(gate_up: torch.Tensor, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SwiGLU's gradient for 2-D gate_up [rows, 2I] and dh [rows, I] with its rowwise e4m3 quantization for the FP8
    input-gradient GEMM: one pass over the row on the GPU, where inductor's fused version read its inputs twice."""
    if _kernels_for(gate_up):
        return torch.ops.smollm3.swiglu_backward_fp8_rowwise(gate_up.contiguous(), dh.contiguous())
    grad = swiglu_backward_reference(gate_up, dh)
    return (grad, *F8.quantize(grad, rowwise=True))


def swiglu_backward_reference(gate_up: torch.Tensor, dh: torch.Tensor) -> torch.Tensor:
    """The same maths in torch (CPU, and the kernel's test): fp32 (or fp64) inside, the input dtype out."""
    inner = torch.promote_types(gate_up.dtype, torch.float32)
    gate, up = gate_up.to(inner).chunk(2, dim=-1)
    dh, s = dh.to(inner), torch.sigmoid(gate)
    d_gate = dh * up * s * (1 + gate * (1 - s))
    return torch.cat([d_gate, dh * gate * s], dim=-1).to(gate_up.dtype)


if triton is not None:
    @triton.jit
    def _grad_block(gate_up_ptr, dh_ptr, out_ptr, row, cols, width):
        """Columns `cols` of one row: loads gate, up, dh; stores [d gate | d up] in out's dtype and returns them."""
        mask = cols < width
        gate_ptr = gate_up_ptr + row * 2 * width + cols
        gate = tl.load(gate_ptr, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(gate_ptr + width, mask=mask, other=0.0).to(tl.float32)
        dh = tl.load(dh_ptr + row * width + cols, mask=mask, other=0.0).to(tl.float32)
        s = tl.sigmoid(gate)
        d_gate = (dh * up * s * (1 + gate * (1 - s))).to(out_ptr.dtype.element_ty)
        d_up = (dh * gate * s).to(out_ptr.dtype.element_ty)
        out = out_ptr + row * 2 * width + cols
        tl.store(out, d_gate, mask=mask)
        tl.store(out + width, d_up, mask=mask)
        return d_gate, d_up

    @triton.jit
    def _swiglu_bwd(gate_up_ptr, dh_ptr, out_ptr, width, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        _grad_block(gate_up_ptr, dh_ptr, out_ptr, row, tl.program_id(1) * BLOCK + tl.arange(0, BLOCK), width)

    @triton.jit
    def _swiglu_bwd_fp8_rows(gate_up_ptr, dh_ptr, out_ptr, q_ptr, scale_ptr, width, BLOCK: tl.constexpr,
                             FP8_MAX: tl.constexpr):
        """One row: [d gate | d up] in bf16 and their row maximum, then the same values scaled into e4m3 (read back
        from the row just written, which is still in L2)."""
        row = tl.program_id(0).to(tl.int64)
        amax = tl.zeros([BLOCK], tl.float32)
        for start in range(0, width, BLOCK):
            d_gate, d_up = _grad_block(gate_up_ptr, dh_ptr, out_ptr, row, start + tl.arange(0, BLOCK), width)
            # the maximum of the rounded values, as quantizing the stored gradient would see them (masked: zeros)
            amax = tl.maximum(amax, tl.maximum(tl.abs(d_gate.to(tl.float32)), tl.abs(d_up.to(tl.float32))))
        scale = tl.maximum(tl.max(amax, axis=0), 1e-12) / FP8_MAX
        tl.store(scale_ptr + row, scale)
        # the second pass reads columns other threads of this program wrote: a barrier orders those stores first
        tl.debug_barrier()
        for start in range(0, 2 * width, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < 2 * width
            v = tl.load(out_ptr + row * 2 * width + cols, mask=mask).to(tl.float32) / scale
            v = tl.minimum(tl.maximum(v, -FP8_MAX), FP8_MAX)
            tl.store(q_ptr + row * 2 * width + cols, v.to(q_ptr.dtype.element_ty), mask=mask)

    @triton_op("smollm3::swiglu_backward_fp8_rowwise", mutates_args=())
    def swiglu_backward_fp8_rowwise(gate_up: torch.Tensor, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                         torch.Tensor]:
        """[d gate | d up] for contiguous gate_up [rows, 2I] and dh [rows, I], with its rowwise e4m3
        quantization: (gradient, e4m3 values, fp32 scales [rows, 1]), as `fp8.quantize(gradient, True)`."""
        out = torch.empty_like(gate_up)
        q = torch.empty_like(gate_up, dtype=F8.E4M3)
        scale = torch.empty(gate_up.shape[0], 1, dtype=torch.float32, device=gate_up.device)
        wrap_triton(_swiglu_bwd_fp8_rows)[(gate_up.shape[0],)](gate_up, dh, out, q, scale, dh.shape[-1],
                                                               BLOCK=BLOCK, FP8_MAX=F8.E4M3_MAX)
        return out, q, scale

    @triton_op("smollm3::swiglu_backward", mutates_args=())
    def swiglu_backward(gate_up: torch.Tensor, dh: torch.Tensor) -> torch.Tensor:
        """[d gate | d up] for contiguous gate_up [..., 2I] and dh [..., I]."""
        out = torch.empty_like(gate_up)
        width = dh.shape[-1]
        wrap_triton(_swiglu_bwd)[(dh.numel() // width, triton.cdiv(width, BLOCK))](gate_up, dh, out, width, BLOCK=BLOCK)
        return out
