"""One request's state as the engine sees it: prompt, parameters, output so far, and where its K/V lives.

A request's tokens are its prompt followed by its output. `num_computed` of them have their K/V in the cache (in the
blocks of `block_table`); the rest are computed in chunks (prefill) and then one at a time (decode). Preemption
gives the blocks back and sets `num_computed` to 0: the request recomputes prompt and output so far when it runs
again, and its output continues where it was.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from smollm3.infer.constrain import ToolCallConstraint
from smollm3.infer.sampling import SamplingParams

_ids = itertools.count()


def new_request_id() -> str:
    return f"req-{next(_ids)}"


class IncrementalDetokenizer:
    """Text for a growing list of token ids without re-decoding it all: decode a short window, emit what is new,
    and hold back while the window ends inside a multi-byte character (vLLM's prefix/read offsets)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix, self.read = 0, 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix:self.read])
        after = self.tokenizer.decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """What is still held back (an unfinished character decodes as U+FFFD, as everywhere else)."""
        before = self.tokenizer.decode(self.ids[self.prefix:self.read])
        after = self.tokenizer.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):]


@dataclass(eq=False)
class Request:
    """One generation: its prompt, parameters, and (filled in by the engine) its output so far."""

    prompt_ids: list[int]
    params: SamplingParams
    id: str = ""
    constraint: ToolCallConstraint | None = None
    on_update: Callable[[Request], None] | None = None  # called from the engine's thread after each change
    output_ids: list[int] = field(default_factory=list)  # sampled ids, a final stop id included
    text: str = ""  # decoded output, stop ids and stop strings excluded
    stable_len: int = 0  # text[:stable_len] is final (the rest may still turn out to start a stop string)
    sent_len: int = 0  # how much text take_delta() has handed out
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: str | int | None = None  # the stop string or stop id that ended it
    error: str | None = None
    aborted: bool = False  # set from any thread; the engine finishes the request at its next step
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at admission
    num_preemptions: int = 0
    # with params.logprobs set: one (token id, logprob, [(id, logprob)] top-k) per sampled token
    logprobs: list = field(default_factory=list)
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    finish_time: float | None = None
    # the cache's view (block_manager.py): blocks in token order, the prefix-cache keys of its full blocks, and
    # how many of its tokens have K/V in those blocks
    block_table: list[int] = field(default_factory=list)
    block_keys: list[bytes] = field(default_factory=list)
    lookup_keys: list[bytes] = field(default_factory=list)  # prefix-cache keys of its leading full blocks, hashed
    # once: a request waiting for blocks looks its prefix up again each step
    num_computed: int = 0
    _stop_ids: frozenset = frozenset()
    _generator: torch.Generator | None = None
    _detok: IncrementalDetokenizer | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def tokens(self, start: int = 0, end: int | None = None) -> list[int]:
        """Prompt and output as one sequence, sliced."""
        n = len(self.prompt_ids)
        end = self.num_tokens if end is None else end
        if end <= n:
            return self.prompt_ids[start:end]
        return self.prompt_ids[start:] + self.output_ids[max(start - n, 0):end - n]

    @property
    def prefilling(self) -> bool:
        """More than the last token still lacks K/V: a prefill chunk runs next, not a decode step."""
        return self.num_computed < self.num_tokens - 1 or not self.output_ids

    def take_delta(self) -> str:
        """The final text not handed out yet (call from on_update to stream)."""
        delta = self.text[self.sent_len:self.stable_len]
        self.sent_len = self.stable_len
        return delta
