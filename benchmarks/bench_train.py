"""Training throughput of the real trainer (`smollm3.train.trainer.train`) on one GPU: tokens/s and MFU.

    python3 benchmarks/bench_train.py --preset smollm3-3b --seq 4096 --steps 12 --out results.json

Random-token shards (document lengths exponential, mean 1024, so intra-document masking is on) feed the pretraining
path: bf16 autocast over fp32 master weights, fused AdamW, activation checkpointing, with and without
torch.compile of each decoder layer. The first steps (compilation, allocator warm-up) are left out of the median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml


def make_assets(root: Path, vocab: int, n_tokens: int):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import models

    from smollm3.data.shards import ShardWriter
    from smollm3.tokenizer import Tokenizer

    # the trainer only needs a tokenizer no larger than the model's vocabulary (for checks and HF exports)
    Tokenizer(HFTok(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>")), eos_token="</s>").save(root / "tok")
    rng = np.random.default_rng(0)
    with ShardWriter(root / "shards" / "000.ds", 4, "random") as w:
        written = 0
        while written < n_tokens:
            n = max(16, int(rng.exponential(1024)))
            w.write(rng.integers(2, vocab, n))
            written += n


def run(root: Path, name: str, preset: str, seq: int, steps: int, micro: int, compile_: bool, ac: bool) -> dict:
    from smollm3.train.config import load_train_config
    from smollm3.train.trainer import train

    out = root / name
    cfg = {"out_dir": str(out), "model": {"preset": preset, "overrides": {"max_position_embeddings": seq}},
           "data": {"kind": "pretrain", "tokenizer": str(root / "tok"), "seq_len": seq,
                    "stages": [{"start_tokens": 0, "weights": {str(root / "shards"): 1.0}}]},
           "train": {"steps": steps, "micro_batch": micro, "grad_accum": 1, "dtype": "bfloat16", "compile": compile_,
                     "activation_checkpointing": ac},
           "optim": {"lr": 2e-4, "warmup_steps": 2},
           "checkpoint": {"every": 0}, "log": {"every": 1, "tensorboard": False}}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    train(load_train_config(root / f"{name}.yaml"))
    wall = time.time() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = records[3:]
    row = {"name": name, "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in steady)),
           "mfu": round(statistics.median(r.get("mfu", 0.0) for r in steady), 4),
           "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "wall_s": round(wall, 1),
           "loss_first_last": [round(records[0]["loss"], 4), round(records[-1]["loss"], 4)]}
    print(f"{name:<28} {row['tokens_per_s']:>9,} tok/s  MFU {row['mfu']:6.1%}  peak {row['peak_mem_gib']:6.2f} GiB  "
          f"wall {wall:6.1f} s  loss {row['loss_first_last']}", flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm3-3b")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--variants", default="eager-ac,compile-ac")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from smollm3 import preset

    vocab = preset(args.preset).vocab_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_assets(root, vocab, args.seq * args.micro_batch * (args.steps + 2))
        print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  preset {args.preset}  "
              f"seq {args.seq} x micro-batch {args.micro_batch}  {args.steps} steps", flush=True)
        for variant in args.variants.split(","):
            rows.append(run(root, variant, args.preset, args.seq, args.steps, args.micro_batch,
                            compile_="compile" in variant, ac=variant.endswith("-ac")))
    if args.out:
        Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(),
                                              "torch": torch.__version__, "preset": args.preset, "seq": args.seq,
                                              "micro_batch": args.micro_batch, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
