"""`data prepare`: documents in, datatrove shards out that decode back to the documents; parallel, resumable,
deterministic; bad input named by file and line."""

import gzip
import json
from pathlib import Path

import pytest

from smollm3.cli import main
from smollm3.data.prepare import PrepareError, prepare
from smollm3.data.shards import find_shards, open_shard
from smollm3.tokenizer import load_tokenizer

WORDS = ["alpha", "beta", "gamma", "delta", "Zürich", "東京", "naïve", "42", "x = y + 1", "\n"]


def _documents(n, seed):
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(n)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare_in")
    a, b = _documents(300, 0), _documents(40, 1)
    with open(root / "a.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(a):
            f.write(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n")
            if i % 50 == 0:
                f.write("\n")  # blank lines are skipped
    with gzip.open(root / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        for t in b:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    (root / "txt").mkdir()
    (root / "txt" / "c.txt").write_text("A whole text file\n\nis one document.\n", encoding="utf-8")
    (root / "txt" / "d.txt").write_text("Another one.", encoding="utf-8")
    return root, a + b + ["A whole text file\n\nis one document.\n", "Another one."]


def _read_back(out):
    docs = []
    for path in find_shards(out):
        docs += [d.tolist() for d in open_shard(path).documents()]
    return docs


def test_shards_read_back_to_the_documents(inputs, trained_tokenizer_dir, tmp_path):
    root, texts = inputs
    tok = load_tokenizer(trained_tokenizer_dir)
    out = tmp_path / "shards"
    summary = prepare([root / "a.jsonl", root / "b.jsonl.gz", root / "txt"], trained_tokenizer_dir, out,
                      workers=1, chunk_mb=0.004, progress=False)  # ~4 KB per shard: several JSONL chunks
    docs = _read_back(out)
    assert summary["documents"] == len(texts) == len(docs)
    assert all(d[-1] == tok.eos_token_id for d in docs)
    assert [tok.decode(d[:-1]) for d in docs] == texts
    assert summary["shards"] > 3 and len(find_shards(out)) == summary["shards"]
    assert open_shard(find_shards(out)[0]).token_size == 2  # a 768-id vocabulary fits uint16


def test_parallel_and_resumed_runs_write_identical_shards(inputs, trained_tokenizer_dir, tmp_path):
    root, _ = inputs
    args = ([root / "a.jsonl", root / "b.jsonl.gz"], trained_tokenizer_dir)
    one, two = tmp_path / "one", tmp_path / "two"
    prepare(*args, one, workers=1, chunk_mb=0.004, progress=False)
    prepare(*args, two, workers=2, chunk_mb=0.004, progress=False)
    files = sorted(p.name for p in one.iterdir() if p.suffix != ".json")
    assert files == sorted(p.name for p in two.iterdir() if p.suffix != ".json")
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    # an interrupted run: one shard never got its metadata; the rerun redoes exactly that one
    victim = find_shards(two)[2]
    victim.with_name(victim.name + ".metadata").unlink()
    victim.unlink()
    kept = {p: p.stat().st_mtime_ns for p in find_shards(two)}
    summary = prepare(*args, two, workers=2, chunk_mb=0.004, progress=False)
    assert summary["skipped_shards"] == summary["shards"] - 1
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    with pytest.raises(PrepareError, match="other inputs"):
        prepare([root / "a.jsonl"], trained_tokenizer_dir, two, progress=False)


def test_malformed_jsonl_line_names_file_and_line(trained_tokenizer_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": f"document number {i} " * 5}) for i in range(200)]
    lines[150] = '{"text": "unterminated'
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(PrepareError, match=rf"{bad}:151: not valid JSON"):
        prepare([bad], trained_tokenizer_dir, tmp_path / "o1", workers=1, chunk_mb=0.002, progress=False)
    rc = main(["data", "prepare", "--input", str(bad), "--tokenizer", str(trained_tokenizer_dir),
               "--out", str(tmp_path / "o2"), "--chunk-mb", "0.002", "--workers", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{bad}:151: not valid JSON" in err and "Traceback" not in err
    lines[150] = json.dumps({"content": "x"})
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(PrepareError, match=rf"{bad}:151: no 'text' field \(fields: content\); pass --text-key"):
        prepare([bad], trained_tokenizer_dir, tmp_path / "o3", workers=1, progress=False)
    with pytest.raises(PrepareError, match="unsupported input"):
        prepare([tmp_path / "bad.jsonl", tokenizer_json(trained_tokenizer_dir)], trained_tokenizer_dir,
                tmp_path / "o4", progress=False)


def tokenizer_json(d):
    return d / "tokenizer.json"


def test_text_key_and_cli_summary(trained_tokenizer_dir, tmp_path, capsys):
    src = tmp_path / "c.jsonl"
    src.write_text("\n".join(json.dumps({"body": t}) for t in _documents(20, 3)) + "\n")
    out = tmp_path / "o"
    assert main(["data", "prepare", "--input", str(src), "--tokenizer", str(trained_tokenizer_dir), "--out", str(out),
                 "--text-key", "body", "--workers", "1"]) == 0
    assert "20 documents" in capsys.readouterr().out
    assert json.loads((out / "prepare.json").read_text())["summary"]["documents"] == 20


def test_parquet_input(trained_tokenizer_dir, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = _documents(50, 4)
    pq.write_table(pa.table({"text": texts}), tmp_path / "p.parquet", row_group_size=10)
    prepare([tmp_path / "p.parquet"], trained_tokenizer_dir, tmp_path / "o", workers=1, chunk_mb=0.0001,
            progress=False)
    tok = load_tokenizer(trained_tokenizer_dir)
    assert [tok.decode(d[:-1]) for d in _read_back(tmp_path / "o")] == texts


def test_an_input_edited_in_place_at_the_same_size_is_not_taken_for_the_old_one(trained_tokenizer_dir, tmp_path):
    """Issue 26: inputs were checked by path and size only, so a stale shard was reused silently."""
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["alpha beta", "gamma delta"]))
    out = tmp_path / "o"
    prepare([src], trained_tokenizer_dir, out, workers=1, progress=False)
    size = src.stat().st_size
    src.write_text(src.read_text().replace("alpha", "omega"))  # same size, other content
    assert src.stat().st_size == size
    with pytest.raises(PrepareError, match=rf"{src} changed since its shards were written \(its content hash "
                                           r"differs\); use a new --out folder"):
        prepare([src], trained_tokenizer_dir, out, workers=1, progress=False)


def test_empty_inputs_are_refused(trained_tokenizer_dir, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rc = main(["data", "prepare", "--input", str(empty), "--tokenizer", str(trained_tokenizer_dir),
               "--out", str(tmp_path / "o1"), "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{empty}: empty input file (no documents); remove it from --input" in err
    assert "Traceback" not in err and not (tmp_path / "o1").exists()  # refused before anything was written
    hollow = tmp_path / "hollow.jsonl"
    hollow.write_text('{"text": ""}\n\n{"text": null}\n')
    with pytest.raises(PrepareError, match=rf"{hollow}: no documents \(every line is blank or has an empty or null "
                                           "text\\); remove it from --input"):
        prepare([hollow], trained_tokenizer_dir, tmp_path / "o2", workers=1, progress=False)


def _rss(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith(field + ":"))) * 1024


def test_a_huge_single_line_streams_in_a_small_multiple_of_its_size(trained_tokenizer_dir, tmp_path):
    """Issue 26: one 50 MB JSONL line peaked at 7.9 GB. The line is tokenized in pieces: the same tokens as the
    whole, at a peak resident size of a few times the line (Linux's VmHWM, reset just before)."""
    import random

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident size")
    rng = random.Random(0)
    text = " ".join(rng.choice(WORDS) for _ in range(60_000))  # 360 K characters (> LONG_DOC), 0.4 MB of UTF-8
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    prepare([big], trained_tokenizer_dir, tmp_path / "warm", workers=1, progress=False)  # tokenizer loaded, cached
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _rss("VmRSS")
    prepare([big], trained_tokenizer_dir, tmp_path / "big", workers=1, progress=False)
    grown, size = _rss("VmHWM") - base, big.stat().st_size
    print(f"peak grew by {grown / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB line")
    assert grown < 8 * size, f"peak grew by {grown / 2**20:.0f} MiB for a {size / 2**20:.1f} MiB line"
    tok = load_tokenizer(trained_tokenizer_dir)
    assert _read_back(tmp_path / "big") == [tok.encode(text) + [tok.eos_token_id]]
