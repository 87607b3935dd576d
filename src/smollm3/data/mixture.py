"""Pretraining batches from a weighted mixture of shard folders, with weights that switch at token counts.

Each shard folder is one source: its shards, concatenated, form one token stream, cut into windows of
`seq_len + 1` tokens (inputs plus the target of the last one). Documents run across window borders (the recipe packs this way: nanotron reads fixed
windows of datatrove shards); inside a window, `position_ids` restart at 0 where a document starts, which is
what the model's intra-document masking keys on.

Which source each sequence comes from is decided the way Megatron/nanotron blend datasets: the next sequence
goes to the source furthest behind its target share (weight x sequences so far in this stage), so realised
shares track the weights to within one sequence. Within a source, windows are visited in a seeded pseudo-random
order (a keyed Feistel permutation: no per-window table in memory, whatever the corpus size), a fresh order
each time the source is exhausted.

The loader's whole position is a handful of integers: `state_dict()` / `load_state_dict()` resume the exact
stream. All ranks compute the same global stream; rank r takes its slice of every global batch.

Labels are already shifted, the project's convention (train/losses.py): labels[t] is the target of the logits at
t, i.e. the window's token t + 1. It is -100 at each document's last token (under document masking the next
document's first token cannot be predicted from it) and where a shard's .ds.loss file marks the target as
no-loss.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from smollm3.data.packing import IGNORE_INDEX
from smollm3.data.shards import ShardError, find_shards, open_shard

_M64 = (1 << 64) - 1


@dataclass
class Stage:
    """From `start_tokens` (tokens consumed by the whole run, all ranks) on, sample sources by `weights`
    (relative; they need not sum to 1)."""
    name: str
    start_tokens: int
    weights: dict[str, float] = field(default_factory=dict)


def stages_from_config(stages: list[dict]) -> list[Stage]:
    """`[{name, start_tokens, weights: {folder: weight}}, ...]` (as in a recipe YAML) -> checked Stages."""
    if not stages:
        raise ValueError("data stages: give at least one stage with weights over shard folders")
    out = []
    for i, s in enumerate(stages):
        if not isinstance(s, dict) or "weights" not in s:
            raise ValueError(f"data stage {i}: needs `weights: {{folder: weight, ...}}`")
        unknown = set(s) - {"name", "start_tokens", "weights"}
        if unknown:
            raise ValueError(f"data stage {i}: unknown key(s) {', '.join(sorted(unknown))}; "
                             "allowed: name, start_tokens, weights")
        out.append(Stage(str(s.get("name", f"stage{i}")), int(s.get("start_tokens", 0)),
                         {str(k): float(v) for k, v in s["weights"].items()}))
    _check_stages(out)
    return out


def _check_stages(stages: list[Stage]) -> None:
    if stages[0].start_tokens != 0:
        raise ValueError(f"data stage {stages[0].name!r}: the first stage must start at 0 tokens")
    for a, b in itertools.pairwise(stages):
        if b.start_tokens <= a.start_tokens:
            raise ValueError(f"data stage {b.name!r}: start_tokens {b.start_tokens} must exceed the previous "
                             f"stage's {a.start_tokens}")
    for s in stages:
        if any(w < 0 for w in s.weights.values()) or sum(s.weights.values()) <= 0:
            raise ValueError(f"data stage {s.name!r}: weights must be >= 0 with a positive sum, got {s.weights}")


class TokenSource:
    """One shard folder as one token stream, read in windows of `seq_len + 1` tokens (inputs and, shifted by
    one, their targets), back to back as datatrove's DatatroveFolderDataset reads them."""

    def __init__(self, folder: str | os.PathLike, seq_len: int):
        self.name = str(folder)
        self.shards = [open_shard(p) for p in find_shards(folder)]
        sizes = {s.token_size for s in self.shards}
        if len(sizes) > 1:
            raise ShardError(f"{folder}: shards mix 2- and 4-byte token ids; prepare them with one tokenizer")
        self.starts = np.cumsum([0] + [s.n_tokens for s in self.shards])
        self.n_tokens = int(self.starts[-1])
        self.seq_len = seq_len
        self.n_windows = self.n_tokens // (seq_len + 1)
        if self.n_windows == 0:
            raise ShardError(f"{folder}: {self.n_tokens} tokens is less than one sequence of {seq_len} + 1")

    def window(self, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, position_ids, labels) of window `w`, int64 arrays of seq_len."""
        span = self.seq_len + 1
        start, stop = w * span, (w + 1) * span
        ids, loss, doc_starts = [], [], [0]
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            shard, base = self.shards[k], int(self.starts[k])
            a, b = pos - base, min(stop, int(self.starts[k + 1])) - base
            ids.append(np.asarray(shard.tokens[a:b], dtype=np.int64))
            loss.append(np.ones(b - a, dtype=bool) if shard.loss is None else np.asarray(shard.loss[a:b], dtype=bool))
            # a document ending in (a, b] makes the next token a document start (the shard's own end included:
            # the next shard starts a document)
            lo, hi = np.searchsorted(shard.ends, a + 1, side="left"), np.searchsorted(shard.ends, b, side="right")
            doc_starts.extend((np.asarray(shard.ends[lo:hi], dtype=np.int64) + base - start).tolist())
            pos = base + b
            k += 1
        tokens, trainable = np.concatenate(ids), np.concatenate(loss)
        starts = np.unique(np.asarray(doc_starts, dtype=np.int64))
        starts = starts[starts <= self.seq_len]  # a start just past the window matters to no label
        seg = np.searchsorted(starts, np.arange(self.seq_len), side="right") - 1
        position_ids = np.arange(self.seq_len) - starts[seg]
        labels = np.where(trainable[1:], tokens[1:], IGNORE_INDEX)
        labels[starts[starts > 0] - 1] = IGNORE_INDEX  # a document's last token does not predict the next one's first
        return tokens[:-1], position_ids, labels


def _mix(x: int) -> int:
    """splitmix64 finaliser: a good 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def permute(i: int, n: int, key: int) -> int:
    """Position `i` of a pseudo-random permutation of range(n) chosen by `key`: a 4-round Feistel network on
    the smallest even number of bits covering n, walked until it lands inside [0, n). O(1) memory."""
    if n <= 1:
        return 0
    bits = max(2, (n - 1).bit_length())
    bits += bits & 1
    half, mask = bits // 2, (1 << (bits // 2)) - 1
    x = i
    while True:
        left, right = x >> half, x & mask
        for rnd in range(4):
            left, right = right, left ^ (_mix(right ^ _mix(key + rnd)) & mask)
        x = (left << half) | right
        if x < n:
            return x


class MixtureLoader:
    """Infinite iterator of packed pretraining batches: dicts of int64 tensors `input_ids`, `position_ids`,
    `labels` [batch_size, seq_len] and `source` [batch_size] (index into `self.sources`)."""

    def __init__(self, stages: list[Stage] | list[dict], seq_len: int, batch_size: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.stages = stages_from_config(stages) if stages and isinstance(stages[0], dict) else list(stages)
        _check_stages(self.stages)
        if seq_len < 2 or batch_size < 1:
            raise ValueError(f"seq_len must be >= 2 and batch_size >= 1 (got {seq_len}, {batch_size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        names = list(dict.fromkeys(n for s in self.stages for n in s.weights))
        self.sources = [TokenSource(n, seq_len) for n in names]
        self._weights = np.array([[s.weights.get(n, 0.0) for n in names] for s in self.stages], dtype=np.float64)
        self._weights /= self._weights.sum(axis=1, keepdims=True)
        self.seq_index = 0  # sequences produced so far by all ranks together
        self.stage_index = 0
        self.stage_counts = np.zeros(len(names), dtype=np.int64)  # sequences per source in the current stage
        self.consumed = np.zeros(len(names), dtype=np.int64)  # windows taken from each source, all stages

    @property
    def tokens_seen(self) -> int:
        return self.seq_index * self.seq_len

    def stage_at(self, tokens: int) -> int:
        return max(i for i, s in enumerate(self.stages) if s.start_tokens <= tokens)

    def _next_choice(self) -> tuple[int, int]:
        """(source, window) of the next sequence in the global stream; advances the state."""
        stage = self.stage_at(self.tokens_seen)
        if stage != self.stage_index:
            self.stage_index, self.stage_counts[:] = stage, 0
        w = self._weights[stage]
        deficit = w * (self.stage_counts.sum() + 1) - self.stage_counts
        deficit[w == 0] = -np.inf
        src = int(np.argmax(deficit))
        n = self.sources[src].n_windows
        epoch, i = divmod(int(self.consumed[src]), n)
        window = permute(i, n, _mix(self.seed * 1_000_003 + src * 7_919 + epoch))
        self.stage_counts[src] += 1
        self.consumed[src] += 1
        self.seq_index += 1
        return src, window

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        B, T = self.batch_size, self.seq_len
        ids = np.empty((B, T), np.int64)
        pos = np.empty((B, T), np.int64)
        labels = np.empty((B, T), np.int64)
        sources = np.empty(B, np.int64)
        mine = range(self.rank * B, (self.rank + 1) * B)
        for j in range(B * self.world_size):
            src, window = self._next_choice()
            if j in mine:
                r = j - self.rank * B
                ids[r], pos[r], labels[r] = self.sources[src].window(window)
                sources[r] = src
        return {"input_ids": torch.from_numpy(ids), "position_ids": torch.from_numpy(pos),
                "labels": torch.from_numpy(labels), "source": torch.from_numpy(sources)}

    # ---- resuming

    def state_dict(self) -> dict:
        return {"seq_index": self.seq_index, "stage_index": self.stage_index,
                "stage_counts": self.stage_counts.tolist(), "consumed": self.consumed.tolist(),
                "seed": self.seed, "seq_len": self.seq_len,
                "sources": [[s.name, s.n_tokens] for s in self.sources]}

    def load_state_dict(self, state: dict) -> None:
        mine = [[s.name, s.n_tokens] for s in self.sources]
        theirs = [list(x) for x in state["sources"]]
        if theirs != mine or state["seq_len"] != self.seq_len or state["seed"] != self.seed:
            raise ValueError("data loader state does not match this mixture: it was saved for sources "
                             f"{theirs} (seq_len {state['seq_len']}, seed {state['seed']}), this loader reads "
                             f"{mine} (seq_len {self.seq_len}, seed {self.seed}); resuming would not replay the "
                             "same batches")
        self.seq_index, self.stage_index = int(state["seq_index"]), int(state["stage_index"])
        self.stage_counts = np.array(state["stage_counts"], dtype=np.int64)
        self.consumed = np.array(state["consumed"], dtype=np.int64)

