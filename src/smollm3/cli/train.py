"""`smollm3 train`: one training stage from a YAML config (docs/training.md)."""

from __future__ import annotations

import os
from pathlib import Path


def add(sub, name, help):
    p = sub.add_parser("train", help=help,
                       description="Run one training stage: pretraining, long context, mid-training, SFT, DPO/APO. "
                                   "Overrides take dotted keys, e.g. train.steps=100 optim.lr=3e-4. Under "
                                   "`torchrun --nproc_per_node N` the model is sharded with FSDP2. Checkpoints go "
                                   "to OUT_DIR/checkpoints/step_N (with an HF export in hf/), metrics to "
                                   "OUT_DIR/metrics.jsonl; rerunning resumes from the newest checkpoint "
                                   "(checkpoint.resume). See docs/training.md.")
    p.add_argument("config", help="YAML config (see docs/training.md and src/smollm3/recipes/)")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_run_train)


def _run_train(args):
    from smollm3.config import ConfigError
    from smollm3.train.config import dump_config, load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return
    for key, path in (("model.init_from", cfg.model.init_from), ("data.tokenizer", cfg.data.tokenizer),
                      ("train.ref_model", cfg.train.ref_model)):
        if path is not None and not Path(path).exists():
            raise ConfigError(f"{key}: {path} does not exist; point it at a model directory (an HF export such as "
                              "OUT/checkpoints/step_N/hf, or `smollm3 convert` output)" +
                              (" or a .gguf file" if key != "data.tokenizer" else ""))
    from smollm3.train.checkpointing import find_resume_point, list_checkpoints

    main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 talks
    out = Path(cfg.out_dir)
    resume = find_resume_point(out, cfg.checkpoint.resume)
    if resume is not None and main:
        print(f"resuming from {resume} (checkpoint.resume: {cfg.checkpoint.resume}); to start over, pass "
              "checkpoint.resume=never or a new out_dir", flush=True)
    from smollm3.train.trainer import train

    result = train(cfg)
    if main:
        print(_summary(Path(result.get("out_dir", out)), list_checkpoints))


def _summary(out: Path, list_checkpoints) -> str:
    """The run's end in one line: where the final model and the metrics are."""
    found = list_checkpoints(out)
    metrics = out / "metrics.jsonl"
    where = f"; metrics in {metrics}" if metrics.exists() else ""
    if not found:
        return f"done: no checkpoint written (checkpoint.every is 0){where}"
    step, last = found[-1]
    hf = last / "hf"
    if hf.exists():
        return f"done: step {step}; final model (HF) in {hf}{where}"
    return f"done: step {step}; checkpoint in {last} (no HF export: checkpoint.export_hf is false){where}"
