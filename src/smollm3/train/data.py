"""The trainer's view of data: per step, this rank's `grad_accum` micro-batches of the global batch.

Every rank walks the same global stream and keeps its own slice, so the global batch (and a resumed run) does not
depend on the number of processes: 2 processes with micro_batch 1 see exactly what 1 process with 2 sees.
"""

from __future__ import annotations

from datetime import date as Date

from smollm3.config import ConfigError
from smollm3.data.mixture import MixtureLoader
from smollm3.data.preference import PreferenceLoader
from smollm3.data.sft import SFTLoader


class StepData:
    """`pad_id`: the id that fills the end of a row (SFT's collation; None where rows are never padded), so the
    trainer can leave padding out of the FLOPs it counts."""

    def __init__(self, loader, grad_accum: int, pad_id: int | None = None):
        self.loader, self.grad_accum, self.pad_id = loader, grad_accum, pad_id

    def next_step(self) -> list[dict]:
        return [next(self.loader) for _ in range(self.grad_accum)]

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict):
        self.loader.load_state_dict(state)


def build_data(cfg, tokenizer, dist) -> StepData:
    d, t = cfg.data, cfg.train
    if d.kind == "pretrain":
        if not d.stages:
            raise ConfigError("data.stages is empty: give at least one stage, "
                              "[{start_tokens: 0, weights: {path/to/shards: 1.0}}]")
        loader = MixtureLoader(d.stages, d.seq_len, t.micro_batch, seed=d.seed, rank=dist.rank,
                               world_size=dist.world)
        return StepData(loader, t.grad_accum)
    if d.kind in ("sft", "preference"):
        if not d.paths:
            raise ConfigError(f"data.paths is empty: give the JSONL files of the {d.kind} data")
        date = Date.fromisoformat(d.date) if d.date else None  # None: today, kept by a resume
        if d.kind == "sft":
            loader = SFTLoader(d.paths, tokenizer, d.seq_len, t.micro_batch, template=d.template, seed=d.seed,
                               rank=dist.rank, world_size=dist.world, date=date)
            return StepData(loader, t.grad_accum, pad_id=loader.pad_id)
        loader = PreferenceLoader(d.paths, tokenizer, t.micro_batch, max_length=d.seq_len,
                                  max_prompt_length=d.max_prompt_length, template=d.template, seed=d.seed,
                                  rank=dist.rank, world_size=dist.world, date=date)
        return StepData(loader, t.grad_accum)  # padding-free rows (data/preference.py): nothing to leave out
    raise ConfigError(f"data.kind {d.kind!r} is unknown; choose pretrain, sft or preference")
