"""What runs in each engine step: which requests decode, which prompts are prefilled and how far, who waits.

Every step has a token budget (`max_num_batched_tokens`). Running requests that are past their prompt decode one
token each; the budget left goes to prompt chunks, first of requests already partly prefilled, then of waiting
requests in arrival order (chunked prefill: a 64k-token prompt is read a budget at a time, in the same steps as
everyone's decode, so streams keep flowing while it is read). `max_prefill_tokens_during_decode`, when set, caps the
prompt work of a step in which streams decode: a step's time grows with its prompt work, and that time is the
streams' gap between tokens; an idle engine still reads prompts a whole budget at a time. The cap counts tokens of
a fresh prompt: a token at context c also attends to the c keys before it, so it counts 1 + c / break_even, where
`attention_break_even` is the context at which a token's attention costs as many FLOPs as its weights (19,072
tokens for SmolLM3-3B); at the end of a 32k prompt a step reads about 2.7x fewer tokens than at its start, so the
step, and the streams' gap, stays about as long as the cap's tokens at the start. A waiting request is
admitted when a running place (`max_num_seqs`) and the blocks for its first chunk are free; its prompt's cached
leading blocks are shared, not computed (prefix caching).

When a running request needs a block and none is free, the most recently admitted running request is preempted:
its blocks go back to the pool and it waits at the head of the queue, to recompute its prompt and output so far
when blocks free up (vLLM's recompute preemption). The oldest request always progresses, since the cache holds at
least one `max_model_len` sequence.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from smollm3.infer.block_manager import BlockManager
from smollm3.infer.sequence import Request


@dataclass
class StepPlan:
    decode: list[Request] = field(default_factory=list)  # one token each, at position num_computed
    prefill: list[tuple[Request, int]] = field(default_factory=list)  # (request, tokens of its next chunk)
    preempted: list[Request] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_prefill_tokens_during_decode: int | None = None, attention_break_even: float | None = None):
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError(f"max_num_batched_tokens ({max_num_batched_tokens}) must be at least max_num_seqs "
                             f"({max_num_seqs}): every running request decodes a token each step")
        cap = max_prefill_tokens_during_decode
        if cap is not None and cap < 1:
            raise ValueError(f"max_prefill_tokens_during_decode must be at least 1, got {cap}")
        if attention_break_even is not None and not attention_break_even > 0:
            raise ValueError(f"attention_break_even must be positive, got {attention_break_even}")
        self.break_even = attention_break_even  # None: every prompt token counts 1 against the cap
        self.blocks = blocks
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.max_prefill_tokens_during_decode = max_prefill_tokens_during_decode
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order
        self.num_preemptions = 0

    def schedule(self, busy: frozenset[Request] = frozenset()) -> StepPlan:
        """The step's plan. `busy`: the requests of a prompt step the engine is still running (one divided over
        several steps); while there are any, the plan only decodes the others (no prompt chunk, no admission)."""
        plan = StepPlan()
        budget = self.max_num_batched_tokens
        # a request leaves `running` during this plan only by preemption (into plan.preempted, short), so that is
        # what is checked: `r in self.running` costs the whole list per request (1.4 ms a step at 256 requests)
        for r in list(self.running):  # decodes first: every running stream gets its token
            if r.prefilling or r in plan.preempted or r in busy:
                continue
            if not self._make_room(r, r.num_computed + 1, plan):
                continue  # r itself was preempted
            plan.decode.append(r)
            budget -= 1
        if busy:
            return plan
        # the prompt work this step may do beside the decodes, in tokens of a fresh prompt (no cap: infinite)
        cap = self.max_prefill_tokens_during_decode
        work = cap if plan.decode and cap is not None else math.inf
        for r in list(self.running):  # chunks of prompts already started
            if budget <= 0 or work <= 0:
                break
            if not r.prefilling or r in plan.preempted:
                continue
            n = self._chunk(r.num_tokens - r.num_computed, budget, work, r.num_computed)
            if self._make_room(r, r.num_computed + n, plan):
                plan.prefill.append((r, n))
                budget -= n
                work -= self._work(r.num_computed, n)
        while self.waiting and budget > 0 and work > 0 and len(self.running) < self.max_num_seqs and not plan.preempted:
            r = self.waiting[0]
            cached, keys = self.blocks.cached_prefix(r.tokens(), r.lookup_keys)
            start = len(cached) * self.blocks.block_size
            n = self._chunk(r.num_tokens - start, budget, work, start)
            if not self.blocks.can_allocate(cached, start + n):
                break  # first come, first served: nobody overtakes the head of the queue
            self.waiting.popleft()
            self.blocks.take_cached(r.block_table, cached)
            self.blocks.grow(r.block_table, start + n)
            r.block_keys, r.num_computed = keys, start
            if not r.num_preemptions:  # counted at first admission (a preempted request recomputes its own)
                r.num_cached_tokens = start
                self.blocks.hits += start
                self.blocks.queries += len(r.prompt_ids)
            self.running.append(r)
            plan.prefill.append((r, n))
            budget -= n
            work -= self._work(start, n)
        return plan

    def _work(self, start: int, n: int) -> float:
        """The cap's count of prompt tokens [start, start + n): each 1 + its context / break_even."""
        return n if self.break_even is None else n + (n * start + n * (n - 1) / 2) / self.break_even

    def _chunk(self, left: int, budget: int, work: float, start: int) -> int:
        """The tokens of a chunk from position `start`: at most `left` and `budget`, and under a cap as many as
        `work` pays for (at least one: the prompt always progresses)."""
        n = min(left, budget)
        if work == math.inf:
            return n
        if self.break_even is None:
            return min(n, max(1, int(work)))
        c, b = self.break_even, 1 + start / self.break_even
        return min(n, max(1, int(c * (math.sqrt(b * b + 2 * work / c) - b))))  # n (b + n / 2c) = work

    def _make_room(self, r: Request, num_tokens: int, plan: StepPlan) -> bool:
        """Blocks for r's first num_tokens tokens, preempting the newest other running requests if the pool is
        short; False if r had to be preempted itself."""
        while not self.blocks.grow(r.block_table, num_tokens):
            victim = self.running[-1]
            self.preempt(victim, plan)
            if victim is r:
                return False
        return True

    def preempt(self, r: Request, plan: StepPlan | None = None):
        self.running.remove(r)
        self.blocks.release(r.block_table)
        r.block_keys, r.num_computed = [], 0
        r.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(r)
        if plan is not None:
            plan.preempted.append(r)
            if r in plan.decode:
                plan.decode.remove(r)
            plan.prefill = [(q, n) for q, n in plan.prefill if q is not r]

    def finish(self, r: Request):
        """A request leaves (finished or aborted): its blocks go back, its computed full blocks stay cached."""
        if r in self.running:
            self.running.remove(r)
            self.blocks.release(r.block_table)
        elif r in self.waiting:
            self.waiting.remove(r)
