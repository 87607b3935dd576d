"""`smollm3 data prepare`: documents (jsonl, jsonl.gz, parquet, txt) + a tokenizer -> datatrove token shards.

The input is cut into work units of about `chunk_mb` (JSONL at line boundaries, parquet at row groups, text
files grouped whole); each unit becomes one shard, named after its position, so the output depends only on the
inputs and the tokenizer, never on how many processes ran. Units run in parallel processes; a finished shard
(its .ds.metadata exists) is skipped on a rerun, so an interrupted job resumes where it stopped.

Each document is tokenized without special tokens and followed by the EOS token, as datatrove's
DocumentTokenizer does (its post-processor is "$A <EOS>"); empty documents are dropped. A document longer than
LONG_DOC characters is tokenized piece by piece, cut before a space between two non-spaces (a pre-token boundary of
byte-level BPE), and written as it goes: one 50 MB line took 7.9 GB encoded whole (the tokenizer's per-token offsets
and strings, then Python ints), a small multiple of the line this way. The pieces are checked to encode as the whole
does; where a tokenizer joins across such a cut (e.g. a SentencePiece one), the document is encoded whole.

Finished work is keyed on the SHA-256 of every input's content (an input edited in place, even at the same size,
is not mistaken for the one the shards came from); an empty input is refused.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import itertools
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from smollm3.data.shards import ShardWriter, open_shard, token_size_for
from smollm3.tokenizer import load_tokenizer

SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".txt")
MANIFEST = "prepare.json"
LONG_DOC = 1 << 18  # characters: longer documents are tokenized in pieces of about PIECE characters
# (64 Ki: 3.7x the input at the peak for a 4.8 MB line, against 18x with 256 Ki pieces, 200x encoded whole)
PIECE = 1 << 16


class PrepareError(ValueError):
    pass


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def expand_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files as given (in order), folders as their supported files in sorted order."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _kind(f))
            if not found:
                raise PrepareError(f"{p}: no {', '.join(SUFFIXES)} files inside")
            files.extend(found)
        elif p.is_file():
            if not _kind(p):
                raise PrepareError(f"{p}: unsupported input; give {', '.join(SUFFIXES)} files or folders of them")
            files.append(p)
        else:
            raise PrepareError(f"{p}: no such file or folder")
    return files


# ------------------------------------------------------------------------------------------------------------------
# work units


@dataclass(frozen=True)
class Unit:
    """One shard's worth of input: byte range of a JSONL file, row groups of a parquet file, or txt files."""
    index: int
    kind: str
    paths: tuple[str, ...]
    start: int = 0  # jsonl: byte offset; parquet: first row group
    end: int = -1  # jsonl: byte offset (exclusive); parquet: row group (exclusive)
    size: int = 0  # bytes of input, for the progress bar and throughput

    @property
    def name(self) -> str:
        stem = Path(self.paths[0]).name
        for s in SUFFIXES:
            stem = stem.removesuffix(s)
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:40]
        return f"{self.index:05d}_{stem}"


def _jsonl_ranges(path: Path, chunk: int) -> list[tuple[int, int]]:
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        while cuts[-1] + chunk < size:
            f.seek(cuts[-1] + chunk)
            f.readline()  # move to the start of the next line
            pos = f.tell()
            if pos >= size:
                break
            cuts.append(pos)
    cuts.append(size)
    return list(itertools.pairwise(cuts))


def plan_units(files: list[Path], chunk_bytes: int) -> list[Unit]:
    units: list[Unit] = []
    txt: list[Path] = []
    txt_bytes = 0

    def flush_txt():
        nonlocal txt, txt_bytes
        if txt:
            units.append(Unit(len(units), ".txt", tuple(map(str, txt)), size=txt_bytes))
            txt, txt_bytes = [], 0

    for f in files:
        kind = _kind(f)
        if kind == ".txt":
            txt.append(f)
            txt_bytes += f.stat().st_size
            if txt_bytes >= chunk_bytes:
                flush_txt()
            continue
        flush_txt()
        if kind == ".jsonl":
            for a, b in _jsonl_ranges(f, chunk_bytes):
                units.append(Unit(len(units), kind, (str(f),), a, b, b - a))
        elif kind == ".jsonl.gz":
            units.append(Unit(len(units), kind, (str(f),), size=f.stat().st_size))
        else:
            pq = _pyarrow_parquet()
            meta = pq.ParquetFile(f).metadata
            first, acc = 0, 0
            for g in range(meta.num_row_groups):
                acc += meta.row_group(g).total_byte_size
                if acc >= chunk_bytes or g == meta.num_row_groups - 1:
                    units.append(Unit(len(units), kind, (str(f),), first, g + 1, acc))
                    first, acc = g + 1, 0
    flush_txt()
    return units


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PrepareError("reading .parquet needs pyarrow: pip install 'smollm3[data]' (or pip install pyarrow)") \
            from None
    return pq


# ------------------------------------------------------------------------------------------------------------------
# reading documents


def _where(path: str, offset: int | None, local: int) -> str:
    """"file:line" of the `local`-th line (1-based) of a chunk that starts at byte `offset` (None: the file's
    start); only computed when reporting an error, since it reads the file up to there."""
    if not offset:
        return f"{path}:{local}"
    with open(path, "rb") as f:
        before = f.read(offset).count(b"\n")
    return f"{path}:{before + local}"


def _text_of(record, text_key: str, where) -> str | None:
    if not isinstance(record, dict):
        raise PrepareError(f"{where()}: expected a JSON object per line, got {type(record).__name__}")
    if text_key not in record:
        keys = ", ".join(list(record)[:8])
        raise PrepareError(f"{where()}: no {text_key!r} field (fields: {keys}); pass --text-key NAME")
    text = record[text_key]
    if text is None:
        return None
    if not isinstance(text, str):
        raise PrepareError(f"{where()}: {text_key!r} is {type(text).__name__}, not a string")
    return text


def read_texts(unit: Unit, text_key: str = "text"):
    """The documents of one unit, in file order. Bad input raises PrepareError naming file:line."""
    if unit.kind == ".txt":
        for p in unit.paths:
            try:
                yield Path(p).read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise PrepareError(f"{p}: not UTF-8 text (byte {e.start}); convert it to UTF-8") from None
        return
    path = unit.paths[0]
    if unit.kind == ".parquet":
        pq = _pyarrow_parquet()
        pf = pq.ParquetFile(path)
        if text_key not in pf.schema_arrow.names:
            raise PrepareError(f"{path}: no column {text_key!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                               "pass --text-key NAME")
        for g in range(unit.start, unit.end):
            col = pf.read_row_group(g, columns=[text_key]).column(0)
            for i, text in enumerate(col.to_pylist()):
                if text is not None and not isinstance(text, str):
                    raise PrepareError(f"{path}: row group {g}, row {i}: {text_key!r} is {type(text).__name__}, "
                                       "not a string")
                if text is not None:
                    yield text
        return
    gz = unit.kind == ".jsonl.gz"
    offset, end = (0, None) if gz else (unit.start, unit.end)
    with gzip.open(path, "rb") if gz else open(path, "rb") as f:
        f.seek(offset)
        pos = offset
        for local, raw in enumerate(f, 1):
            pos += len(raw)
            if raw.strip():
                where = functools.partial(_where, path, offset if end is not None else None, local)
                try:
                    record = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    why = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
                    raise PrepareError(f"{where()}: not valid JSON ({why}); fix or remove that line") from None
                text = _text_of(record, text_key, where)
                if text is not None:
                    yield text
            if end is not None and pos >= end:
                break


# ------------------------------------------------------------------------------------------------------------------
# tokenizing


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str):
    return load_tokenizer(path)


def tokenize_unit(unit: Unit, tokenizer_path: str, out_dir: str, text_key: str, eos_id: int,
                  batch_docs: int = 512) -> dict:
    """Tokenize one unit into OUT/<unit.name>.ds (atomically). Returns its counts."""
    tok = _tokenizer(tokenizer_path)
    token_size = token_size_for(tok.vocab_size)
    path = Path(out_dir) / f"{unit.name}.ds"
    docs = tokens = 0
    with ShardWriter(path, token_size, tokenizer_name=tokenizer_path) as w:
        batch: list[str] = []

        def flush():
            nonlocal docs, tokens
            encoded = tok.encode_batch(batch)
            lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded))
            flat = np.empty(int(lengths.sum()), dtype=np.int64)
            ends = np.cumsum(lengths)
            for ids, e in zip(encoded, ends):
                flat[e - len(ids) - 1:e - 1] = ids
            flat[ends - 1] = eos_id
            w.write_many(flat, ends)
            docs += len(batch)
            tokens += int(ends[-1])
            batch.clear()

        for text in read_texts(unit, text_key):
            if len(text) > LONG_DOC:
                if batch:
                    flush()
                tokens += _write_long(w, tok, text, eos_id)
                docs += 1
            elif text:
                batch.append(text)
                if len(batch) >= batch_docs:
                    flush()
        if batch:
            flush()
    return {"unit": unit.index, "documents": docs, "tokens": tokens, "bytes": unit.size}


def _pieces(text: str, size: int = PIECE) -> list[tuple[int, int]]:
    """(start, end) spans of about `size` characters covering `text`, each cut just before a space that has a
    non-space on both sides: no byte-level BPE pre-token crosses that point, so the pieces encode as the whole."""
    spans, start, n = [], 0, len(text)
    while n - start > size:
        cut = text.find(" ", start + size)
        while cut != -1 and (text[cut - 1].isspace() or cut + 1 >= n or text[cut + 1].isspace()):
            cut = text.find(" ", cut + 1)
        if cut == -1:
            break
        spans.append((start, cut))
        start = cut
    spans.append((start, n))
    return spans


def _write_long(w: ShardWriter, tok, text: str, eos_id: int) -> int:
    """One long document, tokenized and written piece by piece (one document end, after its EOS). -> its tokens."""
    spans = _pieces(text)
    if len(spans) > 1:  # the pieces must encode as the whole would: check across the first cut
        (a, b), (_, c) = spans[0], spans[1]
        probe_start = max(a, b - PIECE // 4)
        probe_end = min(c, b + PIECE // 4)
        whole = tok.encode(text[probe_start:probe_end])
        if whole != tok.encode(text[probe_start:b]) + tok.encode(text[b:probe_end]):
            spans = [(0, len(text))]
    n = 0
    for a, b in spans:
        ids = np.asarray(tok.encode(text[a:b]), dtype=np.int64)
        n += len(ids)
        w.write_many(ids, np.empty(0, dtype=np.int64))  # tokens only: the document goes on
    w.write_many(np.array([eos_id], dtype=np.int64), np.array([1], dtype=np.int64))
    return n + 1


def _worker_init():
    # parallelism is ours (one process per core); the tokenizer's own thread pool would only oversubscribe
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _tokenizer_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else [path / n for n in ("tokenizer.json", "tokenizer_config.json")]
    for f in files:
        if f.exists():
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def prepare(inputs: list[str | os.PathLike], tokenizer: str | os.PathLike, out_dir: str | os.PathLike, *,
            text_key: str = "text", workers: int | None = None, chunk_mb: float = 64.0,
            eos_token: str | None = None, progress: bool = True) -> dict:
    """Tokenize `inputs` into datatrove shards under `out_dir`; returns a summary (also OUT/prepare.json)."""
    files = expand_inputs(inputs)
    tok_path = str(tokenizer)
    tok = _tokenizer(tok_path)
    eos = eos_token or tok.eos_token
    eos_id = tok.token_to_id(eos) if eos else None
    if eos_id is None:
        raise PrepareError(f"{tokenizer}: no end-of-document token ({'token ' + repr(eos) + ' is not in the vocab' if eos else 'the tokenizer names no eos_token'}); pass --eos-token TOKEN")
    empty = [f for f in files if f.stat().st_size == 0]
    if empty:
        raise PrepareError(f"{empty[0]}: empty input file (no documents); remove it from --input")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    units = plan_units(files, int(chunk_mb * 2 ** 20))
    plan = {"tokenizer": tok_path, "tokenizer_sha256": _tokenizer_fingerprint(Path(tok_path)), "eos_id": eos_id,
            "token_size": token_size_for(tok.vocab_size), "text_key": text_key, "chunk_mb": chunk_mb,
            "inputs": [{"path": str(f), "bytes": f.stat().st_size, "sha256": _file_sha256(f)} for f in files],
            "units": [asdict(u) | {"name": u.name} for u in units]}
    plan = json.loads(json.dumps(plan))  # as it reads back from disk (tuples become lists)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if {k: v for k, v in old.items() if k in plan} != plan:
            changed = [new["path"] for new, was in zip(plan["inputs"], old.get("inputs", []))
                       if new["path"] == was.get("path") and new != was]
            what = (f"{changed[0]} changed since its shards were written (its content hash differs)" if changed
                    else "they were prepared from other inputs, tokenizer or settings")
            raise PrepareError(f"{out} holds shards that do not match this run: {what}; use a new --out folder "
                               "(or delete this one) to start over")
    else:
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(plan, indent=1))
        os.replace(tmp, manifest_path)

    todo = [u for u in units if not (out / f"{u.name}.ds.metadata").exists()]
    t0 = time.perf_counter()
    cpu0 = _cpu_seconds()
    args = (tok_path, str(out), text_key, eos_id)
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    total = sum(u.size for u in todo)
    if workers == 1:
        with tqdm(total=total, unit="B", unit_scale=True, desc="data prepare", disable=not progress) as bar:
            for u in todo:
                tokenize_unit(u, *args)
                bar.update(u.size)
    else:
        import multiprocessing as mp

        # fork where there is one: workers inherit the loaded tokenizer (a GGUF one takes seconds to rebuild) and
        # the caller's script is not re-imported. The tokenizer has not encoded anything in this process yet, so
        # no thread pool is forked; the pool starts before the progress bar's monitor thread.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            futures = {pool.submit(tokenize_unit, u, *args): u for u in todo}
            with tqdm(total=total, unit="B", unit_scale=True, desc="data prepare", disable=not progress) as bar:
                for fut in as_completed(futures):
                    fut.result()
                    bar.update(futures[fut].size)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    shards = [open_shard(out / f"{u.name}.ds") for u in units]  # validates everything, resumed shards included
    per_input: dict[str, int] = {}
    for u, shard in zip(units, shards):
        for p in u.paths:  # a txt unit's files are whole non-empty documents: only jsonl/parquet can hold none
            per_input[p] = per_input.get(p, 0) + len(shard)
    hollow = [p for p, n in per_input.items() if n == 0]
    if hollow:
        raise PrepareError(f"{hollow[0]}: no documents (every line is blank or has an empty or null text); remove "
                           "it from --input")
    summary = {"shards": len(shards), "documents": sum(len(s) for s in shards),
               "tokens": sum(s.n_tokens for s in shards), "input_bytes": sum(u.size for u in units),
               "processed_bytes": sum(u.size for u in todo), "skipped_shards": len(units) - len(todo),
               "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "workers": workers}
    record = json.loads(manifest_path.read_text()) | {"summary": summary}
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, manifest_path)
    return summary


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
