"""The OpenAI-compatible HTTP server: FastAPI routes over a BackgroundEngine.

    smollm3 serve --model DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY]

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (streamed as server-sent events),
GET /health, GET /metrics (Prometheus text). Tokens reach a request's asyncio queue from the engine thread; a
client that goes away mid-request has its request aborted, which frees its KV slot at the engine's next step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from collections import Counter
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from smollm3.chat import ChatError, TemplateError, render_chat
from smollm3.infer import openai_api as oa
from smollm3.infer.engine import BackgroundEngine
from smollm3.infer.openai_api import APIError


@dataclass
class ServerState:
    engine: BackgroundEngine
    tokenizer: object
    model_name: str
    chat_template: str  # a template name ("smollm3") or source (the model directory's chat_template.jinja)
    api_key: str | None = None
    created: int = field(default_factory=oa.now)
    http_errors: Counter = field(default_factory=Counter)

    @property
    def max_model_len(self) -> int:
        return self.engine.engine.max_model_len


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="smollm3", docs_url=None, redoc_url=None)
    app.state.smollm3 = state

    def error(status: int, body: dict) -> JSONResponse:
        state.http_errors[status] += 1
        return JSONResponse(body, status_code=status)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error(exc.status, exc.body())

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

    async def json_body(request: Request) -> dict:
        check_auth(request)
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != state.model_name:
            raise APIError(404, f"The model '{model}' does not exist; this server serves '{state.model_name}'.",
                           param="model", code="model_not_found")
        return body

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

    # ---- completions

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await json_body(request)
        prompts = _prompts(body.get("prompt"), state.tokenizer)
        echo = oa.get_field(body, "echo", bool, "a boolean", False)
        if body.get("suffix") is not None:
            raise APIError(400, "'suffix' is not supported by this server", param="suffix")
        n = oa.n_choices(body)
        stream, include_usage = oa.stream_flags(body)
        jobs = []  # (prompt ids, params), n per prompt
        for ids in prompts:
            params = oa.sampling_params(body, len(ids), state.max_model_len, default_max_tokens=16,
                                        prompt_param="prompt")
            jobs += [(ids, params)] * n
        reqs, queue = submit(state, [(ids, params, None) for ids, params in jobs], seeded=n > 1)
        rid, created = oa.new_id("cmpl"), oa.now()
        prompt_tokens = sum(len(ids) for ids in prompts)

        def echo_text(i):
            return state.tokenizer.decode(jobs[i][0]) if echo else ""

        if not stream:
            await wait_all(state, request, reqs, queue)
            raise_if_failed(reqs)
            choices = [{"index": i, "text": echo_text(i) + r.text, "logprobs": None, "finish_reason":
                        oa.finish_reason(r.finish_reason, False)} for i, r in enumerate(reqs)]
            return {"id": rid, "object": "text_completion", "created": created, "model": state.model_name,
                    "choices": choices, "usage": oa.usage(prompt_tokens, sum(len(r.output_ids) for r in reqs))}

        def chunk(choices, usage=None):
            c = {"id": rid, "object": "text_completion", "created": created, "model": state.model_name,
                 "choices": choices}
            if include_usage:
                c["usage"] = usage
            return sse(c)

        async def events():
            for i in range(len(reqs)):
                if echo:
                    yield chunk([{"index": i, "text": echo_text(i), "logprobs": None, "finish_reason": None}])
            async for i, delta, reason in stream_updates(state, reqs, queue):
                if reason == "error":
                    yield sse(oa.error_body(reqs[i].error or "engine error", "server_error"))
                    continue
                if delta or reason:
                    yield chunk([{"index": i, "text": delta, "logprobs": None,
                                  "finish_reason": oa.finish_reason(reason, False) if reason else None}])
            if include_usage:
                yield chunk([], oa.usage(prompt_tokens, sum(len(r.output_ids) for r in reqs)))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    # ---- chat completions

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await json_body(request)
        messages = oa.inline_tool_calls(oa.chat_messages(body.get("messages")), state.chat_template)
        tools = oa.chat_tools(body.get("tools"))
        choice = oa.tool_choice(body.get("tool_choice"), tools)
        kwargs = oa.get_field(body, "chat_template_kwargs", dict, "an object", {})
        kwargs = dict(kwargs)
        enable_thinking = kwargs.pop("enable_thinking", True)
        if not isinstance(enable_thinking, bool):
            raise APIError(400, "chat_template_kwargs.enable_thinking must be a boolean", param="chat_template_kwargs")
        offered = tools if choice != "none" else None  # tool_choice none: the model is not told about tools
        try:
            prompt = render_chat(messages, template=state.chat_template, enable_thinking=enable_thinking,
                                 tools=offered or None, add_generation_prompt=True, **kwargs)
        except (ChatError, TemplateError, TypeError) as e:
            raise APIError(400, f"cannot render the conversation: {e}", param="messages") from None
        prefix, forced = oa.forced_call(choice, tools)
        ids = state.tokenizer.encode(prompt + prefix)
        params = oa.sampling_params(body, len(ids), state.max_model_len, default_max_tokens=None)
        n = oa.n_choices(body)
        stream, include_usage = oa.stream_flags(body)
        # each choice needs its own grammar state
        jobs = [(ids, params, oa.forced_call(choice, tools)[1] if forced else None) for _ in range(n)]
        reqs, queue = submit(state, jobs, seeded=n > 1)
        rid, created = oa.new_id("chatcmpl"), oa.now()
        xml_tools = bool(offered)

        if not stream:
            await wait_all(state, request, reqs, queue)
            raise_if_failed(reqs)
            choices = [oa.chat_choice(i, r.text, r.finish_reason, prefix=prefix, xml_tools=xml_tools)
                       for i, r in enumerate(reqs)]
            return {"id": rid, "object": "chat.completion", "created": created, "model": state.model_name,
                    "choices": choices, "usage": oa.usage(len(ids), sum(len(r.output_ids) for r in reqs))}

        def chunk(choices, usage=None):
            c = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": state.model_name,
                 "choices": choices}
            if include_usage:
                c["usage"] = usage
            return sse(c)

        async def events():
            streams = [oa.ChatChoiceStream(i, prefix=prefix, xml_tools=xml_tools) for i in range(len(reqs))]
            for st in streams:
                yield chunk([st.start()])
            async for i, delta, reason in stream_updates(state, reqs, queue):
                if reason == "error":
                    yield sse(oa.error_body(reqs[i].error or "engine error", "server_error"))
                    continue
                for c in streams[i].feed(delta, reason):
                    yield chunk([c])
            if include_usage:
                yield chunk([], oa.usage(len(ids), sum(len(r.output_ids) for r in reqs)))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


# ------------------------------------------------------------------------------------------------------------------
# plumbing between asyncio and the engine thread


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _prompts(raw, tokenizer) -> list[list[int]]:
    """A completions `prompt`: a string, an array of strings, an array of token ids, or an array of those."""
    def ok_ids(x):
        return isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(raw, str) or ok_ids(raw):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(p, str) or ok_ids(p) for p in raw):
        raise APIError(400, "'prompt' must be a string, an array of strings, or token ids", param="prompt")
    out = [tokenizer.encode(p, add_special_tokens=True) if isinstance(p, str) else p for p in raw]
    if any(not ids for ids in out):
        raise APIError(400, "'prompt' is empty", param="prompt")
    return out


def submit(state: ServerState, jobs, seeded: bool) -> tuple[list, asyncio.Queue]:
    """Queue one engine request per job (prompt ids, params, constraint); n > 1 with a seed gets seed, seed+1, ..."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    reqs = []
    for i, (ids, params, constraint) in enumerate(jobs):
        if seeded and params.seed is not None:
            params = dataclasses.replace(params, seed=params.seed + i)

        def on_update(r, i=i):
            item = (i, r.take_delta(), r.finish_reason)  # taken on the engine thread, in order
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone (shutdown)
                pass

        try:
            reqs.append(state.engine.submit(ids, params, constraint=constraint, on_update=on_update))
        except ValueError as e:
            for r in reqs:
                state.engine.abort(r)
            raise APIError(400, str(e)) from None
    return reqs, queue


async def stream_updates(state: ServerState, reqs, queue: asyncio.Queue):
    """Yield (choice index, new text, finish reason or None) until every request finishes; abort the unfinished
    ones if the consumer stops early (client disconnect: the generator is closed or cancelled)."""
    left = len(reqs)
    try:
        while left:
            i, delta, reason = await queue.get()
            if reason:
                left -= 1
            yield i, delta, reason
    finally:
        for r in reqs:
            if not r.finished:
                state.engine.abort(r)


async def wait_all(state: ServerState, request: Request, reqs, queue: asyncio.Queue):
    """Wait for non-streamed requests, aborting them if the client disconnects meanwhile."""
    left = len(reqs)
    try:
        while left:
            try:
                _, _, reason = await asyncio.wait_for(queue.get(), timeout=1.0)
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
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------------


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          served_model_name: str | None = None, chat_template: str | None = None, **engine_kwargs):
    """Load the model, start the engine thread and serve until interrupted. Port 0 picks a free port (printed)."""
    import socket

    import uvicorn

    state = build_state(model, api_key=api_key, served_model_name=served_model_name, chat_template=chat_template,
                        **engine_kwargs)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    e = state.engine.engine
    url = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}/v1"
    print(f"serving {state.model_name!r} on {url} ({e.device}, {str(e.dtype).replace('torch.', '')}"
          f"{', API key required' if api_key else ''})", flush=True)
    print(kv_capacity_line(e), flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning", timeout_graceful_shutdown=3))
    try:
        server.run(sockets=[sock])
    finally:
        state.engine.close()


def kv_capacity_line(e) -> str:
    """What the KV cache holds, and what that means at full context (the number users size a server by)."""
    full = e.kv_cache_tokens // e.max_model_len
    return (f"KV cache: {e.kv_cache_tokens:,} tokens ({e.blocks.num_blocks:,} blocks of {e.block_size}); "
            f"{full:,} requests at once at the full {e.max_model_len:,}-token context, up to {e.max_num_seqs} "
            f"(--max-num-seqs) when shorter; prefix caching {'on' if e.blocks.prefix_caching else 'off'}")


def build_state(model: str, *, api_key=None, served_model_name=None, chat_template=None, **engine_kwargs
                ) -> ServerState:
    from pathlib import Path

    from smollm3.infer.llm import build_engine

    engine, template = build_engine(model, chat_template=chat_template, **engine_kwargs)
    if engine.tokenizer is None:
        raise ValueError(f"{model}: no tokenizer (tokenizer.json); the server needs one")
    name = served_model_name or Path(model).name
    return ServerState(BackgroundEngine(engine), engine.tokenizer, name, template, api_key)
