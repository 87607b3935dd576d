"""Which implementation of each op the model runs: one frozen dataclass, given to the model when it is built.

A training run takes it from its YAML's `ops:` section and saves it with the resolved config; benchmarks A/B a
kernel by building two models with two settings, never by flipping a module's global. Every default is the
measured-faster choice (the benchmark that measured it is named beside each field).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

from smollm3.config import byte_size


class AttnBackend(enum.StrEnum):
    """Attention implementations (ops/attention.py): "auto" picks sdpa for plain causal attention and on the CPU;
    on a GPU, cudnn for batches whose every row is one document of 32k tokens or more (the long-context stages'
    full windows), varlen (else flex) for packed documents and shorter rows."""

    AUTO = "auto"
    SDPA = "sdpa"
    FLEX = "flex"
    VARLEN = "varlen"
    CUDNN = "cudnn"


@dataclass(frozen=True)
class OpSettings:
    attn_backend: AttnBackend = AttnBackend.AUTO
    # varlen runs attention_triton's kernels where they apply, else torch's FA2 (benchmarks/ab_train.py --what
    # attention)
    triton_attention: bool = True
    # in fused training (train/precision.py):
    # q/k/v and gate/up as one GEMM each over stacked copies (ab_train.py --what stack)
    stack_projections: bool = True
    # SwiGLU's backward as ops/swiglu.py's kernel, not inductor's code (ab_train.py --what swiglu)
    swiglu_kernel: bool = True
    # each layer's RMSNorm gains folded into the stacked q/k/v and gate/up copies (ab_train.py --what fold-norms)
    fold_norm_gains: bool = True
    # attention from the stacked q/k/v output with RoPE inside, on the Triton kernels (ab_train.py --what qkv-rope)
    qkv_attention: bool = True
    # the chunked cross-entropy keeps d nll / d logits from the forward when it fits in this many bytes, else it
    # recomputes the logits in the backward; 0 always recomputes (ab_train.py --what ce-dlogits). Bytes, or a size
    # such as 8GiB (made bytes when built)
    stored_dlogits_bytes: int | str = 2 * 2**30

    def __post_init__(self):
        try:  # YAML and the CLI give a string; the field is always the enum
            object.__setattr__(self, "attn_backend", AttnBackend(self.attn_backend))
        except ValueError:
            raise ValueError(f"ops.attn_backend {self.attn_backend!r} is unknown; choose one of "
                             f"{', '.join(b.value for b in AttnBackend)}") from None
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"ops.{f.name} must be true or false, got {value!r}")
        size = byte_size(self.stored_dlogits_bytes, "ops.stored_dlogits_bytes")
        object.__setattr__(self, "stored_dlogits_bytes", size)
