"""A/B in one process on the real trainer: one of the trainer's internal choices on, then off, then on, then off
(so drift of the machine shows up as the spread within each side).

    PYTHONPATH=src python3 benchmarks/ab_train.py --what stack --out $OUT/ab.json

--what ce-dlogits: the chunked cross-entropy keeping d nll / d logits from the forward (`losses.STORED_DLOGITS_BYTES`)
                   against recomputing the logits in the backward;
--what stack:      q/k/v and gate/up as one GEMM each over stacked bf16 copies (`precision.STACK_PROJECTIONS`)
                   against one GEMM per projection;
--what swiglu:     SwiGLU's backward as train/swiglu.py's Triton kernel (`precision.SWIGLU_KERNEL`) against
                   inductor's code for it;
--what attention:  document-masked attention as attention_triton.py's kernels (`attention.TRITON_KERNELS`)
                   against torch's FA2 varlen;
--what fold-norms: each layer's RMSNorm gains folded into the stacked q/k/v and gate/up copies, their gradients
                   finished once a step (`precision.FOLD_NORM_GAINS`), against the gain multiply per micro-batch;
--what qkv-rope:   attention from the stacked q/k/v output with RoPE inside, its backward writing that output's
                   gradient whole (`precision.QKV_ATTENTION`), against RoPE and the concatenation in inductor's code.
3B preset, seq 4096, compiled layers, gradient-accumulation fusion (with --fp8, and train.fp8: rowwise), grad-accum 8
by default.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import bench_train

import smollm3.attention as attention
import smollm3.train.losses as losses
import smollm3.train.precision as precision
from smollm3 import preset

SWITCHES = {"ce-dlogits": (losses, "STORED_DLOGITS_BYTES", 0), "stack": (precision, "STACK_PROJECTIONS", False),
            "swiglu": (precision, "SWIGLU_KERNEL", False), "attention": (attention, "TRITON_KERNELS", False),
            "fold-norms": (precision, "FOLD_NORM_GAINS", False), "qkv-rope": (precision, "QKV_ATTENTION", False)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", choices=sorted(SWITCHES), required=True)
    ap.add_argument("--preset", default="smollm3-3b")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--accum", type=int, default=8)
    ap.add_argument("--fp8", action="store_true", help="both sides with train.fp8: rowwise")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    module, name, off = SWITCHES[args.what]
    on = getattr(module, name)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench_train.make_assets(root, preset(args.preset).vocab_size, args.seq * args.accum * (args.steps + 2))
        for i, enabled in enumerate([True, False, True, False]):
            setattr(module, name, on if enabled else off)
            base = f"compile-noac-ga{args.accum}-" + ("fp8row" if args.fp8 else "fused")
            label = f"{base}-{args.what}-{'on' if enabled else 'off'}-{i}"
            rows.append(bench_train.run(root, label, args.preset, args.seq, args.steps,
                                        bench_train.parse_variant(base, 1)))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
