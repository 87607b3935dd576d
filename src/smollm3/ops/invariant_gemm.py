"""A GEMM whose every output row is the same bits whatever else the product holds: y = x @ w^T in one Triton kernel
with one fixed tiling for every shape.

cuBLAS picks its kernel by shape: a prompt step of 64 rows and one of 640 may run different tilings, split-K
among them (reductions over K in another order), so a token's K/V and logits change in the last bits with what
else its step held. Served from the prefix cache, a prompt's suffix is a shorter step than the whole prompt, so
greedy outputs with and without the cache drift apart on near-ties. Here the K loop, its block width and the tile
are fixed, and a row is computed from its own x row and w only (no split-K): the same row gives the same bits in
any step. Thinking Machines' batch-invariant kernels (and vLLM's batch-invariant mode built on them) replace
torch's matmul the same way.

`invariant_linear` is a torch custom op, so it sits inside torch.compile'd code and CUDA graphs. Its reference is
F.linear (equal up to rounding, not bit for bit).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # triton ships with CUDA builds of torch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover (CPU-only installs)
    triton = None

# the one tiling: 128 x 128 output tiles, K in blocks of 64, eight warps, three stages (a good H100 tile for the
# 3B's projections; it never changes with the shape, which is the point)
BM, BN, BK, WARPS, STAGES, GROUP = 128, 128, 64, 8, 3, 8


def available(device) -> bool:
    return triton is not None and torch.device(device).type == "cuda"


if triton is not None:
    @triton.jit(do_not_specialize=["M"])  # one compiled kernel for every row count
    def _gemm_kernel(x_ptr, w_ptr, y_ptr, M, N, K, sxm, swn, sym, BM: tl.constexpr, BN: tl.constexpr,
                     BK: tl.constexpr, GROUP: tl.constexpr):
        # program -> (row tile, column tile), GROUP row tiles walked together so their w tiles stay in L2
        pid = tl.program_id(0)
        grid_m = tl.cdiv(M, BM)
        grid_n = tl.cdiv(N, BN)
        width = GROUP * grid_n
        first_m = (pid // width) * GROUP
        size_m = tl.minimum(grid_m - first_m, GROUP)
        pid_m = first_m + (pid % width) % size_m
        pid_n = (pid % width) // size_m
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        x_ptrs = x_ptr + rm[:, None].to(tl.int64) * sxm + rk[None, :]
        w_ptrs = w_ptr + rn[:, None].to(tl.int64) * swn + rk[None, :]
        acc = tl.zeros((BM, BN), tl.float32)
        for k0 in range(0, K, BK):  # in order, from 0: a row's sum never depends on the other rows
            kmask = (k0 + rk) < K
            x = tl.load(x_ptrs, mask=(rm[:, None] < M) & kmask[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=(rn[:, None] < N) & kmask[None, :], other=0.0)
            acc = tl.dot(x, tl.trans(w), acc)
            x_ptrs += BK
            w_ptrs += BK
        tl.store(y_ptr + rm[:, None].to(tl.int64) * sym + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))


def launch(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [M, K], w [N, K] (both with a contiguous last dim) -> y [M, N] in x's dtype, through the kernel."""
    M, K = x.shape
    N = w.shape[0]
    assert x.stride(-1) == 1 and w.stride(-1) == 1 and w.shape[1] == K
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M:
        grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
        _gemm_kernel[grid](x, w, y, M, N, K, x.stride(0), w.stride(0), y.stride(0), BM=BM, BN=BN, BK=BK,
                           GROUP=GROUP, num_warps=WARPS, num_stages=STAGES)
    return y


@torch.library.custom_op("smollm3::invariant_linear", mutates_args=())
def invariant_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """F.linear(x, w) for x [M, K] on CUDA, each row's bits independent of M and of the other rows."""
    if not available(x.device):
        raise RuntimeError("invariant_linear needs Triton and a CUDA device")
    return launch(x if x.stride(-1) == 1 else x.contiguous(), w if w.stride(-1) == 1 else w.contiguous())


@invariant_linear.register_fake
def _(x, w):
    return x.new_empty(x.shape[0], w.shape[0])


def reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w)
