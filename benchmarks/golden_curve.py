"""A short training run's loss at every step: the curve a refactor must not move. Self-contained (only the
package's trainer, shard writer and tokenizer), so the same file runs against an older tree of the code:

    git archive 34b9ce3 src | (mkdir -p baseline && tar -x -C baseline)      # the tree before the change
    PYTHONPATH=baseline/src python3 benchmarks/golden_curve.py --out $OUT/golden-before.json
    PYTHONPATH=src python3 benchmarks/golden_curve.py --against $OUT/golden-before.json --out $OUT/golden-after.json

Documents (lengths exponential, mean 1,024, seed 0) packed into `--seq` windows feed the trainer's pretraining path
with a preset from scratch (seed 0). `--data zipf` (default): ids from a Zipf law, each followed half the time by a
fixed successor, so the loss falls from the first step. `--data random`: uniform ids, where the loss stays at
log(vocab), the gradient is noise and a rounding difference grew past 1e-3 within 7 steps on the GPU
(benchmarks/results/2026-12-05-h200-session14). With `--against FILE` the run exits 1, naming the first step,
when any step's loss differs from FILE's by more than `--tol`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml


def document(rng, vocab: int, n: int, data: str) -> np.ndarray:
    """One document of n ids: `random` uniform; `zipf` from a Zipf law, each followed half the time by a fixed
    successor (a bigram rule the model learns within a few steps)."""
    if data == "random":
        return rng.integers(2, vocab, n)
    ids = np.minimum(rng.zipf(1.2, n) + 1, vocab - 1)
    follow = rng.random(n) < 0.5
    for i in range(1, n):
        if follow[i]:
            ids[i] = 2 + (ids[i - 1] * 7 + 3) % (vocab - 2)
    return ids


def write_assets(root: Path, vocab: int, n_tokens: int, data: str = "zipf"):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import models

    from smollm3.data.shards import ShardWriter
    from smollm3.tokenizer import Tokenizer

    Tokenizer(HFTok(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>")), eos_token="</s>").save(root / "tok")
    rng = np.random.default_rng(0)
    with ShardWriter(root / "shards" / "000.ds", 4, "random") as w:
        written = 0
        while written < n_tokens:
            n = max(16, int(rng.exponential(1024)))
            w.write(document(rng, vocab, n, data))
            written += n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm3-135m")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--data", choices=["zipf", "random"], default="zipf", help="see document()")
    ap.add_argument("--attn-backend", default=None,
                    help="the attention backend (default: the tree's own choice). On the GPU the default, our Triton "
                         "kernels, adds each GQA query head's dK/dV share atomically, so two runs of one tree differ "
                         "by up to ~8e-3 a step (benchmarks/results/2026-12-05-h100-session18); flex's backward sums "
                         "them in a fixed order")
    ap.add_argument("--against", default=None, help="a previous run's JSON: exit 1 if a step differs by > --tol")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from smollm3 import preset
    from smollm3.train.config import load_train_config
    from smollm3.train.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokens = args.seq * args.micro_batch * args.grad_accum * (args.steps + 2)
        write_assets(root, preset(args.preset).vocab_size, tokens, args.data)
        cfg = {"out_dir": str(root / "run"),
               "model": {"preset": args.preset, "overrides": {"max_position_embeddings": args.seq}},
               "data": {"kind": "pretrain", "tokenizer": str(root / "tok"), "seq_len": args.seq,
                        "stages": [{"start_tokens": 0, "weights": {str(root / "shards"): 1.0}}]},
               "train": {"steps": args.steps, "micro_batch": args.micro_batch, "grad_accum": args.grad_accum,
                         "dtype": args.dtype, "compile": args.compile},
               "optim": {"lr": 1e-3, "warmup_steps": 2},
               "checkpoint": {"every": None}, "log": {"every": 1, "tensorboard": False}}
        if args.attn_backend:  # ops.attn_backend since the ops/ refactor (issue 25), model.attn_backend before
            try:
                import smollm3.ops.settings  # noqa: F401
                cfg["ops"] = {"attn_backend": args.attn_backend}
            except ImportError:
                cfg["model"]["attn_backend"] = args.attn_backend
        (root / "c.yaml").write_text(yaml.safe_dump(cfg))
        train(load_train_config(root / "c.yaml"))
        records = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    result = {"preset": args.preset, "data": args.data, "steps": args.steps, "seq": args.seq, "micro_batch": args.micro_batch,
              "grad_accum": args.grad_accum, "dtype": args.dtype, "compile": args.compile,
              "attn_backend": args.attn_backend, "losses": losses}
    print(json.dumps(losses))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.against:
        want = json.loads(Path(args.against).read_text())["losses"]
        if len(want) != len(losses):
            sys.exit(f"golden curve: {len(losses)} steps here, {len(want)} in {args.against}")
        for step, (a, b) in enumerate(zip(losses, want), 1):
            if abs(a - b) > args.tol:
                sys.exit(f"golden curve: step {step} loss {a:.6f} differs from {args.against}'s {b:.6f} by more "
                         f"than {args.tol}")
        print(f"golden curve: all {len(losses)} steps within {args.tol} of {args.against}")


if __name__ == "__main__":
    main()
