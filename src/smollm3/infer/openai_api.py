"""OpenAI request checking and response shapes, independent of the web framework.

Every check raises APIError with an OpenAI-style body, so a bad request is a 4xx that names the parameter, never
a 500. Conventions follow the OpenAI API and vLLM's extensions (top_k, min_p, repetition_penalty, stop_token_ids,
ignore_eos, chat_template_kwargs, `reasoning` / legacy `reasoning_content`).

Unknown top-level fields are refused with a 400 naming them, as OpenAI does (vLLM ignores them): a parameter this
server does not know would otherwise be silently dropped. Metadata with no effect on the output (`user`,
`metadata`, `store`, `service_tier`, `prompt_cache_key`, `safety_identifier`) is accepted.
"""

from __future__ import annotations

import functools
import json
import re
import time
import uuid

from smollm3.chat import ChatError, TemplateError, render_chat
from smollm3.infer.constrain import NAME_RE, ToolCallConstraint
from smollm3.infer.sampling import SamplingParams
from smollm3.parsing import StreamParser


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


# ------------------------------------------------------------------------------------------------------------------
# typed fields

METADATA = {"user": str, "metadata": dict, "store": bool, "service_tier": str, "prompt_cache_key": str,
            "safety_identifier": str}
EXTENSIONS = {"top_k", "min_p", "repetition_penalty", "stop_token_ids", "ignore_eos"}  # vLLM's names
SAMPLING = {"model", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "max_tokens", "n", "seed",
            "stop", "stream", "stream_options", "temperature", "top_p"} | EXTENSIONS | set(METADATA)
CHAT_FIELDS = SAMPLING | {"messages", "top_logprobs", "max_completion_tokens", "response_format", "tools",
                          "tool_choice", "parallel_tool_calls", "functions", "function_call", "reasoning_effort",
                          "chat_template_kwargs"}
COMPLETION_FIELDS = SAMPLING | {"prompt", "best_of", "echo", "suffix"}


def check_fields(body: dict, known: set):
    """Refuse fields this server does not know (named), and check the types of the metadata it accepts."""
    unknown = sorted(k for k in body if k not in known)
    if unknown:
        raise APIError(400, f"Unrecognized request argument supplied: {unknown[0]} (this server does not support "
                            "it; see docs/inference.md for the supported parameters)", param=unknown[0])
    for key, t in METADATA.items():
        get_field(body, key, t, "a " + {str: "string", dict: "object", bool: "boolean"}[t])


def get_field(body: dict, key: str, types, what: str, default=None, ok=None, why: str = ""):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise APIError(400, f"'{key}' must be {what}, got {value!r}", param=key)
    if not isinstance(value, types):
        raise APIError(400, f"'{key}' must be {what}, got {type(value).__name__} {value!r}"[:300], param=key)
    if ok is not None and not ok(value):
        raise APIError(400, f"'{key}' {why}, got {value!r}"[:300], param=key)
    return value


def context_error(max_model_len: int, prompt_len: int, param: str, at_least: bool = False) -> APIError:
    return APIError(400, f"This model's maximum context length is {max_model_len} tokens. However, your prompt has "
                         f"{'at least ' if at_least else ''}{prompt_len} tokens. Please reduce the length of the "
                         "prompt.", param=param, code="context_length_exceeded")


def logit_bias(body: dict, vocab_size: int | None) -> dict[int, float]:
    """OpenAI's logit_bias: {"token id": bias in -100..100} (JSON keys are strings)."""
    raw = get_field(body, "logit_bias", dict, "an object mapping token ids to biases", {})
    out = {}
    for key, bias in raw.items():
        try:
            token = int(key)
        except ValueError:
            raise APIError(400, f"logit_bias keys must be token ids, got {key!r}"[:300], param="logit_bias") from None
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise APIError(400, f"logit_bias: token id {token} is outside the vocabulary [0, {vocab_size})",
                           param="logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise APIError(400, f"logit_bias[{key!r}] must be a number between -100 and 100, got {bias!r}"[:300],
                           param="logit_bias")
        out[token] = float(bias)
    return out


def chat_logprobs(body: dict) -> int | None:
    """Chat: `logprobs: true` returns each token's logprob, `top_logprobs: 0..20` the most likely alternatives."""
    want = get_field(body, "logprobs", bool, "a boolean", False)
    top = get_field(body, "top_logprobs", int, "an integer", None, lambda v: 0 <= v <= 20, "must be between 0 and 20")
    if top is not None and not want:
        raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return (top or 0) if want else None


def completion_logprobs(body: dict) -> int | None:
    """Completions: `logprobs: k` (0..5) returns each token's logprob and the k most likely alternatives."""
    return get_field(body, "logprobs", int, "an integer", None, lambda v: 0 <= v <= 5, "must be between 0 and 5")


def sampling_params(body: dict, prompt_len: int, max_model_len: int, default_max_tokens: int | None,
                    prompt_param: str = "messages", vocab_size: int | None = None) -> SamplingParams:
    """The request's sampling fields -> SamplingParams; unset fields stay None (the model's defaults). Logprobs are
    endpoint-specific (chat_logprobs / completion_logprobs) and set by the caller."""
    penalties = {key: get_field(body, key, (int, float), "a number", 0.0, lambda v: -2 <= v <= 2,
                                "must be between -2 and 2") for key in ("presence_penalty", "frequency_penalty")}
    bias = logit_bias(body, vocab_size)
    if prompt_len >= max_model_len:
        raise context_error(max_model_len, prompt_len, prompt_param)
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = get_field(body, key, int, "an integer", None, lambda v: v >= 1, "must be at least 1")
    if max_tokens is None:
        max_tokens = min(default_max_tokens or max_model_len, max_model_len - prompt_len)
    elif prompt_len + max_tokens > max_model_len:
        raise APIError(400, f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                            f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} in the "
                            "completion). Please reduce the length of the prompt or completion.",
                       param=key, code="context_length_exceeded")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, "'stop' must be a non-empty string or an array of them", param="stop")
    stop_ids = body.get("stop_token_ids")
    if stop_ids is not None and (not isinstance(stop_ids, list) or
                                 not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in stop_ids)):
        raise APIError(400, "'stop_token_ids' must be an array of token ids", param="stop_token_ids")
    top_k = get_field(body, "top_k", int, "an integer", None, lambda v: v >= -1, "must be -1 or 0 (off) or positive")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=get_field(body, "temperature", (int, float), "a number", None, lambda v: 0 <= v <= 2,
                           "must be between 0 and 2"),
        top_p=get_field(body, "top_p", (int, float), "a number", None, lambda v: 0 < v <= 1, "must be in (0, 1]"),
        top_k=None if top_k is None else max(top_k, 0),
        min_p=get_field(body, "min_p", (int, float), "a number", 0.0, lambda v: 0 <= v <= 1, "must be in [0, 1]"),
        repetition_penalty=get_field(body, "repetition_penalty", (int, float), "a number", 1.0,
                                  lambda v: 0 < v <= 100, "must be > 0 (1 = off)"),
        seed=get_field(body, "seed", int, "an integer"),
        stop=stop or [],
        stop_token_ids=stop_ids or [],
        ignore_eos=get_field(body, "ignore_eos", bool, "a boolean", False),
        logit_bias=bias,
        **penalties,
    )


def n_choices(body: dict) -> int:
    return get_field(body, "n", int, "an integer", 1, lambda v: 1 <= v <= 64, "must be between 1 and 64")


def stream_flags(body: dict) -> tuple[bool, bool, bool]:
    """(stream, include_usage, continuous_usage). `continuous_usage_stats` (vLLM's extension): usage, the tokens
    generated so far, in every chunk, so that a client can tell how many tokens each chunk carries."""
    stream = get_field(body, "stream", bool, "a boolean", False)
    opts = get_field(body, "stream_options", dict, "an object", {})
    unknown = sorted(set(opts) - {"include_usage", "continuous_usage_stats"})
    if unknown:
        raise APIError(400, f"unknown stream_options field {unknown[0]!r}: this server takes include_usage and "
                            "continuous_usage_stats", param="stream_options")
    flags = []
    for name in ("include_usage", "continuous_usage_stats"):
        value = opts.get(name, False)
        if not isinstance(value, bool):
            raise APIError(400, f"'stream_options.{name}' must be a boolean", param="stream_options")
        flags.append(value)
    include_usage, continuous = flags
    if continuous and not include_usage:
        raise APIError(400, "'stream_options.continuous_usage_stats' needs 'include_usage': true",
                       param="stream_options")
    return stream, include_usage, continuous


# ------------------------------------------------------------------------------------------------------------------
# chat: messages, tools, tool_choice


_THINK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)


def chat_messages(raw) -> list[dict]:
    """OpenAI messages -> the dicts render_chat takes: text parts joined, `developer` read as `system`, and the
    reasoning of assistant turns before the last user message dropped (the model never sees old thoughts)."""
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "'messages' must be a non-empty array of messages", param="messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}] must be an object with 'role' and 'content'", param="messages")
        m = {k: v for k, v in m.items() if v is not None}
        if m.get("role") == "developer":
            m["role"] = "system"
        if m.get("role") == "function":  # legacy function result: a tool message
            m["role"] = "tool"
        if m.get("role") == "assistant" and isinstance(m.get("function_call"), dict):  # legacy call: a tool call
            m["tool_calls"] = [{"id": f"call_{i}", "type": "function", "function": m.pop("function_call")}]
        content = m.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise APIError(400, f"messages[{i}].content: only text parts are supported "
                                        "({'type': 'text', 'text': ...})", param="messages")
                texts.append(part["text"])
            m["content"] = "\n".join(texts)
        out.append(m)
    last_user = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=-1)
    for i in range(last_user):
        if out[i].get("role") == "assistant":
            for key in ("reasoning", "reasoning_content", "thinking"):
                out[i].pop(key, None)
            if isinstance(out[i].get("content"), str):
                out[i]["content"] = _THINK.sub("", out[i]["content"])
    return out


def _renders(template: str, a: dict, b: dict | None = None, needle: str | None = None) -> bool:
    """Does rendering with kwargs `a` differ from rendering with `b` (or contain `needle`)?"""
    probe = [{"role": "user", "content": "hi"}]
    try:
        first = render_chat(probe, template=template, add_generation_prompt=True, **a)
        return needle in first if needle else first != render_chat(probe, template=template,
                                                                   add_generation_prompt=True, **b)
    except (ChatError, TemplateError, TypeError):
        return False


@functools.lru_cache(maxsize=8)
def renders_tools(template: str) -> bool:
    """Does this chat template put `tools` into the prompt? (SmolLM2's and plain ChatML ones do not: the model would
    never see the tools.)"""
    tool = {"type": "function", "function": {"name": "probe_fn_7f3a", "parameters": {"type": "object"}}}
    return _renders(template, {"tools": [tool]}, needle="probe_fn_7f3a")


@functools.lru_cache(maxsize=8)
def has_think_mode(template: str) -> bool:
    """Does `enable_thinking` change this chat template's prompt?"""
    return _renders(template, {"enable_thinking": True}, {"enable_thinking": False})


REASONING_EFFORT = {"none": False, "minimal": False, "low": True, "medium": True, "high": True}


def thinking(body: dict, kwargs: dict, template: str) -> bool:
    """enable_thinking from `reasoning_effort` (none / minimal: no thinking; low / medium / high: SmolLM3's one
    think mode) or `chat_template_kwargs.enable_thinking`; refused where the template has no think mode."""
    effort = get_field(body, "reasoning_effort", str, "a string", None, lambda v: v in REASONING_EFFORT,
                       f"must be one of {list(REASONING_EFFORT)}")
    explicit = kwargs.pop("enable_thinking", None)
    if explicit is not None and not isinstance(explicit, bool):
        raise APIError(400, "chat_template_kwargs.enable_thinking must be a boolean", param="chat_template_kwargs")
    if effort is not None and explicit is not None and REASONING_EFFORT[effort] != explicit:
        raise APIError(400, f"reasoning_effort {effort!r} contradicts chat_template_kwargs.enable_thinking "
                            f"{explicit}", param="reasoning_effort")
    if (effort is not None or explicit is not None) and not has_think_mode(template):
        param = "reasoning_effort" if effort is not None else "chat_template_kwargs"
        raise APIError(400, f"'{param}' has no effect: the served chat template has no think mode", param=param)
    if effort is not None:
        return REASONING_EFFORT[effort]
    return True if explicit is None else explicit


def legacy_functions(body: dict) -> tuple[object, object, bool]:
    """(tools, tool_choice, legacy): the deprecated `functions` / `function_call` read as tools / tool_choice."""
    functions, call = body.get("functions"), body.get("function_call")
    if functions is None:
        if call is not None:
            raise APIError(400, "'function_call' needs 'functions'", param="function_call")
        return body.get("tools"), body.get("tool_choice"), False
    for key in ("tools", "tool_choice"):
        if body.get(key) is not None:
            raise APIError(400, f"'functions' and '{key}' cannot be used together; use tools", param="functions")
    if not isinstance(functions, list):
        raise APIError(400, "'functions' must be an array of function specs", param="functions")
    tools = [{"type": "function", "function": f} for f in functions]
    if isinstance(call, dict):
        call = {"type": "function", "function": call}
    elif call is not None and call not in ("none", "auto"):
        raise APIError(400, "'function_call' must be 'none', 'auto' or {'name': ...}", param="function_call")
    return tools, call, True


@functools.lru_cache(maxsize=8)
def renders_tool_calls(template: str) -> bool:
    """Does this chat template render an assistant message's `tool_calls` field? (Ours does; the official SmolLM3
    template and plain ChatML ones ignore it.) Found by rendering a probe call."""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "probe_fn_7f3a", "arguments": {}}}]}]
    try:
        return "probe_fn_7f3a" in render_chat(probe, template=template)
    except (ChatError, TemplateError):
        return False


def inline_tool_calls(messages: list[dict], template: str) -> list[dict]:
    """For templates that ignore `tool_calls`, write past calls into the assistant content the way the model
    writes them (<tool_call>{json}</tool_call>), so the model still sees what it called."""
    if renders_tool_calls(template):
        return messages
    out = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            blocks = []
            for call in m["tool_calls"]:
                fn = call.get("function", {}) if isinstance(call, dict) else {}
                args = fn.get("arguments")
                try:
                    args = json.loads(args) if isinstance(args, str) else (args or {})
                except json.JSONDecodeError:
                    raise APIError(400, f"tool call arguments are not valid JSON: {args!r}"[:300],
                                   param="messages") from None
                blocks.append(f"<tool_call>\n{json.dumps({'name': fn.get('name'), 'arguments': args})}\n</tool_call>")
            content = m.get("content") or ""
            m = {k: v for k, v in m.items() if k != "tool_calls"}
            m["content"] = (content + "\n" if content else "") + "\n".join(blocks)
        out.append(m)
    return out


def chat_tools(raw) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise APIError(400, "'tools' must be an array of {'type': 'function', 'function': {...}}", param="tools")
    names = set()
    for j, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise APIError(400, f"tools[{j}] must be {{'type': 'function', 'function': {{'name': ..., "
                                "'parameters': {...}}}}", param="tools")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise APIError(400, f"tools[{j}].function.name must be 1-64 letters, digits, '_' or '-', got {name!r}",
                           param="tools")
        if name in names:
            raise APIError(400, f"tools[{j}]: duplicate function name {name!r}", param="tools")
        names.add(name)
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise APIError(400, f"tools[{j}].function.description must be a string", param="tools")
        params = fn.get("parameters")
        if params is not None and (not isinstance(params, dict) or params.get("type", "object") != "object"):
            raise APIError(400, f"tools[{j}].function.parameters must be a JSON schema of type 'object'",
                           param="tools")
    return raw


def tool_choice(raw, tools: list[dict]):
    """-> "none" | "auto" | "required" | a function name."""
    names = [t["function"]["name"] for t in tools]
    if raw is None:
        return "auto" if tools else "none"
    if raw in ("none", "auto", "required"):
        if raw == "required" and not tools:
            raise APIError(400, "tool_choice 'required' needs 'tools'", param="tool_choice")
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("function"), dict):
        name = raw["function"].get("name")
        if name not in names:
            raise APIError(400, f"tool_choice names function {name!r}, which is not in 'tools' "
                                f"({', '.join(names) or 'none given'})", param="tool_choice")
        return name
    raise APIError(400, "'tool_choice' must be 'none', 'auto', 'required' or "
                        "{'type': 'function', 'function': {'name': ...}}", param="tool_choice")


def forced_call(choice: str, tools: list[dict]) -> tuple[str, ToolCallConstraint | None]:
    """For a forced tool call: (text appended to the prompt, grammar for the rest); ("", None) otherwise."""
    schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
    if choice == "required" and len(schemas) == 1:
        choice = next(iter(schemas))
    if choice == "required":
        return '<tool_call>\n{"name": "', ToolCallConstraint(schemas)
    if choice in ("none", "auto"):
        return "", None
    return f'<tool_call>\n{{"name": "{choice}", "arguments": ', ToolCallConstraint(schemas, forced=choice)


# ------------------------------------------------------------------------------------------------------------------
# responses


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage, with the prompt tokens served from the prefix cache as prompt_tokens_details.cached_tokens."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


class TokenPieces:
    """Each token's exact bytes and text, for logprobs. Byte-level BPE tokens map back to bytes through GPT-2's
    byte alphabet (a token may hold part of a UTF-8 character: its `bytes` say which); others decode alone."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.byte_level = "ByteLevel" in str(getattr(getattr(tokenizer, "tok", None), "decoder", ""))
        self.cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, i: int) -> tuple[str, list[int]]:
        got = self.cache.get(i)
        if got is None:
            piece = self.tokenizer.id_to_token(i) if self.byte_level else None
            if piece is not None and all(c in _BYTE_OF for c in piece):
                raw = bytes(_BYTE_OF[c] for c in piece)
            else:
                raw = self.tokenizer.decode([i]).encode("utf-8", "surrogatepass")
            got = self.cache[i] = (raw.decode("utf-8", "replace"), list(raw))
        return got


def _gpt2_byte_alphabet() -> dict[str, int]:
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


_BYTE_OF = _gpt2_byte_alphabet()


def _lp(x: float) -> float:
    return max(x, -9999.0)  # JSON has no -inf (vLLM's floor too)


def chat_logprobs_content(entries, piece: TokenPieces) -> list[dict]:
    """Engine logprob entries (id, logprob, top) -> OpenAI chat `logprobs.content`."""
    out = []
    for token, lp, top in entries:
        text, raw = piece(token)
        alts = [{"token": piece(i)[0], "logprob": _lp(v), "bytes": piece(i)[1]} for i, v in top]
        out.append({"token": text, "logprob": _lp(lp), "bytes": raw, "top_logprobs": alts})
    return out


def completion_logprobs_block(entries, piece: TokenPieces, offset: int = 0) -> dict:
    """Engine logprob entries -> the legacy completions `logprobs` object (top_logprobs as {token: logprob}, with
    the sampled token included, as OpenAI and vLLM do); text_offset counts from `offset`."""
    block = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token, lp, top in entries:
        text = piece(token)[0]
        block["tokens"].append(text)
        block["token_logprobs"].append(_lp(lp))
        alts = {piece(i)[0]: _lp(v) for i, v in top}
        alts.setdefault(text, _lp(lp))
        block["top_logprobs"].append(alts)
        block["text_offset"].append(offset)
        offset += len(text)
    return block


def chat_message(parsed) -> dict:
    """ParsedOutput -> an assistant message; content is null when the answer is only tool calls."""
    msg = {"role": "assistant", "content": parsed.content or (None if parsed.tool_calls else "")}
    if parsed.tool_calls:
        msg["tool_calls"] = parsed.tool_calls
    msg["reasoning"] = parsed.reasoning
    msg["reasoning_content"] = parsed.reasoning  # the name vLLM used before `reasoning`; clients still read it
    return msg


def legacy_call(message: dict) -> dict:
    """A message with tool_calls -> the legacy shape: one `function_call` (legacy requests stop after one call)."""
    calls = message.pop("tool_calls", None)
    if calls:
        message["function_call"] = calls[0]["function"]
    return message


def chat_choice(index: int, text: str, engine_reason: str, *, prefix: str = "", xml_tools: bool = False,
                logprobs: list | None = None, legacy: bool = False) -> dict:
    """One choice of a chat.completion from the engine's output text (after the forced `prefix`, if any);
    `logprobs`: the `logprobs.content` entries, when asked for."""
    parser = StreamParser(xml_tools=xml_tools, python_tools=False)
    parser.feed(prefix + text)
    parser.finish()
    parsed = parser.result()
    message = chat_message(parsed)
    return {"index": index, "message": legacy_call(message) if legacy else message,
            "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
            "finish_reason": finish_reason(engine_reason, bool(parsed.tool_calls), legacy)}


class ChatChoiceStream:
    """One choice of a streamed chat completion: text deltas in, `choices[]` entries of chat.completion.chunk out.
    Reasoning goes out as `reasoning` (and `reasoning_content`), answers as `content`, each tool call whole in one
    `tool_calls` delta with its index, and the last entry carries the finish_reason."""

    def __init__(self, index: int, *, prefix: str = "", xml_tools: bool = False, logprobs: bool = False,
                 legacy: bool = False):
        self.index = index
        self.parser = StreamParser(xml_tools=xml_tools, python_tools=False)
        self.n_calls = 0
        self.logprobs, self.legacy = logprobs, legacy
        self.pending_lp: list[dict] = []  # logprobs of tokens whose text the parser still holds back
        if prefix:
            self.parser.feed(prefix)  # a forced call's start is part of the output; it emits nothing by itself

    def start(self) -> dict:
        return self._entry({"role": "assistant", "content": ""})

    def feed(self, text: str, engine_reason: str | None = None, logprobs: list | None = None) -> list[dict]:
        """`logprobs`: the `logprobs.content` entries of the tokens behind `text`; they ride on the next entry."""
        self.pending_lp += logprobs or []
        out = [self._delta(self.parser.feed(text))]
        if engine_reason:
            out.append(self._delta(self.parser.finish()))
            out.append(self._entry({}, finish_reason(engine_reason, bool(self.parser.tool_calls), self.legacy)))
        out = [e for e in out if e is not None]
        if out and self.logprobs:
            out[0]["logprobs"] = {"content": self.pending_lp, "refusal": None}
            self.pending_lp = []
        return out

    def _delta(self, pd) -> dict | None:
        d = {}
        if pd.reasoning:
            d["reasoning"] = d["reasoning_content"] = pd.reasoning
        if pd.content:
            d["content"] = pd.content
        if pd.tool_calls and self.legacy:
            d["function_call"] = pd.tool_calls[0]["function"]
        elif pd.tool_calls:
            d["tool_calls"] = []
            for call in pd.tool_calls:
                d["tool_calls"].append({"index": self.n_calls, **call})
                self.n_calls += 1
        return self._entry(d) if d else None

    def _entry(self, delta: dict, reason: str | None = None) -> dict:
        return {"index": self.index, "delta": delta, "logprobs": None, "finish_reason": reason}


def finish_reason(engine_reason: str, has_tool_calls: bool, legacy: bool = False) -> str:
    if engine_reason == "stop" and has_tool_calls:
        return "function_call" if legacy else "tool_calls"
    return {"abort": "stop", "error": "stop"}.get(engine_reason, engine_reason)
