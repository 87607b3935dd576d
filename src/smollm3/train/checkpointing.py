"""Trainer checkpoints: resumable state, written atomically, the last N kept.

    out_dir/checkpoints/step_00000100/
        state/            model + optimiser, torch.distributed.checkpoint (resharded on load: any world size)
        data_state.pt     the data stream's position (global: the same on every rank)
        rng_rank{r}.pt    each rank's RNG states
        config.yaml       the resolved training config
        hf/               an HF directory of the weights (loads in transformers and in smollm3)
        COMPLETE          written last; a directory without it is ignored and removed

All ranks write into a temporary sibling; rank 0 renames it into place only after everyone has finished.
"""

from __future__ import annotations

import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from smollm3.checkpoint import save_state_dict

_STEP_DIR = re.compile(r"^step_(\d+)$")
# a single-process run is a supported use of torch.distributed.checkpoint, not a mistake worth a warning
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def checkpoint_dir(out: Path, step: int) -> Path:
    return Path(out) / "checkpoints" / f"step_{step:08d}"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    root = Path(out) / "checkpoints"
    if not root.exists():
        return []
    found = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and (d / "COMPLETE").exists():
            found.append((int(m.group(1)), d))
    return sorted(found)


def find_resume_point(out: Path, resume: str) -> Path | None:
    if resume == "never":
        return None
    if resume == "auto":
        found = list_checkpoints(out)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / "COMPLETE").exists():
        raise FileNotFoundError(f"checkpoint.resume {resume}: not a complete checkpoint directory (no COMPLETE marker)")
    return path


def save_checkpoint(out: Path, step: int, model, optimizer, data, dist, cfg, tokenizer):
    from smollm3.train.config import dump_config

    final = checkpoint_dir(out, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / "state"))
    torch.save(_rng_state(), tmp / f"rng_rank{dist.rank}.pt")
    full = None
    if cfg.checkpoint.export_hf:  # a collective: every rank takes part, rank 0 receives the whole state
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.is_main:
        torch.save(data.state_dict(), tmp / "data_state.pt")
        (tmp / "config.yaml").write_text(dump_config(cfg))
        if full is not None:
            # stored in the training precision: bf16 under mixed precision (as SmolLM3 ships), fp32 when training in
            # fp32, so a stage that starts from this export (the recipe's stage transitions) loses nothing
            export = torch.float32 if cfg.train.dtype == "float32" else torch.bfloat16
            save_state_dict(full, model.config, tmp / "hf", tokenizer=tokenizer, dtype=export)
    dist.barrier()
    if dist.is_main:
        (tmp / "COMPLETE").write_text(f"{step}\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in list_checkpoints(out)[: -cfg.checkpoint.keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_checkpoint(path: Path, model, optimizer, data, dist) -> int:
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path / "state"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    data.load_state_dict(torch.load(path / "data_state.pt", weights_only=False))
    rng = path / f"rng_rank{dist.rank}.pt"
    if rng.exists():  # a different world size than the one that saved: ranks beyond it keep fresh RNG
        _set_rng_state(torch.load(rng, weights_only=False))
    return int((path / "COMPLETE").read_text())


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
