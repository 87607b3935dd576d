"""The OpenAI-compatible HTTP server: FastAPI routes over a BackgroundEngine.

    smollm3 serve --model DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY]

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (streamed as server-sent events),
GET /health, GET /metrics (Prometheus text). Tokens reach a request's asyncio queue from the engine thread; a
client that goes away mid-request has its request aborted, which frees its KV slot at the engine's next step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import ipaddress
import json
import secrets
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from smollm3.infer import openai_api as oa
from smollm3.infer import server_prep as prep
from smollm3.infer.engine import BackgroundEngine
from smollm3.infer.llm import build_engine
from smollm3.infer.metrics import GCPauses, freeze_heap
from smollm3.infer.openai_api import APIError
from smollm3.parsing import TOOL_CLOSE

MAX_BODY_BYTES = 8 * 2**20  # the default request body limit: a full 128k-token context of text fits with room


@dataclass
class ServerState:
    engine: BackgroundEngine
    tokenizer: object
    model_name: str
    chat_template: str  # a template name ("smollm3") or source (the model directory's chat_template.jinja)
    api_key: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES  # larger request bodies get a 413 before they are read
    # engine requests waiting for admission before new requests get a 429 (None: 4 x max_num_seqs)
    max_waiting: int | None = None
    created: int = field(default_factory=oa.now)
    http_errors: Counter = field(default_factory=Counter)
    gc_pauses: GCPauses | None = None  # the process's collections, timed where the server owns the process (serve)

    def __post_init__(self):
        self.outbox: Outbox | None = None  # bound to the event loop by the first request
        self.pieces = oa.TokenPieces(self.tokenizer)
        self.token_bytes = prep.max_token_bytes(self.tokenizer)
        if self.max_waiting is None:
            self.max_waiting = 4 * self.engine.engine.max_num_seqs

    @property
    def max_model_len(self) -> int:
        return self.engine.engine.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.engine.engine.config.vocab_size


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="smollm3", docs_url=None, redoc_url=None)
    app.state.smollm3 = state

    def error(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
        state.http_errors[status] += 1
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error(exc.status, exc.body(), {"Retry-After": "1"} if exc.status == 429 else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return error(exc.status_code, oa.error_body(str(exc.detail), "invalid_request_error"))

    @app.exception_handler(Exception)
    async def _server_error(request, exc: Exception):
        return error(500, oa.error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"))

    def check_auth(request: Request):
        if state.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(token.encode(), state.api_key.encode()):
            raise APIError(401, "Incorrect API key provided. Send it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")

    def too_large(size: str) -> APIError:
        return APIError(413, f"the request body is {size}; this server accepts at most {state.max_body_bytes} bytes "
                             "(serve --max-body-bytes)", code="request_too_large")

    async def json_body(request: Request) -> dict:
        """The body, read only up to max_body_bytes (Content-Length is checked before reading; a chunked upload is
        cut off as soon as it passes the limit), parsed and checked in a worker thread."""
        check_auth(request)
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise APIError(400, f"invalid Content-Length {length[:40]!r}")
            if int(length) > state.max_body_bytes:
                raise too_large(f"{int(length)} bytes")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > state.max_body_bytes:
                    raise too_large(f"over {state.max_body_bytes} bytes")
                chunks.append(chunk)
        except ClientDisconnect:  # gone mid-upload: nobody reads the answer, but it is no server error
            raise APIError(400, "the client disconnected before sending the whole body") from None
        body = await asyncio.to_thread(prep.parse_body, b"".join(chunks))
        model = body.get("model")
        if model is not None and model != state.model_name:
            raise APIError(404, f"The model '{model}' does not exist; this server serves '{state.model_name}'.",
                           param="model", code="model_not_found")
        return body

    def check_capacity(jobs: int = 0, param: str = "n"):
        """Backpressure: with max_waiting engine requests already queued for admission, a new request gets a 429 (and
        Retry-After) at once instead of an unbounded wait. One request may not queue more than the limit by itself
        (n x best_of x prompts): that is a 400, retrying would not help."""
        most = max(state.max_waiting, 64)
        if jobs > most:
            raise APIError(400, f"this request asks for {jobs} generations (prompts x best_of or n); this server "
                                f"queues at most {most} for one request", param=param)
        waiting = state.engine.engine.num_waiting
        if waiting >= state.max_waiting:
            raise APIError(429, f"the server is at capacity ({waiting} requests waiting); retry shortly",
                           type="requests", code="rate_limit_exceeded")

    # ---- plain endpoints

    @app.get("/health")
    async def health():
        alive = state.engine.thread.is_alive()
        e = state.engine.engine
        return JSONResponse({"status": "ok" if alive else "engine stopped", "running": e.num_running,
                             "waiting": e.num_waiting, "max_num_seqs": e.max_num_seqs,
                             "kv_blocks_total": e.blocks.num_blocks, "kv_blocks_free": e.num_free_blocks,
                             "kv_block_size": e.block_size}, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(prometheus_text(state), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.created,
                                            "owned_by": "smollm3", "max_model_len": state.max_model_len}]}

    limits = {"max_model_len": state.max_model_len, "vocab_size": state.vocab_size, "token_bytes": state.token_bytes}

    # ---- completions

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await json_body(request)
        check_capacity()
        plan = await asyncio.to_thread(prep.prepare_completion, body, tokenizer=state.tokenizer, **limits)
        # again: the queue may have filled while this request was tokenized
        check_capacity(len(plan.jobs), "prompt" if len(plan.prompts) > 1 else "best_of" if plan.best_of > plan.n else "n")
        reqs, queue = submit(state, plan.jobs, seeded=len(plan.jobs) > len(plan.prompts))
        rid, created = oa.new_id("cmpl"), oa.now()
        prompt_tokens = sum(len(ids) for ids in plan.prompts)
        per = plan.best_of  # engine requests per prompt

        def echo_text(i):
            return state.tokenizer.decode(plan.jobs[i].ids) if plan.echo else ""

        def usage(completion_tokens=None):
            """The request's usage; `completion_tokens` (continuous usage): those the chunks have carried so far."""
            cached = sum(max(r.num_cached_tokens for r in reqs[k:k + per]) for k in range(0, len(reqs), per))
            done = sum(len(r.output_ids) for r in reqs) if completion_tokens is None else completion_tokens
            return oa.usage(prompt_tokens, done, cached)

        def logprobs_block(i, entries, offset):
            if plan.logprobs is None:
                return None
            return oa.completion_logprobs_block(entries, state.pieces, offset)

        if not plan.stream:
            await wait_all(state, request, reqs, queue)
            raise_if_failed(reqs)
            chosen = []  # (engine index) of the returned choices: the n best of each prompt's best_of
            for k in range(0, len(reqs), per):
                group = list(range(k, k + per))
                if per > plan.n:  # best_of: rank by cumulative logprob
                    group.sort(key=lambda i: -sum(lp for _, lp, _ in visible_logprobs(reqs[i])))
                chosen += group[:plan.n]
            choices = [{"index": j, "text": echo_text(i) + reqs[i].text,
                        "logprobs": logprobs_block(i, visible_logprobs(reqs[i]), len(echo_text(i))),
                        "finish_reason": oa.finish_reason(reqs[i].finish_reason, False)} for j, i in enumerate(chosen)]
            return {"id": rid, "object": "text_completion", "created": created, "model": state.model_name,
                    "choices": choices, "usage": usage()}

        sent = [0] * len(reqs)  # tokens each choice's chunks have carried (continuous usage)

        chunk = chunk_writer("text_completion", rid, created, state.model_name, plan, usage, sent)

        async def events():
            offsets = [0] * len(reqs)
            for i in range(len(reqs)):
                if plan.echo:
                    offsets[i] = len(echo_text(i))
                    yield chunk([{"index": i, "text": echo_text(i), "logprobs": None, "finish_reason": None}])
            async for i, delta, reason, entries, tokens in stream_updates(state, reqs, queue):
                if reason == "error":
                    yield sse(oa.error_body(reqs[i].error or "engine error", "server_error"))
                    continue
                if delta or reason or entries:
                    sent[i] = tokens
                    block = logprobs_block(i, entries, offsets[i])
                    offsets[i] += sum(len(t) for t in block["tokens"]) if block else 0
                    yield chunk([{"index": i, "text": delta, "logprobs": block,
                                  "finish_reason": oa.finish_reason(reason, False) if reason else None}])
            if plan.include_usage:
                yield chunk([], usage())
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    # ---- chat completions

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await json_body(request)
        check_capacity()
        plan = await asyncio.to_thread(prep.prepare_chat, body, tokenizer=state.tokenizer,
                                       template=state.chat_template, **limits)
        check_capacity(len(plan.jobs))
        reqs, queue = submit(state, plan.jobs, seeded=len(plan.jobs) > 1)
        rid, created = oa.new_id("chatcmpl"), oa.now()

        def usage(completion_tokens=None):
            """The request's usage; `completion_tokens` (continuous usage): those the chunks have carried so far."""
            done = sum(len(r.output_ids) for r in reqs) if completion_tokens is None else completion_tokens
            return oa.usage(plan.prompt_tokens, done, max(r.num_cached_tokens for r in reqs))

        def closing(r):  # parallel_tool_calls false stopped at the first </tool_call>: put it back for the parser
            return TOOL_CLOSE if plan.tool_stop and r.stop_reason == TOOL_CLOSE else ""

        def content(entries):
            return oa.chat_logprobs_content(entries, state.pieces) if plan.logprobs is not None else None

        if not plan.stream:
            await wait_all(state, request, reqs, queue)
            raise_if_failed(reqs)
            choices = [oa.chat_choice(i, r.text + closing(r), r.finish_reason, prefix=plan.prefix,
                                      xml_tools=plan.xml_tools, logprobs=content(visible_logprobs(r)),
                                      legacy=plan.legacy) for i, r in enumerate(reqs)]
            return {"id": rid, "object": "chat.completion", "created": created, "model": state.model_name,
                    "choices": choices, "usage": usage()}

        sent = [0] * len(reqs)  # tokens each choice's chunks have carried (continuous usage)

        chunk = chunk_writer("chat.completion.chunk", rid, created, state.model_name, plan, usage, sent)

        async def events():
            streams = [oa.ChatChoiceStream(i, prefix=plan.prefix, xml_tools=plan.xml_tools,
                                           logprobs=plan.logprobs is not None, legacy=plan.legacy)
                       for i in range(len(reqs))]
            for st in streams:
                yield chunk([st.start()])
            async for i, delta, reason, entries, tokens in stream_updates(state, reqs, queue):
                if reason == "error":
                    yield sse(oa.error_body(reqs[i].error or "engine error", "server_error"))
                    continue
                sent[i] = tokens  # a chunk that the parser holds back is carried by the next
                if reason:
                    delta += closing(reqs[i])
                for c in streams[i].feed(delta, reason, content(entries)):
                    yield chunk([c])
            if plan.include_usage:
                yield chunk([], usage())
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


# ------------------------------------------------------------------------------------------------------------------
# plumbing between asyncio and the engine thread


# JSON may hold these raw, but str.splitlines() ends a line at each (httpx's aiter_lines does): a model's text with
# one would cut an event in two for such clients. Control characters, the other such breaks, JSON escapes already.
_LINE_BREAKS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS)}\n\n"


def chunk_writer(obj: str, rid: str, created: int, model: str, plan, usage, sent: list):
    """`chunk(choices, totals=None)`: one SSE chunk of a streamed response. With `include_usage`, the usage is null
    but in the last chunk (`totals`), or, with continuous usage, every chunk's count so far (`sent`, per choice)."""
    def chunk(choices, totals=None):
        c = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices}
        if plan.include_usage:
            c["usage"] = usage(sum(sent)) if totals is None and plan.continuous_usage else totals
        return sse(c)
    return chunk


def visible_logprobs(r, start: int = 0) -> list:
    """The request's logprob entries from `start` that belong to its output text: a final stop token is not part
    of the reply, so its entry is left out (as OpenAI's logprobs stop at the last content token)."""
    entries = r.logprobs
    end = len(entries)
    if r.finished and isinstance(r.stop_reason, int) and end and entries[-1][0] == r.stop_reason:
        end -= 1
    return entries[start:end]


class Outbox:
    """Updates from the engine thread to the event loop's queues, with one wake-up of the loop per burst. A decode
    step hands a token to every running request in turn; waking the loop for each (a write to its self-pipe, and
    the GIL passed back and forth) took half the engine thread's time at 256 streams."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.items: deque = deque()
        self.lock = threading.Lock()
        self.scheduled = False  # a drain is queued on the loop and has not started yet

    def put(self, queue: asyncio.Queue, item):
        """Any thread. The item reaches `queue` at the loop's next drain, in order."""
        self.items.append((queue, item))
        with self.lock:
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the event loop is gone (shutdown)
            pass

    def _drain(self):
        with self.lock:  # from here on a put schedules the next drain, so nothing appended later is stranded
            self.scheduled = False
        while self.items:
            queue, item = self.items.popleft()
            queue.put_nowait(item)


def submit(state: ServerState, jobs, seeded: bool) -> tuple[list, asyncio.Queue]:
    """Queue one engine request per job; several with a seed get seed, seed+1, ... Updates reach the queue as
    (job index, new text, finish reason or None, new logprob entries, tokens generated so far)."""
    loop = asyncio.get_running_loop()
    if state.outbox is None or state.outbox.loop is not loop:
        state.outbox = Outbox(loop)
    outbox = state.outbox
    queue: asyncio.Queue = asyncio.Queue()
    reqs = []
    for i, job in enumerate(jobs):
        params = job.params
        if seeded and params.seed is not None:
            params = dataclasses.replace(params, seed=params.seed + i)
        sent = [0]  # logprob entries handed out

        def on_update(r, i=i, sent=sent):
            # taken on the engine thread, in order
            entries = visible_logprobs(r, sent[0]) if r.logprobs else []
            sent[0] += len(entries)
            outbox.put(queue, (i, r.take_delta(), r.finish_reason, entries, len(r.output_ids)))

        try:
            reqs.append(state.engine.submit(job.ids, params, constraint=job.constraint() if job.constraint else None,
                                            on_update=on_update))
        except ValueError as e:
            for r in reqs:
                state.engine.abort(r)
            raise APIError(400, str(e)) from None
    return reqs, queue


async def stream_updates(state: ServerState, reqs, queue: asyncio.Queue):
    """Yield (choice index, new text, finish reason or None, logprob entries, tokens generated so far) until every
    request finishes; abort the unfinished ones if the consumer stops early (client disconnect: the generator is
    closed or cancelled)."""
    left = len(reqs)
    try:
        while left:
            for update in coalesce([await queue.get(), *drain(queue)]):
                if update[2]:
                    left -= 1
                yield update
    finally:
        for r in reqs:
            if not r.finished:
                state.engine.abort(r)


def drain(queue: asyncio.Queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def coalesce(updates: list) -> list:
    """Consecutive updates of one choice as one (text joined, logprob entries joined, the last finish reason and
    token count): a
    stream that fell a few engine steps behind catches up in one chunk, not one chunk (and socket write) per token.
    An error update stays on its own."""
    out = []
    for u in updates:
        if out and out[-1][0] == u[0] and out[-1][2] is None and u[2] != "error":
            i, delta, _, entries, _ = out[-1]
            out[-1] = (i, delta + u[1], u[2], entries + u[3], u[4])
        else:
            out.append(u)
    return out


async def wait_all(state: ServerState, request: Request, reqs, queue: asyncio.Queue):
    """Wait for non-streamed requests, aborting them if the client disconnects meanwhile."""
    left = len(reqs)
    try:
        while left:
            try:
                reason = (await asyncio.wait_for(queue.get(), timeout=1.0))[2]
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            if reason:
                left -= 1
    finally:
        for r in reqs:
            if not r.finished:
                state.engine.abort(r)


def raise_if_failed(reqs):
    for r in reqs:
        if r.finish_reason == "error":
            raise APIError(500, r.error or "engine error", type="server_error")


def prometheus_text(state: ServerState) -> str:
    e = state.engine.engine
    s = e.stats
    rows = [
        ("smollm3_requests_total", "counter", "requests accepted by the engine", s["requests"]),
        ("smollm3_requests_finished_total", "counter", "requests finished (any reason)", s["finished"]),
        ("smollm3_requests_aborted_total", "counter", "requests aborted (client gone)", s["aborted"]),
        ("smollm3_requests_running", "gauge", "requests admitted (holding KV blocks)", e.num_running),
        ("smollm3_requests_waiting", "gauge", "requests queued for admission", e.num_waiting),
        ("smollm3_requests_running_max", "gauge", "most requests admitted at once since the server started",
         s["max_running"]),
        ("smollm3_kv_blocks_total", "gauge", "KV cache blocks", e.blocks.num_blocks),
        ("smollm3_kv_blocks_free", "gauge", "KV cache blocks free (unheld, cached ones included)", e.num_free_blocks),
        ("smollm3_prompt_tokens_total", "counter", "prompt tokens of prefilled requests", s["prompt_tokens"]),
        ("smollm3_prompt_tokens_cached_total", "counter", "prompt tokens served from the prefix cache",
         s["cached_prompt_tokens"]),
        ("smollm3_preemptions_total", "counter", "running requests preempted for KV blocks", s["preemptions"]),
        ("smollm3_generation_tokens_total", "counter", "tokens generated", s["generated_tokens"]),
        ("smollm3_prefill_steps_total", "counter", "prefill forward passes", s["prefill_steps"]),
        ("smollm3_decode_steps_total", "counter", "decode forward passes", s["decode_steps"]),
    ]
    lines = []
    for name, kind, help_, value in rows:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
    lines += ["# HELP smollm3_http_errors_total error responses by status", "# TYPE smollm3_http_errors_total counter"]
    lines += [f'smollm3_http_errors_total{{status="{k}"}} {v}' for k, v in sorted(state.http_errors.items())]
    lines += state.engine.step_seconds.lines("smollm3_step_seconds", "wall time of each engine step (prompt chunks "
                                             "and every stream's next token)")
    if state.gc_pauses is not None:
        lines += state.gc_pauses.histogram.lines("smollm3_gc_pause_seconds", "each garbage collection's pause (it "
                                                 "stops every thread)")
        lines += ["# HELP smollm3_gc_frozen_objects objects frozen after warm-up, which collections skip",
                  "# TYPE smollm3_gc_frozen_objects gauge", f"smollm3_gc_frozen_objects {gc.get_freeze_count()}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------------


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """A warning when the server listens beyond this machine with no API key: anyone who can reach it can use it."""
    if api_key:
        return None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        loopback = False
    if loopback:
        return None
    return (f"WARNING: listening on {host} without an API key: anyone who can reach this port can use the model. "
            "Set --api-key (or $SMOLLM3_API_KEY), or listen on 127.0.0.1.")


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          served_model_name: str | None = None, chat_template: str | None = None,
          max_body_bytes: int = MAX_BODY_BYTES, max_waiting: int | None = None, **engine_kwargs):
    """Load the model, start the engine thread and serve until interrupted. Port 0 picks a free port (printed).
    `max_body_bytes`: larger request bodies get a 413; `max_waiting`: engine requests queued for admission before
    new requests get a 429 (None: 4 x max_num_seqs)."""
    import socket

    import uvicorn

    state = build_state(model, api_key=api_key, served_model_name=served_model_name, chat_template=chat_template,
                        max_body_bytes=max_body_bytes, max_waiting=max_waiting,
                        log=lambda line: print(line, flush=True), **engine_kwargs)
    freeze_heap()  # the process is the server's: its heap after warm-up is static (metrics.py says why)
    state.gc_pauses = GCPauses().start()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    e = state.engine.engine
    url = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}/v1"
    warning = exposure_warning(host, api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(f"serving {state.model_name!r} on {url} ({e.device}, {str(e.dtype).replace('torch.', '')}"
          f"{', API key required' if api_key else ''})", flush=True)
    print(kv_capacity_line(e), flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning", timeout_graceful_shutdown=3))
    try:
        server.run(sockets=[sock])
    finally:
        state.gc_pauses.stop()
        state.engine.close()


def kv_capacity_line(e) -> str:
    """What the KV cache holds, and what that means at full context (the number users size a server by)."""
    full = e.kv_cache_tokens // e.max_model_len
    return (f"KV cache: {e.kv_cache_tokens:,} tokens ({e.blocks.num_blocks:,} blocks of {e.block_size}); "
            f"{full:,} requests at once at the full {e.max_model_len:,}-token context, up to {e.max_num_seqs} "
            f"(--max-num-seqs) when shorter; prefix caching {'on' if e.blocks.prefix_caching else 'off'}")


def build_state(model: str, *, api_key=None, served_model_name=None, chat_template=None,
                max_body_bytes: int = MAX_BODY_BYTES, max_waiting: int | None = None, log=print,
                **engine_kwargs) -> ServerState:
    """The server's state over a model directory: the engine loaded and, on a GPU, warmed up (Engine.warm_up): else
    the first requests of each decode bucket wait while its graph is compiled and captured (bench_infer's first two
    batches of the 3B preset took 34-39 s more on an H100), and each new prefill length loads kernels."""
    if max_body_bytes < 1 or (max_waiting is not None and max_waiting < 1):
        raise ValueError("max_body_bytes and max_waiting must be at least 1")
    engine, template = build_engine(model, chat_template=chat_template, log=log, **engine_kwargs)
    if engine.tokenizer is None:
        raise ValueError(f"{model}: no tokenizer (tokenizer.json); the server needs one")
    started = time.perf_counter()
    graphs, lengths = engine.warm_up()
    if graphs or lengths:
        log(f"warm-up: the decode step's CUDA graphs captured for {graphs} (batch, KV length) shapes, the prefill "
            f"run at {lengths} padded lengths, in {time.perf_counter() - started:.1f} s")
    name = served_model_name or Path(model).name
    return ServerState(BackgroundEngine(engine), engine.tokenizer, name, template, api_key,
                       max_body_bytes=max_body_bytes, max_waiting=max_waiting)
