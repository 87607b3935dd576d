"""Preference batches for DPO / APO: `{prompt, chosen, rejected, chat_template_kwargs}` -> padding-free rows.

Input: JSONL, one pair per line, in TRL's formats (smoltalk2's Preference columns):
- explicit prompt: `prompt` a string or a list of messages; `chosen` / `rejected` a string or a list of
  (assistant) messages that continue it;
- implicit prompt: no `prompt`; `chosen` / `rejected` are whole conversations and the prompt is their common
  leading messages (TRL's `maybe_extract_prompt`).

Each side is tokenized with `smollm3.chat.tokenize_chat`: the prompt with the generation prompt, the prompt plus
completion without; the completion is what follows the prompt's tokens. Truncation follows TRL's DPO defaults:
the prompt keeps its last `max_prompt_length` tokens, then a prompt+completion longer than `max_length` keeps
its last `max_length` tokens ("keep_end").

A batch is one padding-free row (TRL `padding_free`, the recipe's setting): for each pair, prompt+chosen then
prompt+rejected, positions restarting per sequence. Labels are shifted (train/losses.py) and -100 everywhere
but the completion; `segments` gives each label's sequence, 2*pair for chosen and 2*pair+1 for rejected (-1 for
no label); `num_pairs` is the pair count. The trainer sums log-probs per segment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date as Date

import numpy as np
import torch
from tqdm import tqdm

from smollm3.data.packing import IGNORE_INDEX
from smollm3.chat import ChatError, TemplateError, tokenize_chat
from smollm3.data.sft import (DataFormatError, EpochStream, check_kwargs, check_messages, conversations_fingerprint,
                              read_jsonl, resumed_date)


def _as_messages(where: str, value, field: str, role: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return check_messages(where, value, field)


def load_preferences(paths: list[str | os.PathLike]) -> list[dict]:
    """[{prompt, chosen, rejected (message lists), chat_template_kwargs, where}], checked line by line."""
    out = []
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        for where, record in read_jsonl(path):
            missing = [k for k in ("chosen", "rejected") if k not in record]
            if missing:
                raise DataFormatError(f"{where}: no {' or '.join(map(repr, missing))} field (preference format: "
                                      "{\"prompt\", \"chosen\", \"rejected\"[, \"chat_template_kwargs\"]})")
            chosen = _as_messages(where, record["chosen"], "chosen", "assistant")
            rejected = _as_messages(where, record["rejected"], "rejected", "assistant")
            if "prompt" in record and record["prompt"] is not None:
                prompt = _as_messages(where, record["prompt"], "prompt", "user")
            else:  # implicit prompt: the leading messages both conversations share
                n = 0
                while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
                    n += 1
                if n == 0:
                    raise DataFormatError(f"{where}: no 'prompt', and 'chosen' and 'rejected' share no leading "
                                          "messages to take it from")
                prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
            for side, msgs in (("chosen", chosen), ("rejected", rejected)):
                if msgs[0].get("role") != "assistant":
                    raise DataFormatError(f"{where}: {side!r} must start with an assistant message, got role "
                                          f"{msgs[0].get('role')!r}")
            out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                        "chat_template_kwargs": check_kwargs(where, record), "where": where})
    if not out:
        raise DataFormatError(f"no preference pairs in {', '.join(map(str, paths))}")
    return out


@dataclass
class TokenizedPair:
    prompt: list[int]
    chosen: list[int]  # completion tokens only
    rejected: list[int]


def tokenize_pair(tokenizer, example: dict, *, template: str = "smollm3", date: Date | None = None,
                  max_prompt_length: int | None = 512) -> TokenizedPair:
    kwargs = dict(example.get("chat_template_kwargs") or {})
    if date is not None:
        kwargs.setdefault("date", date)
    where = example.get("where", "pair")
    try:
        prompt, _ = tokenize_chat(tokenizer, example["prompt"], template=template, add_generation_prompt=True,
                                  **kwargs)
        sides = []
        for side in ("chosen", "rejected"):
            full, _ = tokenize_chat(tokenizer, example["prompt"] + example[side], template=template, **kwargs)
            if full[:len(prompt)] != prompt:
                raise DataFormatError(f"{where}: the {side} conversation does not start with the rendered prompt "
                                      "(does the prompt end with a user/tool turn?)")
            sides.append(full[len(prompt):])
    except (ChatError, TemplateError, TypeError) as e:
        raise DataFormatError(f"{where}: {e}") from None
    if max_prompt_length is not None:
        prompt = prompt[-max_prompt_length:]
    return TokenizedPair(prompt, *sides)


def _sequence(prompt: list[int], completion: list[int], max_length: int | None):
    """ids, shifted labels (completion only) of prompt+completion, keeping the last max_length tokens."""
    ids = prompt + completion
    trained = np.zeros(len(ids), dtype=bool)
    trained[len(prompt):] = True
    if max_length is not None and len(ids) > max_length:
        ids, trained = ids[-max_length:], trained[-max_length:]
    ids = np.asarray(ids, dtype=np.int64)
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
    labels[:-1] = np.where(trained[1:], ids[1:], IGNORE_INDEX)
    return ids, labels


def collate_pairs(pairs: list[TokenizedPair], max_length: int | None = None) -> dict:
    """Pairs -> one padding-free row: `input_ids`, `position_ids`, `labels`, `segments` [1, N] and `num_pairs`."""
    ids, pos, labels, segs = [], [], [], []
    for p, pair in enumerate(pairs):
        for k, completion in enumerate((pair.chosen, pair.rejected)):
            i, lab = _sequence(pair.prompt, completion, max_length)
            ids.append(i)
            labels.append(lab)
            pos.append(np.arange(len(i), dtype=np.int64))
            segs.append(np.where(lab != IGNORE_INDEX, 2 * p + k, -1))
    row = {name: torch.from_numpy(np.concatenate(parts))[None]
           for name, parts in (("input_ids", ids), ("position_ids", pos), ("labels", labels), ("segments", segs))}
    row["num_pairs"] = len(pairs)
    return row


class PreferenceLoader:
    """Infinite iterator of preference batches of `batch_size` pairs (see the module docstring), in a seeded
    order reshuffled every epoch; `state_dict()` / `load_state_dict()` resume the exact stream."""

    def __init__(self, paths: list[str | os.PathLike], tokenizer, batch_size: int, *, max_length: int | None = None,
                 max_prompt_length: int | None = 512, template: str = "smollm3", seed: int = 0, rank: int = 0,
                 world_size: int = 1, date: Date | None = None):
        self.examples = load_preferences(paths)
        self.tokenizer, self.template = tokenizer, template
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.date, self.date_pinned = date or Date.today(), date is not None
        self.rank = rank
        self.fingerprint = conversations_fingerprint([{"messages": [e["prompt"], e["chosen"], e["rejected"]],
                                                       "chat_template_kwargs": e["chat_template_kwargs"]}
                                                      for e in self.examples])
        self._tokenize()
        self.stream = EpochStream(len(self.pairs), batch_size, seed, rank, world_size)

    def _tokenize(self):
        examples = tqdm(self.examples, desc="tokenizing pairs", unit="pair",
                        disable=self.rank != 0 or len(self.examples) < 1000)
        self.pairs = [tokenize_pair(self.tokenizer, ex, template=self.template, date=self.date,
                                    max_prompt_length=self.max_prompt_length) for ex in examples]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return collate_pairs([self.pairs[i] for i in self.stream.next_batch()], self.max_length)

    def state_dict(self) -> dict:
        return {"position": self.stream.position, "seed": self.stream.seed, "date": self.date.isoformat(),
                "template": self.template, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        if state["fingerprint"] != self.fingerprint or state["seed"] != self.stream.seed \
                or state["template"] != self.template:
            raise ValueError("preference loader state does not match: it was saved for other pairs, seed or "
                             "template; resuming would not replay the same batches")
        saved_date = resumed_date(state, self.date, self.date_pinned, "preference loader")
        if saved_date != self.date:
            self.date = saved_date
            self._tokenize()
        self.stream.position = int(state["position"])
