"""Process groups, and what is applied to the model from outside: FSDP2, activation checkpointing, torch.compile.

One code path for every scale: a plain `python` run is world size 1; under `torchrun` each process joins the group
(NCCL on GPU, gloo on CPU) and every decoder layer, then the root, is sharded with `fully_shard`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x


def init_distributed() -> Dist:
    """Join the torchrun group if there is one; pick the device (this rank's GPU, else CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def close_distributed():
    if dist.is_initialized():
        dist.destroy_process_group()


def apply_activation_checkpointing(model, keep_attention: bool = False, keep_matmuls_layers: int = 0):
    """Recompute each decoder layer in the backward pass. The layer's forward is wrapped in place, so parameter names
    (and hence checkpoints) are unchanged. `keep_attention`: the attention kernels' outputs are saved instead of
    recomputed (selective checkpointing), so the recompute runs the projections, norms and MLP but no attention:
    at 64k tokens attention's forward was 27% of a step's GPU time, half of it the recompute, and keeping its output
    made the step 1.16x faster for 8 GiB more (benchmarks/results/2026-12-05-h100-session17 and -session18).
    `keep_matmuls_layers`: on the last this many layers the projections' outputs are saved too, so their recompute
    is only norms, RoPE and SwiGLU (no GEMM): at 32k tokens on the 3B preset, 1.38 GiB more a layer for ~0.26% of
    the step (6 layers: +1.5%, benchmarks/results/2026-12-06-h100-session29), for memory a card has left."""
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    layers = model.model.layers
    for i, layer in enumerate(layers):
        policy = (_save_attention_and_matmuls if i >= len(layers) - keep_matmuls_layers
                  else _save_attention if keep_attention else None)
        context = {"context_fn": functools.partial(create_selective_checkpoint_contexts, policy)} if policy else {}
        forward = layer.forward

        @functools.wraps(forward)
        def wrapped(*args, _forward=forward, _context=context, **kwargs):
            return checkpoint(_forward, *args, use_reentrant=False, **_context, **kwargs)

        layer.forward = wrapped


@functools.cache
def _attention_ops() -> frozenset:
    """The fused attention kernels' ops, whichever backend runs: ours (ops/attention_triton.py), torch's FA2 varlen,
    and SDPA's fused kernels. (FlexAttention is a higher-order op: it is recomputed.)"""
    names = [("smollm3", "doc_attention_forward"), ("aten", "_flash_attention_forward"),
             ("aten", "_scaled_dot_product_flash_attention"), ("aten", "_scaled_dot_product_efficient_attention"),
             ("aten", "_scaled_dot_product_cudnn_attention"), ("aten", "_scaled_dot_product_flash_attention_for_cpu")]
    ops = set()
    for namespace, name in names:
        try:
            ops.add(getattr(getattr(torch.ops, namespace), name).default)
        except AttributeError:  # not in this build (or ours: no Triton)
            pass
    return frozenset(ops)


def _save_attention(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in _attention_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def _save_attention_and_matmuls(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    matmuls = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten._scaled_mm.default)
    return CheckpointPolicy.MUST_SAVE if op in matmuls else _save_attention(ctx, op, *args, **kwargs)


def apply_compile(model):
    """Compile each decoder layer (same shapes every layer: one graph per RoPE/NoPE variant, compiled once), and the
    final norm, whose eager forward and backward are ~20 elementwise passes over [tokens, hidden] fp32 (~0.4 ms a
    4,096-token micro-batch of the 3B preset on the H100). The varlen attention call is one node for dynamo
    (attention._varlen_call), so the layer compiles without breaks."""
    import torch._dynamo

    # RoPE and NoPE layers, each with and without activation checkpointing, are guard sets of one code object
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    for layer in model.model.layers:
        layer.compile(dynamic=False)
    model.model.norm.compile(dynamic=False)


def apply_fsdp(model, param_dtype: torch.dtype | None, reduce_dtype: torch.dtype = torch.float32):
    """FSDP2: shard each decoder layer, then the root (embeddings, final norm, tied lm_head)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model
