"""Best-fit-decreasing packing: nothing split, nothing over capacity, the tightest bin chosen, efficiency reported."""

import random

import numpy as np
import pytest

from smollm3.data.packing import IGNORE_INDEX, bfd_bins, collate, pack_sequences, packing_efficiency


def _naive_bfd(lengths, capacity):
    """The textbook algorithm, O(n^2): longest first, into the fullest bin that still fits it."""
    bins, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        fits = [b for b in range(len(bins)) if free[b] >= n]
        if fits:
            b = min(fits, key=lambda b: (free[b], b))
            bins[b].append(i)
            free[b] -= n
        else:
            bins.append([i])
            free.append(capacity - n)
    return bins


@pytest.mark.parametrize("seed", range(5))
def test_bfd_matches_the_textbook_algorithm_and_never_overflows(seed):
    rng = random.Random(seed)
    capacity = rng.choice([64, 512, 4096])
    lengths = [rng.randint(1, capacity) if rng.random() < 0.2 else rng.randint(1, capacity // 4) for _ in range(400)]
    bins = bfd_bins(lengths, capacity)
    assert bins == _naive_bfd(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # each sequence exactly once, whole
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    eff = packing_efficiency(lengths, bins, capacity)
    assert eff == sum(lengths) / (len(bins) * capacity)
    assert eff > 0.9  # many small items: BFD fills bins almost completely
    # no two bins could be merged: otherwise best-fit would have used the first for the second's items
    loads = sorted(sum(lengths[i] for i in b) for b in bins)
    assert len(loads) < 2 or loads[0] + loads[1] > capacity


def test_pack_sequences_keeps_sequences_whole_with_their_positions():
    rng = random.Random(0)
    seqs = []
    for k in range(50):
        n = rng.randint(1, 120)
        ids = [k * 1000 + j for j in range(n)]
        seqs.append((ids, [IGNORE_INDEX if j % 2 else t for j, t in enumerate(ids)]))
    rows, eff = pack_sequences(seqs, 128)
    seen = []
    for row in rows:
        assert len(row) <= 128
        starts = np.flatnonzero(row.position_ids == 0)
        for a, b in zip(starts, list(starts[1:]) + [len(row)]):
            k = int(row.input_ids[a]) // 1000
            assert row.input_ids[a:b].tolist() == seqs[k][0] and row.labels[a:b].tolist() == seqs[k][1]
            assert row.position_ids[a:b].tolist() == list(range(b - a))
            seen.append(k)
    assert sorted(seen) == list(range(50))
    assert 0 < eff <= 1


def test_overlong_sequences_are_truncated_not_split():
    rows, _ = pack_sequences([(list(range(300)), list(range(300))), ([7] * 10, [7] * 10)], 100)
    assert sorted(len(r) for r in rows) == [10, 100]
    assert rows[0].input_ids.tolist() == list(range(100))  # the start is kept, the rest dropped
    with pytest.raises(ValueError, match="longer than the capacity"):
        bfd_bins([5, 101], 100)


def test_collate_pads_as_an_inert_document():
    rows, _ = pack_sequences([([1, 2, 3], [2, 3, IGNORE_INDEX]), ([4, 5], [5, IGNORE_INDEX])], 3)
    batch = collate(rows, pad_id=0, length=5)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0, 0], [4, 5, 0, 0, 0]]
    assert batch["labels"].tolist() == [[2, 3, -100, -100, -100], [5, -100, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
