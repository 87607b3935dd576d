"""From a request body to engine jobs, off the event loop: JSON parsing with limits, chat rendering, tokenization
and every check of the request. server.py runs these functions in worker threads (asyncio.to_thread), so a
large or hostile request never stalls other streams or /health.

Tokenization goes through `encode_batch`, which releases the GIL in HF tokenizers (`encode` holds it: a 4 MB
prompt froze every other thread for 6 s). Text longer than max_model_len x the longest token's bytes cannot fit
the context whatever it tokenizes to, so it is refused before tokenizing at all.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from smollm3.chat import ChatError, TemplateError, render_chat
from smollm3.infer import openai_api as oa
from smollm3.infer.openai_api import APIError
from smollm3.infer.response_format import response_constraint
from smollm3.infer.sampling import SamplingParams
from smollm3.parsing import TOOL_CLOSE

MAX_JSON_DEPTH = 64  # deeper request bodies are refused: nothing legitimate nests this far, and renderers recurse


def parse_body(raw: bytes) -> dict:
    """The request body as a JSON object, or a 400 naming the problem (not JSON, not UTF-8, a lone surrogate,
    nesting deeper than MAX_JSON_DEPTH)."""
    try:
        body = json.loads(raw)
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not valid UTF-8: {e}") from None
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise APIError(400, f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    check_json(body)
    return body


def check_json(body: dict):
    """Walk the parsed body (iteratively: it may be deep): depth within MAX_JSON_DEPTH, and every string valid
    Unicode (JSON's \\ud800 escapes decode to lone surrogates, which no tokenizer or encoder accepts). Errors
    name the top-level field they are in."""
    stack = [(v, 2, k) for k, v in body.items()]
    for k in body:
        _check_str(k, None)
    while stack:
        value, depth, field = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise APIError(400, f"'{field}' nests JSON deeper than {MAX_JSON_DEPTH} levels", param=field)
        if isinstance(value, str):
            _check_str(value, field)
        elif isinstance(value, dict):
            for k, v in value.items():
                _check_str(k, field)
                stack.append((v, depth + 1, field))
        elif isinstance(value, list):
            stack.extend((v, depth + 1, field) for v in value if isinstance(v, (str, dict, list)))


def _check_str(s: str, field: str | None):
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        where = f"in '{field}'" if field else "in a field name"
        raise APIError(400, f"invalid Unicode {where}: a lone surrogate ({s[e.start]!r}) is not a character",
                       param=field) from None


def max_token_bytes(tokenizer) -> int:
    """The most UTF-8 bytes any one token stands for (its vocabulary string's length, which only overestimates:
    a byte-level character is one byte but up to two in UTF-8). Every token covers at least one byte."""
    vocab = tokenizer.tok.get_vocab(with_added_tokens=True) if hasattr(tokenizer, "tok") else None
    if not vocab:
        return 1 << 30  # unknown tokenizer: never refuse on length alone
    return max(len(piece.encode("utf-8")) for piece in vocab)


def encode(tokenizer, text: str, *, max_model_len: int, token_bytes: int, param: str,
           add_special_tokens: bool = False) -> list[int]:
    n_bytes = len(text.encode("utf-8"))
    if n_bytes > max_model_len * token_bytes:  # cannot fit, whatever it tokenizes to
        raise oa.context_error(max_model_len, -(-n_bytes // token_bytes), param, at_least=True)
    if hasattr(tokenizer, "encode_batch"):  # releases the GIL
        ids = tokenizer.encode_batch([text])[0]
        if add_special_tokens and getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
        return ids
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


@dataclass
class Job:
    """One engine request to make: prompt ids, parameters, and a constraint factory (a fresh state per request)."""

    ids: list[int]
    params: SamplingParams
    constraint: object = None  # a callable -> constraint, or None


@dataclass
class ChatPlan:
    jobs: list[Job]
    prompt_tokens: int
    prefix: str  # a forced tool call's opening, put in the prompt; part of the parsed output
    xml_tools: bool  # tools were offered: <tool_call> blocks become tool_calls
    logprobs: int | None  # top_logprobs asked for (None: no logprobs)
    legacy: bool  # functions / function_call: answer with function_call
    tool_stop: bool  # parallel_tool_calls false: generation stops at the first </tool_call>, which we put back
    stream: bool
    include_usage: bool
    continuous_usage: bool  # usage in every chunk (stream_options.continuous_usage_stats)


def prepare_chat(body: dict, *, tokenizer, template: str, max_model_len: int, vocab_size: int,
                 token_bytes: int) -> ChatPlan:
    oa.check_fields(body, oa.CHAT_FIELDS)
    raw_tools, raw_choice, legacy = oa.legacy_functions(body)
    tools_param = "functions" if legacy else "tools"
    messages = oa.inline_tool_calls(oa.chat_messages(body.get("messages")), template)
    try:
        tools = oa.chat_tools(raw_tools)
        choice = oa.tool_choice(raw_choice, tools)
    except APIError as e:
        if legacy:
            e.param = {"tools": "functions", "tool_choice": "function_call"}.get(e.param, e.param)
        raise
    kwargs = dict(oa.get_field(body, "chat_template_kwargs", dict, "an object", {}))
    enable_thinking = oa.thinking(body, kwargs, template)
    parallel = oa.get_field(body, "parallel_tool_calls", bool, "a boolean", True) and not legacy
    if body.get("parallel_tool_calls") is not None and not tools:
        raise APIError(400, "'parallel_tool_calls' needs 'tools'", param="parallel_tool_calls")
    offered = tools if choice != "none" else None  # tool_choice none: the model is not told about tools
    if offered and choice == "auto" and not oa.renders_tools(template):
        raise APIError(400, "the served chat template does not render tools, so the model would never see them; "
                            "use tool_choice 'required' or a named function (constrained), or serve a template "
                            "with tool support (--chat-template smollm3)", param=tools_param)
    fmt = response_constraint(body.get("response_format"), think=enable_thinking and oa.has_think_mode(template))
    if fmt is not None and offered:
        raise APIError(400, "response_format json_object / json_schema cannot be combined with tools here",
                       param="response_format")
    try:
        prompt = render_chat(messages, template=template, enable_thinking=enable_thinking, tools=offered or None,
                             add_generation_prompt=True, **kwargs)
    except (ChatError, TemplateError, TypeError) as e:
        raise APIError(400, f"cannot render the conversation: {e}", param="messages") from None
    prefix, forced = oa.forced_call(choice, tools)
    ids = encode(tokenizer, prompt + prefix, max_model_len=max_model_len, token_bytes=token_bytes, param="messages")
    params = oa.sampling_params(body, len(ids), max_model_len, default_max_tokens=None, vocab_size=vocab_size)
    logprobs = oa.chat_logprobs(body)
    tool_stop = bool(offered) and choice == "auto" and not parallel and TOOL_CLOSE not in params.stop
    params = dataclasses.replace(params, logprobs=logprobs, stop=params.stop + [TOOL_CLOSE] * tool_stop)
    n = oa.n_choices(body)
    stream, include_usage, continuous = oa.stream_flags(body)
    if forced:
        make = (lambda: oa.forced_call(choice, tools)[1])  # noqa: E731 (each choice needs its own grammar state)
    else:
        make = fmt
    return ChatPlan([Job(ids, params, make) for _ in range(n)], len(ids), prefix, bool(offered), logprobs, legacy,
                    tool_stop, stream, include_usage, continuous)


@dataclass
class CompletionPlan:
    jobs: list[Job]  # best_of per prompt, prompt by prompt
    prompts: list[list[int]]
    n: int
    best_of: int
    logprobs: int | None
    echo: bool
    stream: bool
    include_usage: bool
    continuous_usage: bool


def prepare_completion(body: dict, *, tokenizer, max_model_len: int, vocab_size: int,
                       token_bytes: int) -> CompletionPlan:
    oa.check_fields(body, oa.COMPLETION_FIELDS)
    echo = oa.get_field(body, "echo", bool, "a boolean", False)
    if body.get("suffix") is not None:
        raise APIError(400, "'suffix' is not supported by this server", param="suffix")
    logprobs = oa.completion_logprobs(body)
    if echo and logprobs is not None:
        raise APIError(400, "'echo' with 'logprobs' would need the prompt's logprobs, which this server does not "
                            "compute", param="echo")
    n = oa.n_choices(body)
    best_of = oa.get_field(body, "best_of", int, "an integer", n, lambda v: n <= v <= 64,
                           f"must be between n ({n}) and 64")
    stream, include_usage, continuous = oa.stream_flags(body)
    if stream and best_of != n:
        raise APIError(400, "'best_of' other than n cannot be streamed", param="best_of")
    prompts = prompt_ids(body.get("prompt"), tokenizer, max_model_len, token_bytes)
    jobs = []
    for ids in prompts:
        params = oa.sampling_params(body, len(ids), max_model_len, default_max_tokens=16, prompt_param="prompt",
                                    vocab_size=vocab_size)
        # best_of ranks candidates by their cumulative logprob, so they all record it
        k = logprobs if logprobs is not None else (0 if best_of > n else None)
        jobs += [Job(ids, dataclasses.replace(params, logprobs=k))] * best_of
    return CompletionPlan(jobs, prompts, n, best_of, logprobs, echo, stream, include_usage, continuous)


def prompt_ids(raw, tokenizer, max_model_len: int, token_bytes: int) -> list[list[int]]:
    """A completions `prompt`: a string, an array of strings, an array of token ids, or an array of those."""
    def ok_ids(x):
        return isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(raw, str) or ok_ids(raw):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(p, str) or ok_ids(p) for p in raw):
        raise APIError(400, "'prompt' must be a string, an array of strings, or token ids", param="prompt")
    out = [encode(tokenizer, p, max_model_len=max_model_len, token_bytes=token_bytes, param="prompt",
                  add_special_tokens=True) if isinstance(p, str) else p for p in raw]
    if any(not ids for ids in out):
        raise APIError(400, "'prompt' is empty", param="prompt")
    return out
