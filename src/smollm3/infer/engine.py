"""The inference engine: continuous batching over a paged KV cache, with prefix caching, chunked prefill and
CUDA-graph decode.

Split as nano-vllm splits it: sequence.py (a request's state), block_manager.py (KV blocks and the prefix cache),
scheduler.py (what runs each step: decodes, prompt chunks, admission, preemption), model_runner.py (the forward
passes and CUDA graphs), and this file: requests in, one `step()` at a time, tokens out (sampling, stops,
detokenising, streaming callbacks). Loading a model directory into an engine, and the offline `LLM` API, are in
llm.py.

Each step decodes one token for every running request past its prompt and prefills prompt chunks within the
step's token budget. Greedy decode with the fused step is pipelined: step n+1 is launched before step n's tokens
are read (they stay on the device in between), so the host's bookkeeping overlaps the GPU's work; whenever the set
of decoding requests changes, the host's state is brought up to date first.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable

import torch

from smollm3.infer.block_manager import BlockManager
from smollm3.infer.cache import kv_bytes_per_token
from smollm3.infer.constrain import ToolCallConstraint
from smollm3.infer.metrics import Histogram
from smollm3.infer.model_runner import ModelRunner
from smollm3.infer.sampling import (SamplingParams, generation_defaults, plain_greedy, sampling_scores, stop_token_ids,
                                    token_logprobs)
from smollm3.infer.scheduler import Scheduler
from smollm3.infer.sequence import IncrementalDetokenizer, Request, new_request_id
from smollm3.model import SmolLM3ForCausalLM
from smollm3.ops.prefill_attention import scratch_bytes

__all__ = ["BackgroundEngine", "Engine", "IncrementalDetokenizer", "Request"]


class Engine:
    """`Engine(model, tokenizer)`: `add_request` (any thread), `step()`, `abort`, `generate`.

    Memory: the KV cache is `kv_cache_memory` bytes if given, else on CUDA what `gpu_memory_utilization` of the
    card leaves after the weights, the other tensors already allocated and a reserve for prefill activations (as
    vLLM's flag), else 4 GiB. It must hold at least one `max_model_len` sequence. `max_num_seqs` bounds the
    requests running at once, `max_num_batched_tokens` the tokens computed per step (decodes plus prompt chunks),
    `max_prefill_tokens_during_decode` (default: no cap) the prompt work of a step in which streams decode, in
    tokens of a fresh prompt (a token deeper in a prompt also attends to more keys, and counts more: scheduler.py).
    `prefill_kernel`: prompt chunks attend in one Triton kernel per layer (ops/prefill_attention.py) rather than
    chunk by chunk in torch ops; default: on where it runs (CUDA, bf16/fp16). `invariant_prefill` (CUDA): every
    prompt token's K/V and logits are the same bits whatever else its step holds, so greedy outputs are the same
    with and without the prefix cache, however prompts are chunked (infer/fast_prefill.py), at some prefill speed.
    `max_prefill_layers_during_decode` (default: all; needs the fused step): a prompt step begun while streams decode
    runs this many decoder layers per engine step, the rest in the next steps, each after that step's decode. Deep in
    a long prompt a step costs about the same at any token count (every weight read once more, the attention over
    all the keys before), so fewer tokens a step do not shorten the streams' gap much; fewer layers do, by the
    fraction of the step they leave out. The prompt's bits are the same however its step is divided, and no new
    prompt work starts until it ends."""

    def __init__(self, model: SmolLM3ForCausalLM, tokenizer=None, *, max_num_seqs: int = 256,
                 max_model_len: int | None = None, kv_cache_memory: int | None = None,
                 gpu_memory_utilization: float = 0.9, block_size: int = 64, max_num_batched_tokens: int = 2048,
                 prefix_caching: bool = True, cuda_graphs: bool | None = None, defaults: dict | None = None,
                 eos_token_ids: list[int] | None = None, fast_decode: bool | None = None, gemv: bool | None = None,
                 decode_kernels: bool | None = None, max_prefill_tokens_during_decode: int | None = None,
                 prefill_kernel: bool | None = None, invariant_prefill: bool = False,
                 max_prefill_layers_during_decode: int | None = None):
        cfg = model.config
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, cfg
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.max_model_len = max_model_len or cfg.max_position_embeddings
        if self.max_model_len > cfg.max_position_embeddings:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the model's {cfg.max_position_embeddings} "
                             "positions; load with extend_context() (YaRN) first")
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size}")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1, got {max_num_seqs}")
        max_num_batched_tokens = max(max_num_batched_tokens, max_num_seqs)
        per_block = kv_bytes_per_token(cfg, self.dtype) * block_size
        budget = kv_cache_memory if kv_cache_memory is not None else _default_kv_budget(
            model, gpu_memory_utilization, max_num_batched_tokens, self.max_model_len)
        num_blocks = max(0, budget // per_block - 1)  # one block more is the runner's scratch block
        # more than max_num_seqs sequences at full length could never be used at once
        num_blocks = min(num_blocks, max_num_seqs * -(-self.max_model_len // block_size))
        if num_blocks * block_size < self.max_model_len:
            raise ValueError(f"the KV cache budget ({budget / 2**30:.2f} GiB) holds {num_blocks * block_size} tokens, "
                             f"less than one sequence of max_model_len {self.max_model_len} "
                             f"({per_block / block_size * self.max_model_len / 2**30:.2f} GiB); lower max_model_len, "
                             "or raise gpu_memory_utilization / kv_cache_memory")
        self.blocks = BlockManager(num_blocks, block_size, prefix_caching)
        self.scheduler = Scheduler(self.blocks, max_num_seqs, max_num_batched_tokens, max_prefill_tokens_during_decode,
                                   cfg.attention_break_even())
        self.runner = ModelRunner(model, num_blocks, block_size, max_num_seqs, self.max_model_len,
                                  max_num_batched_tokens, cuda_graphs=cuda_graphs, fast_decode=fast_decode, gemv=gemv,
                                  decode_kernels=decode_kernels, prefill_kernel=prefill_kernel,
                                  invariant_prefill=invariant_prefill)
        self.max_num_seqs, self.max_num_batched_tokens, self.block_size = max_num_seqs, max_num_batched_tokens, \
            block_size
        layers = max_prefill_layers_during_decode
        if layers is not None and layers < 1:
            raise ValueError(f"max_prefill_layers_during_decode must be at least 1, got {layers}")
        if layers is not None and layers < cfg.num_hidden_layers and self.runner.fast_prefill is None:
            raise ValueError("max_prefill_layers_during_decode (--max-prefill-layers-during-decode) runs a prompt step "
                             "a few layers at a time on the fused step (fast_decode, on by default on CUDA): leave it "
                             "off here")
        self.max_prefill_layers_during_decode = layers if layers is not None and layers < cfg.num_hidden_layers \
            else None
        self._prompt = None  # a prompt step begun, its layers not all run: [(request, tokens, epoch, samples)]
        self.kv_cache_tokens = num_blocks * block_size
        self.defaults = dict(defaults) if defaults is not None else generation_defaults({})
        # eos_token_ids (default: config.json's eos), and the tokenizer's eos token whatever they list
        given = {} if eos_token_ids is None else {"eos_token_id": list(eos_token_ids)}
        self.eos_token_ids = frozenset(stop_token_ids(cfg, tokenizer, given))
        self.pending: queue.SimpleQueue[Request] = queue.SimpleQueue()  # add_request may run on any thread
        self._token_text: dict[int, str] = {}
        # pipelined greedy decode: the requests whose next inputs the device holds (rows in this order), and the
        # launched step whose tokens are unread
        self.async_decode = self.runner.fast is not None
        self._rows: list[Request] | None = None
        self._inflight = None  # (requests, host buffer, event)
        pin = self.device.type == "cuda"
        self._host_ids = [torch.zeros(max_num_seqs, dtype=torch.long, pin_memory=pin) for _ in range(2)]
        self._host_turn = 0
        self.stats = {"requests": 0, "finished": 0, "aborted": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0,
                      "generated_tokens": 0, "prefill_steps": 0, "decode_steps": 0, "preemptions": 0,
                      "max_running": 0}  # the most requests running at once

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
        if params.logit_bias and max(params.logit_bias) >= self.config.vocab_size:  # else an index error in step()
            raise ValueError(f"logit_bias token ids must be in [0, {self.config.vocab_size})")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        if constraint is not None and self.tokenizer is None:
            raise ValueError("constrained decoding needs a tokenizer")
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_token_ids))
        req = Request(prompt_ids, params, id=request_id or new_request_id(), constraint=constraint,
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

    def warm_up(self) -> tuple[int, int]:
        """Before the first request, make every shape a step can take ready, so that no request waits for one (a
        server does this at start, as vLLM's does): compile and capture the CUDA graph of the decode step for every
        (batch, KV-length) bucket, and run the prefill at every padded length (its kernels loaded). Where graphs and
        padding are off (the CPU), nothing. -> (graphs captured, prefill lengths run)."""
        if self.has_work():
            raise RuntimeError("warm_up runs before the first request (a warm-up step would write K/V)")
        return self.runner.capture_graphs(), self.runner.warm_prefill()

    def has_work(self) -> bool:
        return bool(self.scheduler.waiting) or bool(self.scheduler.running) or not self.pending.empty()

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting) + self.pending.qsize()

    @property
    def num_free_blocks(self) -> int:
        return self.blocks.num_free

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
                self.scheduler.waiting.append(self.pending.get_nowait())
            except queue.Empty:
                break
        gone = [r for r in [*self.scheduler.waiting, *self.scheduler.running] if r.aborted]
        if gone:
            self._end_prompt(gone)  # its rest launched before any of the blocks it writes can change hands
            self._flush()
            for r in gone:
                if not r.finished:
                    self._finish(r, "abort")
        plan = self.scheduler.schedule(frozenset(c[0] for c in self._prompt or ()))
        if not plan.decode:  # nobody waits for it
            self._end_prompt()
        elif plan.preempted:  # their blocks change hands in this step's decode
            self._end_prompt(plan.preempted)
        self.stats["preemptions"] += len(plan.preempted)
        self.stats["max_running"] = max(self.stats["max_running"], len(self.scheduler.running))
        pipelined = (self._rows is not None and plan.decode == self._rows and not plan.prefill
                     and not plan.preempted)
        if not pipelined:  # the host's view of every request must be current before anything else runs
            self._flush()
            self._rows = None
            plan.decode = [r for r in plan.decode if not r.finished]
        if plan.decode:
            self._decode(plan.decode, pipelined)
        if plan.prefill:
            self._prefill(plan.prefill, split=bool(plan.decode))
        elif self._prompt is not None:
            self._resume_prompt(self.max_prefill_layers_during_decode)
        if not plan.decode and not plan.prefill:
            self._flush()

    def fail_all(self, message: str):
        """Finish every request with an error (after an exception inside a step), leaving the engine usable."""
        self._inflight, self._rows, self._prompt = None, None, None
        for r in [*self.scheduler.waiting, *self.scheduler.running]:
            r.error = message
            self._finish(r, "error")

    def _prefill(self, chunks: list[tuple[Request, int]], split: bool):
        """A prompt step: whole, or (split, with max_prefill_layers_during_decode) its first layers now and the
        rest in the next steps (_resume_prompt)."""
        self._prompt = [(r, n, r.num_preemptions, r.num_computed + n == r.num_tokens) for r, n in chunks]
        if split and self.max_prefill_layers_during_decode is not None:
            self.runner.begin_prefill(chunks)
            self._resume_prompt(self.max_prefill_layers_during_decode)
        else:
            self._prompt_done(self.runner.prefill(chunks))

    def _resume_prompt(self, layers: int | None):
        """Run the begun prompt step's next `layers` layers (None: all that are left)."""
        logits = self.runner.resume_prefill(layers or self.config.num_hidden_layers)
        if logits is not None:
            self._prompt_done(logits)

    def _end_prompt(self, leaving: list[Request] | None = None):
        """Launch the rest of a begun prompt step now (if any of `leaving`, requests whose blocks are about to go
        back to the pool, is in it; None: in any case)."""
        if self._prompt is not None and (leaving is None or any(c[0] in leaving for c in self._prompt)):
            self._resume_prompt(None)

    def _prompt_done(self, logits: torch.Tensor):
        """The prompt step's K/V are written (or launched): its requests advance; those whose prompt it finished
        sample from `logits` (a row each, in chunk order). A request preempted or aborted while the step ran is
        left as it is now (a preempted one recomputes its prompt)."""
        chunks, self._prompt = self._prompt, None
        done, rows, row = [], [], 0
        for r, n, epoch, samples in chunks:
            if r.num_preemptions == epoch and not r.aborted and not r.finished:
                r.num_computed += n
                self._register(r)
                if samples:
                    done.append(r)
                    rows.append(row)
                    if not r.output_ids:  # the prompt done for the first time (a preempted request may redo it)
                        self.stats["prompt_tokens"] += len(r.prompt_ids)
                        self.stats["cached_prompt_tokens"] += r.num_cached_tokens
            row += samples
        self.stats["prefill_steps"] += 1
        if done:
            self._sample(done, logits if len(rows) == len(logits) else logits[rows])

    def _decode(self, reqs: list[Request], pipelined: bool):
        runner = self.runner
        b, kv_len = runner.shape(reqs)
        # plain_greedy: no penalties, bias or logprobs (the pipelined path never sees the logits)
        greedy = self.async_decode and all(plain_greedy(r.params) and r.constraint is None for r in reqs)
        runner.upload(reqs, b, kv_len, tokens=not pipelined)  # pipelined: the device holds tokens and lengths
        runner.launch(b, kv_len)
        for r in reqs:
            r.num_computed += 1
        self.stats["decode_steps"] += 1
        n = len(reqs)
        if not greedy:
            self._rows = None
            for r in reqs:
                self._register(r)
            self._sample(reqs, runner.logits_buf[:n], runner.greedy_buf[:n] if runner.fast is not None else None)
            return
        # pipelined: the device's tokens and lengths are now the next step's inputs for these rows
        self._rows = list(reqs)
        host = self._host_ids[self._host_turn]
        self._host_turn ^= 1
        host[:n].copy_(runner.greedy_buf[:n], non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        previous, self._inflight = self._inflight, (list(reqs), host, event)
        if previous is not None:
            self._read(previous)

    def _read(self, inflight):
        reqs, host, event = inflight
        if event is not None:
            event.synchronize()
        ids = host[:len(reqs)].tolist()
        now = time.perf_counter()
        for r, t in zip(reqs, ids):
            if r.finished:  # finished since the launch (a stop, a length, an abort): the token is dropped
                continue
            self._register(r)  # before the token: if it ends the reply, r's blocks are released with it
            self._append(r, t, now)
            if not r.finished:
                self._register(r)

    def _flush(self):
        """Read the tokens of a launched, unread decode step (the host is up to date afterwards)."""
        if self._inflight is not None:
            previous, self._inflight = self._inflight, None
            self._read(previous)

    def _register(self, r: Request):
        """Offer r's newly completed blocks to the prefix cache (K/V written and token ids known)."""
        self.blocks.register(r.block_table, r.block_keys, r.tokens, min(r.num_computed, r.num_tokens))

    # ------------------------------------------------------------------------------------------------------------
    # sampling and bookkeeping

    def _sample(self, reqs: list[Request], logits: torch.Tensor, greedy_ids: torch.Tensor | None = None):
        params = [r.params for r in reqs]
        if greedy_ids is not None and all(plain_greedy(p) and r.constraint is None for p, r in zip(params, reqs)):
            # all greedy: the argmax was taken on the device inside the decode step; one small copy to the host
            now = time.perf_counter()
            for r, t in zip(reqs, greedy_ids.tolist()):
                self._append(r, t, now)
            return
        # penalties read each request's prompt and output ids
        scores = sampling_scores(logits, params, [r._generator for r in reqs], [r.prompt_ids for r in reqs],
                                 [r.output_ids for r in reqs])
        tokens = scores.argmax(-1).tolist()
        stuck = []  # a grammar with no way on fails its own request, not the batch
        for i, r in enumerate(reqs):
            if r.constraint is not None:
                try:
                    tokens[i] = self._constrained_choice(r, scores[i])
                except RuntimeError as e:
                    r.error = str(e)
                    stuck.append(r)
        if stuck:
            keep = [i for i, r in enumerate(reqs) if r not in stuck]
            for r in stuck:
                self._finish(r, "error")
            reqs, params, tokens, logits = ([reqs[i] for i in keep], [params[i] for i in keep],
                                            [tokens[i] for i in keep], logits[keep])
        # logprobs of the raw logits for the requests that asked (one batched log_softmax)
        want = [i for i, p in enumerate(params) if p.logprobs is not None]
        if want:
            rows = torch.tensor(want, device=logits.device)
            got = token_logprobs(logits[rows], [tokens[i] for i in want], [params[i].logprobs for i in want])
            for i, (lp, top) in zip(want, got):
                reqs[i].logprobs.append((tokens[i], lp, top))
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
            raise RuntimeError("no token continues the grammar of the constrained output (tool call or response_format)")
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
            if r._detok is not None and not p.stop:
                r.text += r._detok.push(token)
                r.stable_len = len(r.text)
            elif r._detok is not None:
                hold = max(map(len, p.stop))
                start = max(0, len(r.text) - hold)
                r.text += r._detok.push(token)
                found = [(at, s) for s in p.stop if (at := r.text.find(s, start)) >= 0]
                if found:  # the earliest stop string wins
                    at, s = min(found)
                    r.text, reason, r.stop_reason = r.text[:at], "stop", s
                else:  # hold back what might be the start of a stop string
                    r.stable_len = max(r.stable_len, len(r.text) - hold + 1)
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
        self.scheduler.finish(r)  # its blocks go back to the pool (computed full blocks stay in the prefix cache)
        if self._rows is not None and r in self._rows:
            self._rows = None
        self.stats["finished"] += 1
        if reason == "abort":
            self.stats["aborted"] += 1
        if r.on_update is not None:
            r.on_update(r)



def _default_kv_budget(model, utilization: float, max_num_batched_tokens: int, max_model_len: int) -> int:
    """Bytes for the KV cache: on CUDA, `utilization` of the card less what is allocated already (weights, other
    processes' memory) and a reserve for a prefill step's activations, its attention's split partials and the CUDA
    graphs; 4 GiB on CPU."""
    p = next(model.parameters())
    if p.device.type != "cuda":
        return 4 * 2**30
    free, total = torch.cuda.mem_get_info(p.device)
    cfg = model.config
    per_token = (6 * cfg.hidden_size + 4 * cfg.intermediate_size
                 + (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim) * p.element_size()
    reserve = max_num_batched_tokens * per_token + 2**30 + scratch_bytes(
        max_num_batched_tokens, max_model_len, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
    return max(0, int(utilization * total) - (total - free) - reserve)


class BackgroundEngine:
    """Runs an Engine's steps on a daemon thread whenever there is work: servers submit from their own threads and
    receive tokens through each request's on_update (called on the engine's thread)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._wake = threading.Event()
        self._stop = False
        self.last_error: str | None = None
        self.step_seconds = Histogram()  # each step's wall time on this thread: the streams' gap between tokens
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
                began = time.perf_counter()
                self.engine.step()
                self.step_seconds.observe(time.perf_counter() - began)
            except Exception as e:  # noqa: BLE001 (a failing step fails its requests, never the server)
                self.last_error = "".join(traceback.format_exception_only(type(e), e)).strip()
                traceback.print_exc()
                self.engine.fail_all(f"engine error: {self.last_error}")
