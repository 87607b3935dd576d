"""Trainer checkpoints: resumable state, written atomically, the last N kept.

    out_dir/checkpoints/step_00000100/
        state/            model + optimiser, torch.distributed.checkpoint (resharded on load: any world size)
        data_state.pt     the data stream's position (global: the same on every rank)
        rng_rank{r}.pt    each rank's RNG states
        config.yaml       the resolved training config
        hf/               an HF directory of the weights (loads in transformers and in smollm3)
        MANIFEST.json     size and SHA-256 of every file above
        COMPLETE          written last; a directory without it is ignored and removed

All ranks write into a temporary sibling; rank 0 renames it into place only after everyone has finished. Resume
checks the manifest first (a flipped bit changes the loss curve silently otherwise) and falls back to the newest
checkpoint that passes, saying which ones it skipped and why. A write that fails for lack of space says so.

A run holds an exclusive lock on out_dir/.lock for its whole life (flock: the kernel drops it when the process dies,
so a SIGKILL leaves nothing stale); a second run on the same out_dir is refused at once, naming the holder's pid.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import socket
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from smollm3.checkpoint import CheckpointError, save_state_dict
from smollm3.config import ConfigError
from smollm3.train.config import dump_config

_STEP_DIR = re.compile(r"^step_(\d+)$")
MANIFEST = "MANIFEST.json"
LOCK = ".lock"
LOW_SPACE = 64 * 2**20  # free bytes below which a failed write is reported as a full disk
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


def find_resume_point(out: Path, resume: str, say=print) -> Path | None:
    """The checkpoint to resume from: `resume` auto (the newest one whose files match its manifest; each damaged one
    skipped is reported through `say`), never, or a directory (which must pass the same check)."""
    if resume == "never":
        return None
    if resume == "auto":
        found = list_checkpoints(out)
        skipped = []
        for _, path in reversed(found):
            why = verify_checkpoint(path)
            if why is None:
                return path
            skipped.append(f"{path.name} ({why})")
            say(f"skipping damaged checkpoint {path}: {why}")
        if skipped:
            raise CheckpointError(f"no valid checkpoint to resume from in {Path(out) / 'checkpoints'}: "
                                  f"{'; '.join(skipped)}. Set checkpoint.resume=never to start over (the damaged "
                                  "ones are then deleted as new ones are kept)")
        return None
    path = Path(resume)
    if not (path / "COMPLETE").exists():
        raise FileNotFoundError(f"checkpoint.resume {resume}: not a complete checkpoint directory (no COMPLETE marker)")
    why = verify_checkpoint(path)
    if why is not None:
        raise CheckpointError(f"checkpoint.resume {resume}: damaged ({why}); pick another checkpoint or use auto")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name not in (MANIFEST,
                                                                                                       "COMPLETE"))


def write_manifest(root: Path, step: int):
    """Size and SHA-256 of every file under `root`. Threads: hashlib releases the GIL on large buffers, so a
    3B checkpoint's ~36 GB hashes at several GB/s instead of one core's ~1.5."""
    names = _files(root)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(lambda n: _sha256(root / n), names))
    files = {n: {"bytes": (root / n).stat().st_size, "sha256": d} for n, d in zip(names, digests)}
    (root / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))


def verify_checkpoint(path: Path, under: str | None = None) -> str | None:
    """None when every file the manifest lists is there with its size and SHA-256, else what is wrong, naming the
    file. `under` (e.g. "hf"): only the files in that subdirectory, for a reader of the HF export alone."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        expected = {n: (int(f["bytes"]), str(f["sha256"])) for n, f in files.items()}
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (ValueError, KeyError, TypeError, AttributeError):  # not JSON, or not the manifest's shape
        return f"{MANIFEST} is not a valid manifest"
    for name in ("data_state.pt", "state/.metadata"):  # the trainer state itself: a manifest without it is not ours
        if name not in expected:
            return f"{MANIFEST} lists no {name}"
    present = set(_files(path))
    if under is not None:
        prefix = under.rstrip("/") + "/"
        expected = {n: v for n, v in expected.items() if n.startswith(prefix)}
        present = {n for n in present if n.startswith(prefix)}
        if not expected:
            return f"{MANIFEST} lists nothing under {prefix}"
    for name, (size, _) in expected.items():
        f = path / name
        if name not in present:
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, the manifest says {size}"
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        actual = dict(zip(expected, pool.map(lambda n: _sha256(path / n), expected)))
    bad = [n for n, (_, digest) in expected.items() if actual[n] != digest]
    if bad:
        return f"{bad[0]} does not match its checksum (changed on disk)"
    extra = sorted(present - set(expected))
    if extra:
        return f"{extra[0]} is not in the manifest"
    return None


def lock_out_dir(out: Path) -> int:
    """Take out_dir's exclusive lock (an fd to keep open while the run lives) or refuse, naming the holder."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"out_dir {out}: cannot create {out / LOCK} ({e.strerror}); choose a writable out_dir") \
            from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(f"{out} is in use by another training run ({holder}); wait for it to finish or stop it, "
                          "or set out_dir to another directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def unlock_out_dir(fd: int | None):
    if fd is not None:
        os.close(fd)  # closing the last descriptor releases the flock


def save_checkpoint(out: Path, step: int, model, optimizer, data, dist, cfg, tokenizer):
    final = checkpoint_dir(out, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    try:
        _write(tmp, step, model, optimizer, data, dist, cfg, tokenizer)
    except (OSError, RuntimeError, CheckpointException) as e:
        if not _out_of_space(e, tmp):
            raise
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # give back what the partial write took
        found = list_checkpoints(out)
        before = f"the newest complete checkpoint, {found[-1][1]}, is intact" if found else "no checkpoint was kept"
        raise CheckpointError(f"checkpoint step {step}: no space left on device writing {tmp} "
                              f"({shutil.disk_usage(tmp.parent).free / 2**20:.0f} MiB free there); {before}. Free "
                              "space (or lower checkpoint.keep), then run again to resume") from None
    dist.barrier()
    if dist.is_main:
        (tmp / "COMPLETE").write_text(f"{step}\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in list_checkpoints(out)[: -cfg.checkpoint.keep]:
            if old != final:  # a damaged checkpoint of a later step (skipped on resume) must not outrank this one
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def _write(tmp: Path, step: int, model, optimizer, data, dist, cfg, tokenizer):
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
        write_manifest(tmp, step)


def _out_of_space(e: BaseException, where: Path) -> bool:
    """ENOSPC anywhere in the exception's chain (DCP wraps each rank's error), or a failure on a filesystem with
    (almost) no space left: torch.save's zip writer reports a full disk as "unexpected pos N vs M", with no errno."""
    seen, todo = set(), [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(x, CheckpointException):
            todo.extend(f[0] if isinstance(f, tuple) else f for f in x.failures.values())
        todo.extend((x.__cause__, x.__context__))
    try:
        return shutil.disk_usage(where if where.exists() else where.parent).free < LOW_SPACE
    except OSError:
        return False


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
