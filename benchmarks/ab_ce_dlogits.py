"""A/B in one process: the chunked cross-entropy keeping d nll / d logits from the forward (the default when it fits
`losses.STORED_DLOGITS_BYTES`) against recomputing the logits in the backward, on the real trainer.

    PYTHONPATH=src python3 benchmarks/ab_ce_dlogits.py --out $OUT/ab.json

Alternates the two (A B A B) on the 3B preset, seq 4096, compiled layers, gradient-accumulation fusion, ga 8, so
drift of the machine shows up as the spread within each.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import bench_train

import smollm3.train.losses as losses
from smollm3 import preset


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm3-3b")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--accum", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    default = losses.STORED_DLOGITS_BYTES
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench_train.make_assets(root, preset(args.preset).vocab_size, args.seq * args.accum * (args.steps + 2))
        for i, stored in enumerate([True, False, True, False]):
            losses.STORED_DLOGITS_BYTES = default if stored else 0
            name = f"ga{args.accum}-fused-{'stored' if stored else 'recompute'}-{i}"
            rows.append(bench_train.run(root, name, args.preset, args.seq, args.steps, 1, True, False, args.accum,
                                        "auto", True))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
