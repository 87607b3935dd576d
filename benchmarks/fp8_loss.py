"""FP8 against bf16 at equal data: the same run (model, seed, batches) trained once per `train.fp8` mode with the real
trainer, loss curves compared.

    python3 benchmarks/fp8_loss.py --shards DIR --tokenizer DIR --steps 1000 --out fp8_loss.json

Each mode trains `--preset` from the same initialisation on the same token shards (pretraining path: packed
documents, intra-document masking, AdamW, WSD), compiled, with weight-gradient fusion on. The summary gives each
mode's mean loss over the last tenth of the steps, its relative difference to bf16, tokens/s, and the curve every
`--every` steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml


def train_mode(root: Path, mode: str, args) -> dict:
    from smollm3.train.config import load_train_config
    from smollm3.train.trainer import train

    out = root / mode
    cfg = {"out_dir": str(out), "model": {"preset": args.preset, "overrides": {"max_position_embeddings": args.seq}},
           "data": {"kind": "pretrain", "tokenizer": args.tokenizer, "seq_len": args.seq,
                    "stages": [{"start_tokens": 0, "weights": {args.shards: 1.0}}]},
           "train": {"steps": args.steps, "micro_batch": args.micro_batch, "grad_accum": args.grad_accum,
                     "dtype": "bfloat16", "compile": True, "grad_accum_fusion": True,
                     "fp8": None if mode == "bf16" else mode},
           "optim": {"lr": args.lr, "warmup_steps": args.steps // 20, "schedule": "wsd", "decay_fraction": 0.2},
           "checkpoint": {"every": None}, "log": {"every": 1, "tensorboard": False}}
    (root / f"{mode}.yaml").write_text(yaml.safe_dump(cfg))
    torch._dynamo.reset()
    t0 = time.time()
    train(load_train_config(root / f"{mode}.yaml"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tail = records[-max(1, len(records) // 10):]
    row = {"mode": mode, "final_loss": round(statistics.fmean(r["loss"] for r in tail), 4),
           "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in records[len(records) // 10:])),
           "wall_s": round(time.time() - t0, 1),
           "curve": [[r["step"], round(r["loss"], 4)] for r in records if r["step"] % args.every == 0]}
    print(f"{mode:>10}: final loss {row['final_loss']}  {row['tokens_per_s']:,} tok/s  wall {row['wall_s']} s",
          flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True, help="token shards (smollm3 data prepare)")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--preset", default="smollm3-135m")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--modes", default="bf16,rowwise,tensorwise")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            rows.append(train_mode(Path(tmp), mode, args))
            if args.out:  # after every mode, so a run cut short keeps what finished
                base = next((r for r in rows if r["mode"] == "bf16"), None)
                for r in rows:
                    if base:
                        r["final_loss_rel_to_bf16"] = round(r["final_loss"] / base["final_loss"] - 1, 5)
                        r["speed_vs_bf16"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
                Path(args.out).write_text(json.dumps({
                    "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                    "args": vars(args), "rows": rows}, indent=2))
    for r in rows:
        print(r["mode"], {k: v for k, v in r.items() if k != "curve"})


if __name__ == "__main__":
    main()
