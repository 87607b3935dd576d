"""A/B in one process on the real trainer: one of the trainer's internal choices on, then off, then on, then off
(so drift of the machine shows up as the spread within each side).

    PYTHONPATH=src python3 benchmarks/ab_train.py --what stack --out $OUT/ab.json

Each side is a training run whose `ops:` settings (ops/settings.py) differ in one field:
--what ce-dlogits: the chunked cross-entropy keeping d nll / d logits from the forward (`ops.stored_dlogits_bytes`)
                   against recomputing the logits in the backward;
--what stack:      q/k/v and gate/up as one GEMM each over stacked bf16 copies (`ops.stack_projections`)
                   against one GEMM per projection;
--what swiglu:     SwiGLU's backward as ops/swiglu.py's Triton kernel (`ops.swiglu_kernel`) against
                   inductor's code for it;
--what attention:  document-masked attention as ops/attention_triton.py's kernels (`ops.triton_attention`)
                   against torch's FA2 varlen;
--what fold-norms: each layer's RMSNorm gains folded into the stacked q/k/v and gate/up copies, their gradients
                   finished once a step (`ops.fold_norm_gains`), against the gain multiply per micro-batch;
--what qkv-rope:   attention from the stacked q/k/v output with RoPE inside, its backward writing that output's
                   gradient whole (`ops.qkv_attention`), against RoPE and the concatenation in inductor's code.
3B preset, seq 4096, compiled layers, gradient-accumulation fusion (with --fp8, and train.fp8: rowwise), grad-accum 8
by default.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import bench_train

from smollm3 import preset

# --what -> (the ops setting, its value on the "off" side); "on" is the default
SWITCHES = {"ce-dlogits": ("stored_dlogits_bytes", 0), "stack": ("stack_projections", False),
            "swiglu": ("swiglu_kernel", False), "attention": ("triton_attention", False),
            "fold-norms": ("fold_norm_gains", False), "qkv-rope": ("qkv_attention", False)}


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
    name, off = SWITCHES[args.what]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench_train.make_assets(root, preset(args.preset).vocab_size, args.seq * args.accum * (args.steps + 2))
        for i, enabled in enumerate([True, False, True, False]):
            base = f"compile-noac-ga{args.accum}-" + ("fp8row" if args.fp8 else "fused")
            label = f"{base}-{args.what}-{'on' if enabled else 'off'}-{i}"
            variant = {**bench_train.parse_variant(base, 1), "ops": {} if enabled else {name: off}}
            rows.append(bench_train.run(root, label, args.preset, args.seq, args.steps, variant))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
