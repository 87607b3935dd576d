"""OpenAI request checking and response shapes, independent of the web framework.

Every check raises APIError with an OpenAI-style body, so a bad request is a 4xx that names the parameter, never
a 500. Conventions follow the OpenAI API and vLLM's extensions (top_k, min_p, repetition_penalty, stop_token_ids,
ignore_eos, chat_template_kwargs, `reasoning` / legacy `reasoning_content`).
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


def sampling_params(body: dict, prompt_len: int, max_model_len: int, default_max_tokens: int | None,
                    prompt_param: str = "messages") -> SamplingParams:
    """The request's sampling fields -> SamplingParams; unset fields stay None (the model's defaults)."""
    for key in ("presence_penalty", "frequency_penalty"):
        if get_field(body, key, (int, float), "a number", 0) != 0:
            raise APIError(400, f"'{key}' is not supported by this server; use repetition_penalty", param=key)
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs") not in (None, 0):
        raise APIError(400, "logprobs are not supported by this server", param="logprobs")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise APIError(400, "response_format other than {'type': 'text'} is not supported by this server",
                       param="response_format")
    if prompt_len >= max_model_len:
        raise APIError(400, f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
                            f"has {prompt_len} tokens. Please reduce the length of the prompt.",
                       param=prompt_param, code="context_length_exceeded")
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
    )


def n_choices(body: dict) -> int:
    return get_field(body, "n", int, "an integer", 1, lambda v: 1 <= v <= 64, "must be between 1 and 64")


def stream_flags(body: dict) -> tuple[bool, bool]:
    stream = get_field(body, "stream", bool, "a boolean", False)
    opts = get_field(body, "stream_options", dict, "an object", {})
    include_usage = opts.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise APIError(400, "'stream_options.include_usage' must be a boolean", param="stream_options")
    return stream, include_usage


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


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_message(parsed) -> dict:
    """ParsedOutput -> an assistant message; content is null when the answer is only tool calls."""
    msg = {"role": "assistant", "content": parsed.content or (None if parsed.tool_calls else "")}
    if parsed.tool_calls:
        msg["tool_calls"] = parsed.tool_calls
    msg["reasoning"] = parsed.reasoning
    msg["reasoning_content"] = parsed.reasoning  # the name vLLM used before `reasoning`; clients still read it
    return msg


def chat_choice(index: int, text: str, engine_reason: str, *, prefix: str = "", xml_tools: bool = False) -> dict:
    """One choice of a chat.completion from the engine's output text (after the forced `prefix`, if any)."""
    parser = StreamParser(xml_tools=xml_tools, python_tools=False)
    parser.feed(prefix + text)
    parser.finish()
    parsed = parser.result()
    return {"index": index, "message": chat_message(parsed), "logprobs": None,
            "finish_reason": finish_reason(engine_reason, bool(parsed.tool_calls))}


class ChatChoiceStream:
    """One choice of a streamed chat completion: text deltas in, `choices[]` entries of chat.completion.chunk out.
    Reasoning goes out as `reasoning` (and `reasoning_content`), answers as `content`, each tool call whole in one
    `tool_calls` delta with its index, and the last entry carries the finish_reason."""

    def __init__(self, index: int, *, prefix: str = "", xml_tools: bool = False):
        self.index = index
        self.parser = StreamParser(xml_tools=xml_tools, python_tools=False)
        self.n_calls = 0
        if prefix:
            self.parser.feed(prefix)  # a forced call's start is part of the output; it emits nothing by itself

    def start(self) -> dict:
        return self._entry({"role": "assistant", "content": ""})

    def feed(self, text: str, engine_reason: str | None = None) -> list[dict]:
        out = [self._delta(self.parser.feed(text))]
        if engine_reason:
            out.append(self._delta(self.parser.finish()))
            out.append(self._entry({}, finish_reason(engine_reason, bool(self.parser.tool_calls))))
        return [e for e in out if e is not None]

    def _delta(self, pd) -> dict | None:
        d = {}
        if pd.reasoning:
            d["reasoning"] = d["reasoning_content"] = pd.reasoning
        if pd.content:
            d["content"] = pd.content
        if pd.tool_calls:
            d["tool_calls"] = []
            for call in pd.tool_calls:
                d["tool_calls"].append({"index": self.n_calls, **call})
                self.n_calls += 1
        return self._entry(d) if d else None

    def _entry(self, delta: dict, reason: str | None = None) -> dict:
        return {"index": self.index, "delta": delta, "logprobs": None, "finish_reason": reason}


def finish_reason(engine_reason: str, has_tool_calls: bool) -> str:
    if engine_reason == "stop" and has_tool_calls:
        return "tool_calls"
    return {"abort": "stop", "error": "stop"}.get(engine_reason, engine_reason)
