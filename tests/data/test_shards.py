"""Token shards: our writer round-trips, a shard in datatrove's documented layout reads, bad shards are refused."""

import struct

import numpy as np
import pytest

from smollm3.data.shards import ShardError, ShardWriter, find_shards, open_shard, token_size_for


def _docs(rng, n, high):
    return [rng.integers(0, high, size=rng.integers(0, 50)).tolist() for _ in range(n)]


@pytest.mark.parametrize("vocab", [49_152, 128_256])
def test_writer_round_trips_documents(tmp_path, vocab):
    rng = np.random.default_rng(0)
    docs = _docs(rng, 40, vocab)
    size = token_size_for(vocab)
    with ShardWriter(tmp_path / "a.ds", size, tokenizer_name="my/tok") as w:
        for d in docs:
            w.write(d)
    shard = open_shard(tmp_path / "a.ds")
    assert shard.token_size == size == (2 if vocab <= 65536 else 4)
    assert [d.tolist() for d in shard.documents()] == docs
    assert shard.tokenizer_name == "my/tok"
    assert (tmp_path / "a.ds.metadata").read_text().splitlines()[:2] == [f"my/tok|{size}", str(sum(map(len, docs)))]
    assert not list(tmp_path.glob("*.tmp"))


def test_token_size_boundary():
    assert token_size_for(65_536) == 2 and token_size_for(65_537) == 4


def test_loss_file_round_trips(tmp_path):
    with ShardWriter(tmp_path / "b.ds", 2, with_loss=True) as w:
        w.write([5, 6, 7], loss_mask=[0, 1, 1])
        w.write([8], loss_mask=[1])
    shard = open_shard(tmp_path / "b.ds")
    assert shard.loss.tolist() == [0, 1, 1, 1]
    with pytest.raises(ShardError, match="loss mask"), ShardWriter(tmp_path / "c.ds", 2, with_loss=True) as w:
        w.write([1, 2])
    assert not (tmp_path / "c.ds").exists() and not list(tmp_path.glob("c.*"))  # aborted: nothing left behind


def test_writer_refuses_ids_that_do_not_fit(tmp_path):
    with pytest.raises(ShardError, match="does not fit"), ShardWriter(tmp_path / "d.ds", 2) as w:
        w.write([70_000])


def write_datatrove_shard(path, docs, token_size, metadata: str | None):
    """Exactly what datatrove's TokenizedFile writes: struct-packed little-endian ids (H or I), the uint64 document
    ends, and the metadata text."""
    fmt = "I" if token_size == 4 else "H"
    flat = [t for d in docs for t in d]
    path.write_bytes(struct.pack(f"<{len(flat)}{fmt}", *flat))
    ends = np.cumsum([len(d) for d in docs]).tolist()
    (path.parent / (path.name + ".index")).write_bytes(struct.pack(f"<{len(ends)}Q", *ends))
    if metadata is not None:
        (path.parent / (path.name + ".metadata")).write_text(metadata)


@pytest.mark.parametrize("token_size,metadata", [
    (2, "meta-llama/Llama-3.2-1B|2\n{n}\n1.2 kT"),  # current datatrove
    (4, "meta-llama/Llama-3.2-1B|4\n{n}\n1.2 kT"),
    (2, "gpt2\n{n}\n1.2 kT"),  # older datatrove: no token size, uint16
    (4, None),  # no metadata: the size is inferred from the index
])
def test_datatrove_layout_reads(tmp_path, token_size, metadata):
    rng = np.random.default_rng(1)
    docs = [d + [0] for d in _docs(rng, 25, 60_000 if token_size == 2 else 120_000)]  # + EOS, as datatrove writes
    path = tmp_path / "00000_shuffled.ds"
    n = sum(map(len, docs))
    write_datatrove_shard(path, docs, token_size, metadata.format(n=n) if metadata else None)
    shard = open_shard(path)
    assert shard.token_size == token_size and len(shard) == len(docs) and shard.n_tokens == n
    assert [d.tolist() for d in shard.documents()] == docs
    assert find_shards(tmp_path) == [path]


def test_shard_whose_index_disagrees_with_its_data_is_refused(tmp_path):
    docs = [[1, 2, 3], [4, 5]]
    path = tmp_path / "x.ds"
    write_datatrove_shard(path, docs, 2, "tok|2\n5")
    path.write_bytes(path.read_bytes()[:-4])  # lose the last two tokens
    with pytest.raises(ShardError, match=r"index disagrees with data.*end at token 5 but the data file holds 3 tokens"):
        open_shard(path)


def test_other_corruptions_are_refused_with_their_reason(tmp_path):
    path = tmp_path / "y.ds"
    write_datatrove_shard(path, [[1, 2, 3], [4, 5]], 2, "tok|2\n5")
    idx = path.parent / "y.ds.index"
    idx.write_bytes(struct.pack("<3Q", 3, 2, 5))
    with pytest.raises(ShardError, match="must not decrease"):
        open_shard(path)
    idx.write_bytes(struct.pack("<2Q", 3, 5) + b"\x00")
    with pytest.raises(ShardError, match="whole number of uint64"):
        open_shard(path)
    idx.write_bytes(struct.pack("<2Q", 3, 5))
    (path.parent / "y.ds.metadata").write_text("tok|2\n7")
    with pytest.raises(ShardError, match="metadata says 7 tokens"):
        open_shard(path)
    (path.parent / "y.ds.metadata").write_text("tok|4\n5")
    with pytest.raises(ShardError, match="whole number of 4-byte"):
        open_shard(path)
    (path.parent / "y.ds.metadata").unlink()
    path.write_bytes(path.read_bytes() + b"\x00")  # 11 bytes: no token size explains an index ending at 5
    with pytest.raises(ShardError, match="index disagrees with data"):
        open_shard(path)
    idx.unlink()
    with pytest.raises(ShardError, match="no y.ds.index"):
        open_shard(path)
    with pytest.raises(ShardError, match="no .ds shards"):
        find_shards(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)


@pytest.mark.parametrize("token_size", [2, 4])
def test_our_shards_are_byte_identical_to_datatrove_layout(tmp_path, token_size):
    """What we write is what datatrove writes for the same documents, so nanotron reads our shards."""
    rng = np.random.default_rng(2)
    docs = _docs(rng, 30, 60_000)
    with ShardWriter(tmp_path / "ours.ds", token_size, tokenizer_name="tok") as w:
        for d in docs:
            w.write(d)
    write_datatrove_shard(tmp_path / "theirs.ds", docs, token_size, None)
    for suffix in (".ds", ".ds.index"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"theirs{suffix}").read_bytes()
    head = (tmp_path / "ours.ds.metadata").read_text().splitlines()
    assert head[0] == f"tok|{token_size}" and int(head[1]) == sum(map(len, docs))
