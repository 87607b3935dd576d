"""The inference engine: continuous batching over a slot KV cache, with CUDA-graph decode on GPU.

One `Engine.step()` either prefills newly admitted requests (right-padded into one batch, up to a token budget)
or decodes one token for every running request. Requests join and leave between steps, so a long generation
never holds short ones back. On CUDA the decode step is captured once per (batch bucket, KV-length bucket) in a
CUDA graph and replayed, which removes the per-kernel launch cost that dominates small-batch decode; the step
itself is the fused, compiled one of fast.py (fewer, larger kernels), with the greedy argmax inside the graph.
Loading a model directory into an engine, and the offline `LLM` API, are in llm.py.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from smollm3.infer.cache import SlotCache, kv_bytes_per_token
from smollm3.infer.constrain import ToolCallConstraint
from smollm3.infer.sampling import SamplingParams, generation_defaults, sampling_scores
from smollm3.model import SmolLM3ForCausalLM

_ids = itertools.count()


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
    slot: int | None = None
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    finish_time: float | None = None
    _stop_ids: frozenset = frozenset()
    _generator: torch.Generator | None = None
    _detok: IncrementalDetokenizer | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def take_delta(self) -> str:
        """The final text not handed out yet (call from on_update to stream)."""
        delta = self.text[self.sent_len:self.stable_len]
        self.sent_len = self.stable_len
        return delta


class Engine:
    def __init__(self, model: SmolLM3ForCausalLM, tokenizer=None, *, max_num_seqs: int = 32,
                 max_model_len: int | None = None, kv_cache_memory: int | None = None,
                 max_prefill_tokens: int = 16384, cuda_graphs: bool | None = None,
                 defaults: dict | None = None, eos_token_ids: list[int] | None = None,
                 fast_decode: bool | None = None, gemv: bool | None = None, decode_kernels: bool | None = None):
        cfg = model.config
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, cfg
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.max_model_len = max_model_len or cfg.max_position_embeddings
        if self.max_model_len > cfg.max_position_embeddings:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the model's {cfg.max_position_embeddings} "
                             "positions; load with extend_context() (YaRN) first")
        per_slot = kv_bytes_per_token(cfg, self.dtype) * self.max_model_len
        budget = kv_cache_memory if kv_cache_memory is not None else _default_kv_budget(self.device)
        self.num_slots = min(max_num_seqs, budget // per_slot)
        if self.num_slots < 1:
            raise ValueError(f"one sequence of {self.max_model_len} tokens needs {per_slot / 2**30:.2f} GiB of KV cache "
                             f"but the budget is {budget / 2**30:.2f} GiB; lower max_model_len or raise kv_cache_memory")
        self.cache = SlotCache(cfg, self.num_slots, self.max_model_len, self.device, self.dtype)
        self.max_prefill_tokens = max_prefill_tokens
        self.defaults = dict(defaults) if defaults is not None else generation_defaults({})
        eos = eos_token_ids if eos_token_ids is not None else _as_list(cfg.eos_token_id)
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            eos = list(eos) + [tokenizer.eos_token_id]
        self.eos_token_ids = frozenset(i for i in eos if i is not None)

        self.lengths = [0] * self.num_slots  # tokens in each slot's cache
        self.slots: list[Request | None] = [None] * self.num_slots
        self.waiting: deque[Request] = deque()
        self.pending: queue.SimpleQueue[Request] = queue.SimpleQueue()  # add_request may run on any thread
        V = cfg.vocab_size
        self.seen = torch.zeros(self.num_slots, V, dtype=torch.bool, device=self.device)  # for repetition penalty
        self._token_text: dict[int, str] = {}
        # static decode inputs/outputs: CUDA graphs read and write these exact buffers
        self.tokens_buf = torch.zeros(self.num_slots, dtype=torch.long, device=self.device)
        self.lengths_buf = torch.zeros(self.num_slots, dtype=torch.long, device=self.device)
        self.logits_buf = torch.zeros(self.num_slots, V, dtype=self.dtype, device=self.device)
        self.greedy_buf = torch.zeros(self.num_slots, dtype=torch.long, device=self.device)  # argmax of logits_buf
        self.use_graphs = self.device.type == "cuda" if cuda_graphs is None else bool(cuda_graphs)
        if self.use_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs the model on a CUDA device")
        self.bucket_shapes = self.use_graphs  # pad decode to (batch, KV-length) buckets: one graph per bucket
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._graph_pool = None
        # the fused decode step (fast.py): by default wherever CUDA graphs run, compiled on CUDA, eager elsewhere
        self.fast = None
        if fast_decode if fast_decode is not None else self.use_graphs:
            from smollm3.infer.fast import FastDecode

            self.fast = FastDecode(model, self.cache, compile=self.device.type == "cuda", gemv=gemv,
                                   kernels=decode_kernels)
        # pipelined greedy decode (_decode_async): step n+1 is launched before step n's tokens are read, the tokens
        # staying on the device in between, so the host's bookkeeping overlaps the GPU's work
        self.async_decode = self.fast is not None
        self._inflight = None  # (requests, host buffer, event) of a launched decode step whose tokens are unread
        self._on_device = False  # tokens_buf / lengths_buf already hold the next step's inputs (set by the step)
        pin = self.device.type == "cuda"
        self._host_ids = [torch.zeros(self.num_slots, dtype=torch.long, pin_memory=pin) for _ in range(2)]
        self._host_turn = 0
        self.stats = {"requests": 0, "finished": 0, "aborted": 0, "prompt_tokens": 0, "generated_tokens": 0,
                      "prefill_steps": 0, "decode_steps": 0}

    # ------------------------------------------------------------------------------------------------------------
    # requests

    def add_request(self, prompt_ids: list[int], params: SamplingParams | None = None, *, request_id: str | None = None,
                    constraint: ToolCallConstraint | None = None,
                    on_update: Callable[[Request], None] | None = None) -> Request:
        """Queue a request (thread-safe). Raises ValueError for a prompt or parameters the engine cannot serve."""
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids:
            raise ValueError("the prompt is empty; give at least one token")
        if min(prompt_ids) < 0 or max(prompt_ids) >= self.config.vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {self.config.vocab_size})")
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; this engine's context is {self.max_model_len} "
                             "(prompt plus at least one new token)")
        params = (params or SamplingParams()).resolve(self.defaults)
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        if constraint is not None and self.tokenizer is None:
            raise ValueError("constrained decoding needs a tokenizer")
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_token_ids))
        req = Request(prompt_ids, params, id=request_id or f"req-{next(_ids)}", constraint=constraint,
                      on_update=on_update, _stop_ids=frozenset(stop_ids))
        if params.seed is not None:
            req._generator = torch.Generator(device=self.device).manual_seed(params.seed)
        if self.tokenizer is not None:
            req._detok = IncrementalDetokenizer(self.tokenizer)
        self.stats["requests"] += 1
        self.pending.put(req)
        return req

    def abort(self, req: Request):
        req.aborted = True  # picked up at the next step, on the engine's thread

    def has_work(self) -> bool:
        return bool(self.waiting) or any(self.slots) or not self.pending.empty()

    @property
    def num_running(self) -> int:
        return sum(r is not None for r in self.slots)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + self.pending.qsize()

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None,
                 ) -> list[Request]:
        """Run prompts (token ids) to completion, all batched together; returns the finished requests in order."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        reqs = [self.add_request(p, sp) for p, sp in zip(prompts, plist)]
        while not all(r.finished for r in reqs):
            self.step()
        return reqs

    # ------------------------------------------------------------------------------------------------------------
    # one step

    @torch.no_grad()
    def step(self) -> None:
        while True:
            try:
                self.waiting.append(self.pending.get_nowait())
            except queue.Empty:
                break
        for r in [r for r in self.waiting if r.aborted]:
            self.waiting.remove(r)
            self._finish(r, "abort")
        for r in [r for r in self.slots if r is not None and r.aborted]:
            self._finish(r, "abort")
        free = [i for i, r in enumerate(self.slots) if r is None]
        if self.waiting and free:
            self._flush()
            self._prefill(free)
        elif any(self.slots):
            self._decode()
        else:
            self._flush()

    def fail_all(self, message: str):
        """Finish every request with an error (after an exception inside a step), leaving the engine usable."""
        for r in list(self.waiting) + [r for r in self.slots if r is not None]:
            r.error = message
            self._finish(r, "error")
        self.waiting.clear()
        self._inflight, self._on_device = None, False

    def _prefill(self, free: list[int]):
        batch: list[Request] = []
        longest = 0
        while self.waiting and len(batch) < len(free):
            n = len(self.waiting[0].prompt_ids)
            if batch and (len(batch) + 1) * max(longest, n) > self.max_prefill_tokens:
                break
            batch.append(self.waiting.popleft())
            longest = max(longest, n)
        B, T = len(batch), longest
        ids = torch.zeros(B, T, dtype=torch.long)
        for i, r in enumerate(batch):
            r.slot = free[i]
            self.slots[r.slot] = r
            ids[i, :len(r.prompt_ids)] = torch.tensor(r.prompt_ids)
        slots = torch.tensor([r.slot for r in batch], device=self.device)
        lens = torch.tensor([len(r.prompt_ids) for r in batch], device=self.device)
        ids = ids.to(self.device)
        self.cache.plan_prefill(slots)
        hidden = self.model.model(ids, torch.arange(T, device=self.device).expand(B, T), self.cache,
                                  self.model.attn_backend)
        logits = self.model.lm_head(hidden[torch.arange(B, device=self.device), lens - 1])
        for r in batch:
            self.lengths[r.slot] = len(r.prompt_ids)
            self.stats["prompt_tokens"] += len(r.prompt_ids)
            if r.params.repetition_penalty != 1:  # only penalised requests keep their row of `seen` current
                self.seen[r.slot] = False
                self.seen[r.slot, torch.tensor(r.prompt_ids, device=self.device)] = True
        self.stats["prefill_steps"] += 1
        self._on_device = False
        self._sample(batch, logits)

    def _shape(self, active: list[Request]) -> tuple[int, int]:
        b = max(r.slot for r in active) + 1
        kv_len = max(self.lengths[r.slot] for r in active) + 1
        if self.bucket_shapes:
            b = next(s for s in _buckets(self.num_slots) if s >= b)
            kv_len = min(self.max_model_len, max(256, 1 << (kv_len - 1).bit_length()))
        return b, kv_len

    def _upload(self, b: int):
        tokens = [r.output_ids[-1] if r is not None else 0 for r in self.slots[:b]]
        lengths = [self.lengths[i] if r is not None else 0 for i, r in enumerate(self.slots[:b])]
        self.tokens_buf[:b].copy_(torch.tensor(tokens))
        self.lengths_buf[:b].copy_(torch.tensor(lengths))

    def _launch(self, b: int, kv_len: int, active: list[Request]):
        if self.use_graphs:
            self._graph(b, kv_len).replay()
        else:
            self._decode_forward(b, kv_len)
        for r in active:
            self.lengths[r.slot] += 1
        self.stats["decode_steps"] += 1

    def _decode(self):
        active = [r for r in self.slots if r is not None]
        if self.async_decode and all(r.params.temperature == 0 and r.constraint is None
                                     and r.params.repetition_penalty == 1 for r in active):
            return self._decode_async()
        self._flush()
        active = [r for r in self.slots if r is not None]
        if not active:
            return
        b, kv_len = self._shape(active)
        self._upload(b)
        self._launch(b, kv_len, active)
        self._on_device = False
        rows = torch.tensor([r.slot for r in active], device=self.device)
        self._sample(active, self.logits_buf[rows], self.greedy_buf[rows] if self.fast is not None else None)

    def _decode_async(self):
        """Greedy decode, one step ahead: launch step n+1 (its tokens are step n's device argmax, already in
        tokens_buf), then read step n's tokens while the GPU runs. A request that finishes at step n has had step
        n+1 computed for nothing: its token is dropped and its slot's cache rows are rewritten by the next prefill.
        Whenever the running set changes (prefill, finish, abort, a sampled step) the host's tokens and lengths are
        uploaded again first."""
        if not self._on_device:
            self._flush()
        active = [r for r in self.slots if r is not None]
        if not active:
            return
        b, kv_len = self._shape(active)
        if not self._on_device:
            self._upload(b)
            self._on_device = True
        self._launch(b, kv_len, active)
        host = self._host_ids[self._host_turn]
        self._host_turn ^= 1
        host[:b].copy_(self.greedy_buf[:b], non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        previous, self._inflight = self._inflight, (active, host, event)
        if previous is not None:
            self._read(previous)

    def _read(self, inflight):
        reqs, host, event = inflight
        if event is not None:
            event.synchronize()
        ids = host.tolist()
        now = time.perf_counter()
        for r in reqs:
            if not r.finished:  # finished since the launch (a stop, a length, an abort): the token is dropped
                self._append(r, ids[r.slot], now)

    def _flush(self):
        """Read the tokens of a launched, unread decode step (the host is up to date afterwards)."""
        if self._inflight is not None:
            previous, self._inflight = self._inflight, None
            self._read(previous)

    def _decode_forward(self, b: int, kv_len: int):
        """Everything a decode step runs on the GPU, reading and writing only the static buffers."""
        if self.fast is not None:
            logits, greedy = self.fast.run(self.tokens_buf[:b], self.lengths_buf[:b], kv_len)
            self.logits_buf[:b] = logits
            self.greedy_buf[:b] = greedy
            # the next step's inputs, for _decode_async: this step's argmax, one more cached token per used row
            # (unused rows have length 0 and stay there; other paths upload both buffers before each step)
            self.tokens_buf[:b] = greedy
            self.lengths_buf[:b] += (self.lengths_buf[:b] > 0).long()
            return
        self.cache.plan_decode(self.lengths_buf[:b], kv_len)
        hidden = self.model.model(self.tokens_buf[:b, None], self.lengths_buf[:b, None], self.cache,
                                  self.model.attn_backend)
        self.logits_buf[:b] = self.model.lm_head(hidden[:, -1])

    def _graph(self, b: int, kv_len: int) -> torch.cuda.CUDAGraph:
        g = self._graphs.get((b, kv_len))
        if g is None:
            # warm up on a side stream (allocator and cuBLAS workspaces, Triton GEMV tuning), then capture.
            # Re-running the step is harmless: it rewrites the same K/V at the same positions from the same inputs;
            # the inputs it advances in place for the next step (tokens, lengths) are put back before the capture.
            inputs = self.tokens_buf[:b].clone(), self.lengths_buf[:b].clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._decode_forward(b, kv_len)
            torch.cuda.current_stream().wait_stream(stream)
            self.tokens_buf[:b].copy_(inputs[0])
            self.lengths_buf[:b].copy_(inputs[1])
            g = torch.cuda.CUDAGraph()
            # thread_local: the server's threads may touch CUDA state (e.g. seeding a generator) meanwhile
            with torch.cuda.graph(g, pool=self._graph_pool, capture_error_mode="thread_local"):
                self._decode_forward(b, kv_len)
            self._graph_pool = g.pool()  # one memory pool for all graphs: they never run at the same time
            self._graphs[(b, kv_len)] = g
        return g

    # ------------------------------------------------------------------------------------------------------------
    # sampling and bookkeeping

    def _sample(self, reqs: list[Request], logits: torch.Tensor, greedy_ids: torch.Tensor | None = None):
        params = [r.params for r in reqs]
        penalised = any(p.repetition_penalty != 1 for p in params)
        if greedy_ids is not None and not penalised and all(p.temperature == 0 and r.constraint is None
                                                            for p, r in zip(params, reqs)):
            # all greedy: the argmax was taken on the device inside the decode step; one small copy to the host
            now = time.perf_counter()
            for r, t in zip(reqs, greedy_ids.tolist()):
                self._append(r, t, now)
            return
        seen = self.seen[torch.tensor([r.slot for r in reqs], device=self.device)] if penalised else None
        scores = sampling_scores(logits, params, [r._generator for r in reqs], seen)
        tokens = scores.argmax(-1).tolist()
        for i, r in enumerate(reqs):
            if r.constraint is not None:
                tokens[i] = self._constrained_choice(r, scores[i])
        if penalised:
            rows = [i for i, p in enumerate(params) if p.repetition_penalty != 1]
            self.seen[torch.tensor([reqs[i].slot for i in rows], device=self.device),
                      torch.tensor([tokens[i] for i in rows], device=self.device)] = True
        now = time.perf_counter()
        for r, t in zip(reqs, tokens):
            self._append(r, t, now)

    def _constrained_choice(self, r: Request, scores: torch.Tensor) -> int:
        """The best-scoring token that keeps the output inside the request's grammar."""
        top = scores.topk(min(256, scores.shape[-1]))
        ranked = [i for v, i in zip(top.values.tolist(), top.indices.tolist()) if v != float("-inf")]
        i = r.constraint.first_accepted((i, self.token_text(i)) for i in ranked)
        if i is None:  # outside the sampling filters, if it must be
            ranked = scores.argsort(descending=True).tolist()
            i = r.constraint.first_accepted((i, self.token_text(i)) for i in ranked)
        if i is None:
            raise RuntimeError("no token continues the tool-call grammar")
        return i

    def token_text(self, i: int) -> str:
        text = self._token_text.get(i)
        if text is None:
            text = self._token_text[i] = self.tokenizer.decode([i])
        return text

    def _append(self, r: Request, token: int, now: float):
        r.output_ids.append(token)
        self.stats["generated_tokens"] += 1
        if r.first_token_time is None:
            r.first_token_time = now
        p = r.params
        reason = None
        if token in r._stop_ids:
            reason, r.stop_reason = "stop", token
        else:
            if r.constraint is not None:
                r.constraint.advance(self.token_text(token))
                if r.constraint.done:
                    reason = "stop"
            if r._detok is not None:
                start = max(0, len(r.text) - max((len(s) for s in p.stop), default=0))
                r.text += r._detok.push(token)
                found = [(at, s) for s in p.stop if (at := r.text.find(s, start)) >= 0]
                if found:  # the earliest stop string wins
                    at, s = min(found)
                    r.text, reason, r.stop_reason = r.text[:at], "stop", s
                if reason is None and p.stop:  # hold back what might be the start of a stop string
                    r.stable_len = max(r.stable_len, len(r.text) - max(len(s) for s in p.stop) + 1)
                elif reason is None:
                    r.stable_len = len(r.text)
        if reason is None and len(r.output_ids) >= p.max_tokens:
            reason = "length"
        if reason is None and len(r.prompt_ids) + len(r.output_ids) >= self.max_model_len:
            reason = "length"
        if reason is not None:
            self._finish(r, reason)
        elif r.on_update is not None:
            r.on_update(r)

    def _finish(self, r: Request, reason: str):
        if r._detok is not None and not isinstance(r.stop_reason, str):  # a cut stop string stays cut
            r.text += r._detok.flush()
        r.finish_reason, r.finish_time = reason, time.perf_counter()
        r.stable_len = len(r.text)
        if r.slot is not None:
            self._on_device = False
            self.slots[r.slot] = None
            self.lengths[r.slot] = 0
            r.slot = None
        self.stats["finished"] += 1
        if reason == "abort":
            self.stats["aborted"] += 1
        if r.on_update is not None:
            r.on_update(r)


def _buckets(n: int) -> list[int]:
    """Decode batch sizes with their own CUDA graph: powers of two, then n itself."""
    out, b = [], 1
    while b < n:
        out.append(b)
        b *= 2
    return out + [n]


def _default_kv_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)  # the rest: prefill activations, CUDA graphs, sampling
    return 4 * 2**30


def _as_list(x) -> list:
    return x if isinstance(x, list) else [x]


class BackgroundEngine:
    """Runs an Engine's steps on a daemon thread whenever there is work: servers submit from their own threads and
    receive tokens through each request's on_update (called on the engine's thread)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._wake = threading.Event()
        self._stop = False
        self.last_error: str | None = None
        self.thread = threading.Thread(target=self._loop, name="smollm3-engine", daemon=True)
        self.thread.start()

    def submit(self, prompt_ids, params=None, **kw) -> Request:
        req = self.engine.add_request(prompt_ids, params, **kw)
        self._wake.set()
        return req

    def abort(self, req: Request):
        self.engine.abort(req)
        self._wake.set()

    def close(self):
        self._stop = True
        self._wake.set()
        self.thread.join(timeout=10)

    def _loop(self):
        while not self._stop:
            if not self.engine.has_work():
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                self.engine.step()
            except Exception as e:  # noqa: BLE001 (a failing step fails its requests, never the server)
                self.last_error = "".join(traceback.format_exception_only(type(e), e)).strip()
                traceback.print_exc()
                self.engine.fail_all(f"engine error: {self.last_error}")
