"""The pretraining mixture: realised proportions per stage, exact resume, windows with document boundaries."""

import numpy as np
import pytest
import torch

from smollm3.data.mixture import IGNORE_INDEX, MixtureLoader, TokenSource, permute, stages_from_config
from smollm3.data.shards import ShardWriter

SEQ = 16


def _make_source(folder, n_docs, seed, base, shards=2, with_loss=False):
    """Documents whose tokens encode (source base + document number) so every token's origin is known."""
    rng = np.random.default_rng(seed)
    docs = []
    per = -(-n_docs // shards)
    for s in range(shards):
        with ShardWriter(folder / f"{s:05d}.ds", 2, with_loss=with_loss) as w:
            for i in range(s * per, min(n_docs, (s + 1) * per)):
                doc = [base + i % 1000] * int(rng.integers(1, 40))
                docs.append(doc)
                w.write(doc, loss_mask=[j % 3 != 0 for j in range(len(doc))] if with_loss else None)
    return docs


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    out = {}
    for k, name in enumerate(("web", "code", "math")):
        (root / name).mkdir()
        out[name] = (root / name, _make_source(root / name, 400 + 300 * k, k, 10_000 * (k + 1)))
    return out


def _stages(sources, per_stage):
    w, c, m = (str(sources[n][0]) for n in ("web", "code", "math"))
    return [{"name": "stable", "start_tokens": 0, "weights": {w: 0.85, c: 0.12, m: 0.03}},
            {"name": "stable2", "start_tokens": per_stage * SEQ, "weights": {w: 0.75, c: 0.15, m: 0.10}},
            {"name": "decay", "start_tokens": 2 * per_stage * SEQ, "weights": {w: 0.63, c: 0.24, m: 0.13}}]


def test_realised_proportions_match_weights_per_stage(sources):
    per_stage = 10_000
    stages = _stages(sources, per_stage)
    loader = MixtureLoader(stages, SEQ, batch_size=100, seed=6)
    counts = np.zeros((3, 3))
    for _ in range(3 * per_stage // 100):
        stage = loader.stage_at(loader.tokens_seen)
        batch = next(loader)
        for s in batch["source"].tolist():
            counts[stage, s] += 1
    for stage, cfg in enumerate(stages):
        want = np.array(list(cfg["weights"].values()))
        got = counts[stage] / counts[stage].sum()
        assert counts[stage].sum() == per_stage
        assert np.abs(got - want / want.sum()).max() < 0.02, (stage, got)
    # every source's token ids really come from that source
    batch = next(loader)
    for row, src in zip(batch["input_ids"], batch["source"]):
        assert ((row // 10_000) == src + 1).all()


def test_restored_loader_continues_the_identical_stream(sources):
    stages = _stages(sources, 300)
    a = MixtureLoader(stages, SEQ, batch_size=7, seed=3)
    for _ in range(60):  # crosses into the second stage at 300 sequences
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(40)]  # crosses into the third
    b = MixtureLoader(stages, SEQ, batch_size=7, seed=3)
    b.load_state_dict(state)
    for want in expected:
        got = next(b)
        assert all(torch.equal(want[k], got[k]) for k in want)
    c = MixtureLoader(stages, SEQ, batch_size=7, seed=4)
    with pytest.raises(ValueError, match="does not match this mixture"):
        c.load_state_dict(state)
    assert not torch.equal(next(MixtureLoader(stages, SEQ, 7, seed=4))["input_ids"],
                           next(MixtureLoader(stages, SEQ, 7, seed=3))["input_ids"])


def test_ranks_split_the_global_batch(sources):
    stages = _stages(sources, 100)
    whole = MixtureLoader(stages, SEQ, batch_size=6, seed=1)
    parts = [MixtureLoader(stages, SEQ, batch_size=3, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(30):
        w = next(whole)
        p = [next(x) for x in parts]
        assert torch.equal(w["input_ids"], torch.cat([p[0]["input_ids"], p[1]["input_ids"]]))
        assert torch.equal(w["labels"], torch.cat([p[0]["labels"], p[1]["labels"]]))


def test_windows_carry_document_boundaries(sources):
    folder, docs = sources["code"]
    src = TokenSource(folder, SEQ)
    stream = np.concatenate([np.asarray(d) for d in docs])
    starts = set(np.cumsum([0] + [len(d) for d in docs]).tolist())
    assert src.n_windows == len(stream) // (SEQ + 1)
    for w in range(src.n_windows):  # every window, including those that span the two shards
        ids, pos, labels = src.window(w)
        lo = w * (SEQ + 1)
        assert ids.tolist() == stream[lo:lo + SEQ].tolist()
        for t in range(SEQ):
            doc_start = (lo + t) in starts
            assert (pos[t] == 0) == (t == 0 or doc_start)
            if t > 0 and not doc_start:
                assert pos[t] == pos[t - 1] + 1
            next_starts_doc = (lo + t + 1) in starts
            assert labels[t] == (IGNORE_INDEX if next_starts_doc else stream[lo + t + 1])


def test_loss_file_masks_targets(tmp_path):
    docs = _make_source(tmp_path, 30, 0, 500, shards=1, with_loss=True)
    stream = np.concatenate([np.asarray(d) for d in docs])
    flags = np.concatenate([[j % 3 != 0 for j in range(len(d))] for d in docs])
    ends = set(np.cumsum([len(d) for d in docs]).tolist())
    _, _, labels = TokenSource(tmp_path, SEQ).window(0)
    for t in range(SEQ):
        trained = flags[t + 1] and (t + 1) not in ends
        assert labels[t] == (stream[t + 1] if trained else IGNORE_INDEX)


def test_permutation_is_a_bijection():
    for n in (1, 2, 3, 17, 1000, 4097):
        for key in (0, 12345):
            assert sorted(permute(i, n, key) for i in range(n)) == list(range(n))
    assert [permute(i, 1000, 1) for i in range(10)] != [permute(i, 1000, 2) for i in range(10)]


def test_bad_stage_configs_are_refused(sources):
    w = str(sources["web"][0])
    with pytest.raises(ValueError, match="first stage must start at 0"):
        stages_from_config([{"start_tokens": 5, "weights": {w: 1}}])
    with pytest.raises(ValueError, match="must exceed"):
        stages_from_config([{"weights": {w: 1}}, {"start_tokens": 0, "weights": {w: 1}}])
    with pytest.raises(ValueError, match="positive sum"):
        stages_from_config([{"weights": {w: 0}}])
    with pytest.raises(ValueError, match="unknown key"):
        stages_from_config([{"weights": {w: 1}, "start": 0}])
    with pytest.raises(ValueError, match="no such shard folder"):
        MixtureLoader([{"weights": {"/nonexistent/shards": 1}}], SEQ, 1)
