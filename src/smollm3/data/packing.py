"""Best-fit-decreasing packing of whole sequences into fixed-capacity rows (TRL's `pack_dataset`, strategy
"bfd", formerly "ffd"; smollm3.md §4.3), and the collation of packed rows into batches.

Sequences are never split: each is first truncated to the capacity (as TRL does), then, longest first, placed
in the open bin with the least free space that still fits it, or in a new bin. A packed row keeps each
sequence's own positions (0, 1, ... restarting per sequence), which is how the model knows where one
conversation ends and the next begins.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass

import numpy as np
import torch

from smollm3.ops.cross_entropy import IGNORE_INDEX  # the data's labels follow the loss's convention


def bfd_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total length <= capacity, best fit decreasing.

    Free-space values are kept sorted (with the bins having each value), so finding the tightest bin is a
    binary search: O(n log n) overall. Ties go to the earlier sequence and the earliest-opened bin, so the
    result is a pure function of the lengths."""
    if capacity < 1:
        raise ValueError(f"packing capacity must be positive, got {capacity}")
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"{len(too_long)} sequence(s) are longer than the capacity {capacity} (first: #{too_long[0]}, "
                         f"{lengths[too_long[0]]} tokens); truncate them first")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    spaces: list[int] = []  # sorted distinct free-space values that some bin has
    by_space: dict[int, list[int]] = {}  # free space -> bins with it, in opening order
    for i in order:
        n = lengths[i]
        if n == 0:
            continue
        k = bisect_left(spaces, n)
        if k < len(spaces):
            space = spaces[k]
            b = by_space[space].pop(0)
            if not by_space[space]:
                del by_space[space]
                spaces.pop(k)
        else:
            b, space = len(bins), capacity
            bins.append([])
        bins[b].append(i)
        left = space - n
        if left > 0:
            if left not in by_space:
                by_space[left] = []
                insort(spaces, left)
            insort(by_space[left], b)
    return bins


def packing_efficiency(lengths: list[int], bins: list[list[int]], capacity: int) -> float:
    """Share of the packed rows' capacity filled with real tokens."""
    return sum(lengths[i] for b in bins for i in b) / (len(bins) * capacity) if bins else 0.0


@dataclass
class Packed:
    """One packed row: sequences back to back, positions restarting at 0 for each."""
    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


def pack_sequences(seqs: list[tuple[list[int], list[int]]], capacity: int) -> tuple[list[Packed], float]:
    """(input_ids, labels) pairs -> BFD-packed rows and the packing efficiency. Longer sequences are
    truncated to `capacity` first (keeping their start, as TRL does)."""
    seqs = [(ids[:capacity], labels[:capacity]) for ids, labels in seqs]
    lengths = [len(ids) for ids, _ in seqs]
    bins = bfd_bins(lengths, capacity)
    rows = []
    for b in bins:
        ids = np.concatenate([np.asarray(seqs[i][0], dtype=np.int64) for i in b])
        labels = np.concatenate([np.asarray(seqs[i][1], dtype=np.int64) for i in b])
        pos = np.concatenate([np.arange(lengths[i], dtype=np.int64) for i in b])
        rows.append(Packed(ids, labels, pos))
    return rows, packing_efficiency(lengths, bins, capacity)


def collate(rows: list[Packed], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Rows -> int64 tensors [B, length] (default: the longest row). Padding is one more "document" at the
    end of a row: pad ids, positions from 0, labels -100, so it neither attends to nor teaches anything."""
    length = length or max(len(r) for r in rows)
    B = len(rows)
    ids = np.full((B, length), pad_id, dtype=np.int64)
    labels = np.full((B, length), IGNORE_INDEX, dtype=np.int64)
    pos = np.zeros((B, length), dtype=np.int64)
    for i, r in enumerate(rows):
        n = len(r)
        if n > length:
            raise ValueError(f"row {i} has {n} tokens, more than the batch length {length}")
        ids[i, :n], labels[i, :n], pos[i, :n] = r.input_ids, r.labels, r.position_ids
        pos[i, n:] = np.arange(length - n)
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(pos)}
