"""SFT batches: conversations in TRL's format -> chat template -> best-fit-decreasing packing, assistant-only loss.

Input: JSONL files, one conversation per line, `{"messages": [...], "tools": [...], "chat_template_kwargs": {...}}`
(the last two optional: TRL's `tools` column, JSON schemas offered to the model, rendered as the template's tools;
per-example `enable_thinking`, `xml_tools`, `python_tools`, ...; smoltalk2's SFT columns). Each one is
rendered and tokenized by `smollm3.chat.tokenize_chat`, which also says which tokens are the assistant's; only
those are trained on (the SmolLM3 blog: "loss masked on user turns and the results from tool calls").

Labels are shifted (train/losses.py): labels[t] = ids[t + 1] where that token is an assistant token, else -100;
a conversation's last token predicts nothing. Conversations are then packed whole into rows of at most
`seq_len` tokens (packing.py), positions restarting per conversation, and the rows are served in a seeded order,
reshuffled every epoch. The template's "Today Date" line is pinned to one date per run (saved in the loader state),
so a run resumed on another day sees the same tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import date as Date
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from smollm3.chat import ChatError, TemplateError, tokenize_chat
from smollm3.data.packing import IGNORE_INDEX, Packed, collate, pack_sequences


class DataFormatError(ValueError):
    pass


def read_jsonl(path: str | os.PathLike):
    """(where, record) per non-blank line, where = "file:line"; a malformed line raises naming it."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: no such file")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                why = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
                raise DataFormatError(f"{where}: not valid JSON ({why}); fix or remove that line") from None
            if not isinstance(record, dict):
                raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record


def check_messages(where: str, messages, field: str = "messages") -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataFormatError(f"{where}: {field!r} must be a non-empty list of {{role, content}} messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise DataFormatError(f"{where}: {field}[{i}] must be an object with a 'role' (and 'content')")
    return messages


def resumed_date(state: dict, date: Date, pinned: bool, what: str) -> Date:
    """The "Today Date" a loader resumes with: the one its saved state was rendered with (a run keeps its day across
    midnight), refused when data.date pins another day, since the rendered tokens would differ."""
    saved = Date.fromisoformat(state["date"])
    if saved != date and pinned:
        raise ValueError(f"{what} state was saved with date {saved} and data.date is {date}: resuming would train "
                         "on other tokens; set data.date to the saved date or start anew")
    return saved


def check_kwargs(where: str, record: dict) -> dict:
    """The template arguments of one example: its chat_template_kwargs, plus TRL's `tools` column (a list of JSON
    schemas, or that list as a JSON string, as some datasets store it), which TRL passes as `tools=`."""
    kwargs = record.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise DataFormatError(f"{where}: 'chat_template_kwargs' must be an object like {{\"enable_thinking\": false}}")
    tools = record.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{where}: 'tools' is a string but not JSON ({e.msg}); give a list of tool "
                                  "schemas") from None
    if tools is not None and tools != []:
        if not isinstance(tools, list) or not all(isinstance(t, (dict, str)) for t in tools):
            raise DataFormatError(f"{where}: 'tools' must be a list of tool schemas (objects), got "
                                  f"{type(tools).__name__}")
        if kwargs.get("tools") not in (None, tools):
            raise DataFormatError(f"{where}: 'tools' and chat_template_kwargs.tools differ; give one of them")
        kwargs = {**kwargs, "tools": tools}
    return kwargs


def load_conversations(paths: list[str | os.PathLike]) -> list[dict]:
    """[{messages, chat_template_kwargs, where}] from JSONL files, checked line by line."""
    out = []
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        for where, record in read_jsonl(path):
            if "messages" not in record:
                raise DataFormatError(f"{where}: no 'messages' field (TRL's conversational format: "
                                      "{\"messages\": [{\"role\": \"user\", \"content\": ...}, ...]})")
            out.append({"messages": check_messages(where, record["messages"]),
                        "chat_template_kwargs": check_kwargs(where, record), "where": where})
    if not out:
        raise DataFormatError(f"no conversations in {', '.join(map(str, paths))}")
    return out


def tokenize_conversation(tokenizer, example: dict, *, template: str = "smollm3",
                          date: Date | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, shifted labels) of one conversation; labels keep only assistant tokens."""
    kwargs = dict(example.get("chat_template_kwargs") or {})
    if date is not None:
        kwargs.setdefault("date", date)
    try:
        ids, mask = tokenize_chat(tokenizer, example["messages"], template=template, **kwargs)
    except (ChatError, TemplateError, TypeError) as e:
        raise DataFormatError(f"{example.get('where', 'conversation')}: {e}") from None
    labels = [ids[t + 1] if mask[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)] + [IGNORE_INDEX]
    return ids, labels


def conversations_fingerprint(examples: list[dict]) -> str:
    """16 hex digits that change when any example's messages or template kwargs do: a loader's saved state names
    the data it walked, and resuming on other data is refused."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex["messages"], ex["chat_template_kwargs"]], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class EpochStream:
    """Item indices in a seeded order, reshuffled each epoch; every rank walks the same global stream and keeps
    its slice of each global batch. The position is one integer."""

    def __init__(self, n_items: int, batch_size: int, seed: int, rank: int, world_size: int):
        if n_items < 1:
            raise ValueError("nothing to iterate over")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.n, self.batch_size, self.seed = n_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.position = 0  # items handed out so far, all ranks together
        self._order: tuple[int, np.ndarray] | None = None

    @property
    def epoch(self) -> int:
        return self.position // self.n

    def _item(self, i: int) -> int:
        epoch, k = divmod(i, self.n)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return int(self._order[1][k])

    def next_batch(self) -> list[int]:
        start = self.position + self.rank * self.batch_size
        items = [self._item(start + j) for j in range(self.batch_size)]
        self.position += self.batch_size * self.world_size
        return items


class SFTLoader:
    """Infinite iterator of packed SFT batches: int64 tensors `input_ids`, `position_ids`, `labels` of shape
    [batch_size, longest row in the batch] (each row <= seq_len). `packing_efficiency` is the share of the
    rows' capacity holding real tokens."""

    def __init__(self, paths: list[str | os.PathLike], tokenizer, seq_len: int, batch_size: int, *,
                 template: str = "smollm3", seed: int = 0, rank: int = 0, world_size: int = 1,
                 date: Date | None = None):
        self.examples = load_conversations(paths)
        self.tokenizer, self.seq_len, self.template = tokenizer, seq_len, template
        self.date, self.date_pinned = date or Date.today(), date is not None
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = pad if pad is not None else 0
        self.fingerprint = conversations_fingerprint(self.examples)
        self.stream_rank = rank
        self._pack()
        self.stream = EpochStream(len(self.rows), batch_size, seed, rank, world_size)

    def _pack(self):
        examples = tqdm(self.examples, desc="tokenizing conversations", unit="conv",
                        disable=self.stream_rank != 0 or len(self.examples) < 1000)
        seqs = [tokenize_conversation(self.tokenizer, ex, template=self.template, date=self.date) for ex in examples]
        self.truncated = sum(len(ids) > self.seq_len for ids, _ in seqs)
        self.rows, self.packing_efficiency = pack_sequences(seqs, self.seq_len)
        self.trained_tokens = sum(int((r.labels != IGNORE_INDEX).sum()) for r in self.rows)
        if self.trained_tokens == 0:
            raise DataFormatError(self._nothing_to_train(seqs))

    def _nothing_to_train(self, seqs) -> str:
        """Why no label survived: no assistant turns at all, or truncation at seq_len cut every one of them."""
        where = ", ".join(map(str, dict.fromkeys(ex["where"].rsplit(":", 1)[0] for ex in self.examples)))
        firsts = [next(t for t, lab in enumerate(labels) if lab != IGNORE_INDEX) for _, labels in seqs
                  if any(lab != IGNORE_INDEX for lab in labels)]
        if not firsts:
            return (f"{where}: no trainable tokens: no conversation has an assistant turn (only assistant tokens "
                    "are trained on)")
        system, _ = tokenize_chat(self.tokenizer, [{"role": "user", "content": ""}], template=self.template,
                                  date=self.date)
        return (f"{where}: no trainable tokens: every assistant turn starts beyond data.seq_len {self.seq_len} and is "
                f"cut by truncation (the earliest begins after {min(firsts) + 1} tokens; template {self.template!r} "
                f"renders an empty user turn, its default system prompt included, as {len(system)} tokens). Raise "
                "data.seq_len, shorten the prompts, or pass a shorter system prompt")

    def stats(self) -> dict:
        return {"conversations": len(self.examples), "rows": len(self.rows), "seq_len": self.seq_len,
                "packing_efficiency": round(self.packing_efficiency, 4), "truncated": self.truncated,
                "trained_tokens": self.trained_tokens, "date": self.date.isoformat()}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        rows: list[Packed] = [self.rows[i] for i in self.stream.next_batch()]
        return collate(rows, self.pad_id)

    def state_dict(self) -> dict:
        return {"position": self.stream.position, "seed": self.stream.seed, "date": self.date.isoformat(),
                "seq_len": self.seq_len, "template": self.template, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        if state["fingerprint"] != self.fingerprint or state["seq_len"] != self.seq_len \
                or state["seed"] != self.stream.seed or state["template"] != self.template:
            raise ValueError("SFT loader state does not match: it was saved for other conversations, seq_len, seed or "
                             "template; resuming would not replay the same batches")
        saved_date = resumed_date(state, self.date, self.date_pinned, "SFT loader")
        if saved_date != self.date:  # the run started on another day: re-render with that day's date
            self.date = saved_date
            self._pack()
            self.stream.n, self.stream._order = len(self.rows), None
        self.stream.position = int(state["position"])
