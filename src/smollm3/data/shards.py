"""Token shards in datatrove's layout, so datatrove's output feeds us and ours feeds nanotron.

One shard is a set of files next to each other:

    NAME.ds           token ids, little-endian uint16 (vocab <= 65,536) or uint32, documents back to back
    NAME.ds.index     uint64 little-endian: the END offset (in tokens) of every document, so doc i spans
                      [index[i-1], index[i]) with index[-1] = 0
    NAME.ds.metadata  text: "tokenizer_name|token_size", then the token count (then a human-readable count)
    NAME.ds.loss      optional: one byte per token, 1 = train on it, 0 = no loss

(huggingface/datatrove `pipeline/tokens/tokenizer.py`: TokenizedFile.) Writes are atomic: every file goes to a
temporary name first and the metadata is renamed into place last, so a shard with metadata is complete.
Opening a shard checks that its files agree with each other and refuses it with the reason if they do not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOKEN_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


class ShardError(ValueError):
    pass


def token_size_for(vocab_size: int) -> int:
    """Bytes per token id: uint16 holds ids up to 65,535, so vocabularies up to 65,536 fit in 2 bytes."""
    return 2 if vocab_size <= 2 ** 16 else 4


def _metric(n: int) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}T"
    return f"{n} T"


class ShardWriter:
    """Append documents to one shard; `close()` (or leaving the `with` block) makes it visible atomically."""

    def __init__(self, path: str | os.PathLike, token_size: int, tokenizer_name: str = "unknown",
                 with_loss: bool = False):
        if token_size not in TOKEN_DTYPES:
            raise ShardError(f"token_size must be 2 or 4, not {token_size}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.token_size, self.dtype = token_size, TOKEN_DTYPES[token_size]
        self.tokenizer_name = tokenizer_name
        self.n_tokens = 0
        self.ends: list[int] = []
        # open until close(): the writer is the context manager
        self._tokens = open(self._tmp(".ds"), "wb")  # noqa: SIM115
        self._loss = open(self._tmp(".ds.loss"), "wb") if with_loss else None  # noqa: SIM115

    def _tmp(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name.removesuffix(".ds") + suffix + ".tmp")

    def _final(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name.removesuffix(".ds") + suffix)

    def write(self, ids, loss_mask=None) -> None:
        """One document. `loss_mask` (same length, truthy = train on the token) only if opened with_loss."""
        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= 1 << (8 * self.token_size)):
            raise ShardError(f"{self.path}: token id {int(arr.max())} does not fit in {self.token_size} bytes")
        self._tokens.write(arr.astype(self.dtype, copy=False).tobytes())
        if self._loss is not None:
            if loss_mask is None or len(loss_mask) != arr.size:
                raise ShardError(f"{self.path}: this shard has a loss file; give a loss mask of {arr.size} values")
            self._loss.write(np.asarray(loss_mask, dtype=bool).astype(np.uint8).tobytes())
        elif loss_mask is not None:
            raise ShardError(f"{self.path}: loss mask given but the writer was opened without with_loss=True")
        self.n_tokens += arr.size
        self.ends.append(self.n_tokens)

    def write_many(self, flat_ids: np.ndarray, ends: np.ndarray) -> None:
        """Many documents at once: their ids back to back and each one's end offset within `flat_ids`."""
        self._tokens.write(np.asarray(flat_ids).astype(self.dtype, copy=False).tobytes())
        self.ends.extend((np.asarray(ends, dtype=np.int64) + self.n_tokens).tolist())
        self.n_tokens += len(flat_ids)

    def close(self) -> int:
        self._tokens.close()
        if self._loss is not None:
            self._loss.close()
        self._tmp(".ds.index").write_bytes(np.asarray(self.ends, dtype="<u8").tobytes())
        os.replace(self._tmp(".ds"), self._final(".ds"))
        os.replace(self._tmp(".ds.index"), self._final(".ds.index"))
        if self._loss is not None:
            os.replace(self._tmp(".ds.loss"), self._final(".ds.loss"))
        self._tmp(".ds.metadata").write_text(
            f"{self.tokenizer_name}|{self.token_size}\n{self.n_tokens}\n{_metric(self.n_tokens)}")
        os.replace(self._tmp(".ds.metadata"), self._final(".ds.metadata"))  # last: the shard is now complete
        return self.n_tokens

    def abort(self) -> None:
        for f in (self._tokens, self._loss):
            if f is not None:
                f.close()
        for suffix in (".ds", ".ds.loss", ".ds.index", ".ds.metadata"):
            self._tmp(suffix).unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass
class Shard:
    """A validated, memory-mapped shard. `tokens[ends[i-1]:ends[i]]` is document i."""
    path: Path
    tokens: np.ndarray
    ends: np.ndarray
    loss: np.ndarray | None
    token_size: int
    tokenizer_name: str | None

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def __len__(self) -> int:
        return int(self.ends.shape[0])

    def document(self, i: int) -> np.ndarray:
        start = int(self.ends[i - 1]) if i > 0 else 0
        return self.tokens[start:int(self.ends[i])]

    def documents(self):
        for i in range(len(self)):
            yield self.document(i)


def read_metadata(path: Path) -> tuple[str | None, int | None, int | None]:
    """(tokenizer name, token size, token count) from NAME.ds.metadata; Nones where it says nothing."""
    meta = path.with_name(path.name + ".metadata")
    if not meta.exists():
        return None, None, None
    lines = meta.read_text(encoding="utf-8").splitlines()
    name, size, count = None, None, None
    if lines:
        head = lines[0]
        if "|" in head and head.rsplit("|", 1)[1].strip() in ("2", "4"):
            name, size = head.rsplit("|", 1)[0], int(head.rsplit("|", 1)[1])
        else:  # older datatrove: the tokenizer name alone, uint16 tokens
            name = head
    if len(lines) > 1 and lines[1].strip().lstrip("-").isdigit():
        count = int(lines[1])
    return name, size, count


def open_shard(path: str | os.PathLike, token_size: int | None = None) -> Shard:
    """Open NAME.ds and check its index (and metadata, loss file) agree with it.

    The token size comes from the metadata; without metadata, from `token_size`; without either, from the
    only size (2 or 4 bytes) that makes the data file exactly as long as the index says."""
    path = Path(path)
    index_path = path.with_name(path.name + ".index")
    if not path.exists():
        raise ShardError(f"{path}: no such shard")
    if not index_path.exists():
        raise ShardError(f"{path}: no {index_path.name} next to it; document boundaries are needed to pack "
                         "documents (datatrove writes it unless save_index=False)")
    name, meta_size, meta_count = read_metadata(path)
    n_bytes = path.stat().st_size
    if index_path.stat().st_size % 8:
        raise ShardError(f"{index_path}: {index_path.stat().st_size} bytes is not a whole number of uint64 "
                         "document ends; the file is truncated or not a datatrove index")
    ends = np.memmap(index_path, dtype="<u8", mode="r") if index_path.stat().st_size else np.zeros(0, "<u8")
    last = int(ends[-1]) if len(ends) else 0
    size = meta_size or token_size
    if size is None:
        candidates = [s for s in (2, 4) if last * s == n_bytes]
        if not candidates:
            raise ShardError(f"{path}: index disagrees with data: the index ends at token {last}, which matches "
                             f"neither uint16 nor uint32 ids for a {n_bytes}-byte data file; the shard is truncated "
                             "or its files come from different runs; re-create it")
        size = candidates[0]
    if size not in TOKEN_DTYPES:
        raise ShardError(f"{path}: token size {size} is not 2 or 4")
    if n_bytes % size:
        raise ShardError(f"{path}: {n_bytes} bytes is not a whole number of {size}-byte token ids; the file is "
                         "truncated; re-create the shard")
    n_tokens = n_bytes // size
    if last != n_tokens:
        raise ShardError(f"{path}: index disagrees with data: the index says the documents end at token {last} "
                         f"but the data file holds {n_tokens} tokens ({size}-byte ids); the shard is truncated or "
                         "its files come from different runs; re-create it")
    if len(ends) > 1 and np.any(ends[1:] < ends[:-1]):
        bad = int(np.argmax(ends[1:] < ends[:-1])) + 1
        raise ShardError(f"{index_path}: document ends must not decrease, but entry {bad} ({int(ends[bad])}) is "
                         f"below entry {bad - 1} ({int(ends[bad - 1])}); the index is corrupt; re-create the shard")
    if meta_count is not None and meta_count != n_tokens:
        raise ShardError(f"{path}: the metadata says {meta_count} tokens but the data file holds {n_tokens}; "
                         "re-create the shard")
    loss = None
    loss_path = path.with_name(path.name + ".loss")
    if loss_path.exists():
        if loss_path.stat().st_size != n_tokens:
            raise ShardError(f"{loss_path}: {loss_path.stat().st_size} loss flags for {n_tokens} tokens; "
                             "re-create the shard")
        loss = np.memmap(loss_path, dtype=np.uint8, mode="r") if n_tokens else np.zeros(0, np.uint8)
    tokens = np.memmap(path, dtype=TOKEN_DTYPES[size], mode="r") if n_tokens else np.zeros(0, TOKEN_DTYPES[size])
    return Shard(path, tokens, ends, loss, size, name)


def find_shards(folder: str | os.PathLike) -> list[Path]:
    """Every NAME.ds under `folder` (recursively), in sorted order; a single .ds path is returned as is."""
    folder = Path(folder)
    if folder.is_file() and folder.suffix == ".ds":
        return [folder]
    if not folder.is_dir():
        raise ShardError(f"{folder}: no such shard folder (make one with `smollm3 data prepare --out {folder}`)")
    shards = sorted(folder.rglob("*.ds"))
    if not shards:
        raise ShardError(f"{folder}: no .ds shards inside (make them with `smollm3 data prepare --out {folder}`)")
    return shards
