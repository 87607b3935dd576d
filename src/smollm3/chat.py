"""Chat templates, rendered exactly as transformers renders them (jinja2 sandbox, same globals and filters).

`render_template` renders any HF chat template string (a model directory's chat_template.jinja).
`render_chat` renders SmolLM3 conversations with our template (`template="smollm3"`, src/smollm3/templates/) or
byte-identically to the official SmolLM3-3B template (`template="official"`); docs/chat-template.md lists how the
two differ. `tokenize_chat` renders and tokenizes in one pass and returns the assistant mask that transformers'
`return_assistant_tokens_mask` (and so TRL's `assistant_only_loss`) computes.
"""

from __future__ import annotations

import contextvars
import json
from datetime import date as Date
from datetime import datetime
from functools import cache, lru_cache
from pathlib import Path
from typing import ClassVar

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATES = Path(__file__).resolve().parent / "templates"
ROLES = ("system", "user", "assistant", "tool")


class TemplateError(ValueError):
    pass


class ChatError(ValueError):
    """A conversation (or a tool list) that the template cannot render faithfully."""


# ------------------------------------------------------------------------------------------------------------------
# rendering any template the way transformers does


class _Tracker:
    """Output length so far and the (start, end) character spans of `{% generation %}` blocks."""

    def __init__(self):
        self.length = 0
        self.spans: list[tuple[int, int]] = []


_tracker: contextvars.ContextVar[_Tracker | None] = contextvars.ContextVar("generation_tracker", default=None)


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text (transformers' AssistantTracker): it renders its
    body unchanged and, while a tracker is active, records the character span it produced."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_mark", []), [], [], body).set_lineno(lineno)

    def _mark(self, caller):
        text = caller()
        tracker = _tracker.get()
        if tracker is not None:
            # every block rendered before this one has been yielded and counted, as in transformers
            tracker.spans.append((tracker.length, tracker.length + len(text)))
        return text


def _raise_exception(message):
    raise TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' tojson: not HTML-escaped, non-ASCII kept (jinja2's built-in escapes both)
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template does not parse: {e.message} (line {e.lineno})") from None


def render_template(source: str, messages: list[dict], add_generation_prompt: bool = False, date: datetime | None = None,
                    **kwargs) -> str:
    """Render a chat template string. `date` pins `strftime_now` (the SmolLM3 template prints today's date)."""
    return _render(source, messages, add_generation_prompt, date, kwargs)[0]


def _render(source, messages, add_generation_prompt, date, kwargs) -> tuple[str, list[tuple[int, int]]]:
    template = compile_template(source)
    if date is not None:
        kwargs = {**kwargs, "strftime_now": lambda fmt: date.strftime(fmt)}
    tracker = _Tracker()
    token = _tracker.set(tracker)
    parts = []
    try:
        for block in template.generate(messages=messages, add_generation_prompt=add_generation_prompt, **kwargs):
            parts.append(block)
            tracker.length += len(block)
    except jinja2.UndefinedError as e:
        raise TemplateError(f"chat template failed on this conversation: {e}") from None
    finally:
        _tracker.reset(token)
    return "".join(parts), tracker.spans


# ------------------------------------------------------------------------------------------------------------------
# SmolLM3 conversations


def chat_template(name: str = "smollm3") -> str:
    """The source of a named template: "smollm3" (ours, the default) or "official" (our template with the fixes
    switched off, which renders byte-identically to the official SmolLM3-3B template; save it as a model's
    chat_template.jinja to run the real checkpoint exactly as it was trained)."""
    source = _read_template("smollm3")
    if name == "smollm3":
        return source
    if name == "official":
        return "{%- set official_format = true -%}\n" + source
    if name == "chatml":  # reasoning mid-training: plain ChatML, every token trained
        return _read_template("chatml")
    raise ChatError(f"unknown template {name!r}: use 'smollm3', 'official', 'chatml', or pass a template string "
                    "(e.g. a model's chat_template.jinja)")


@cache
def _read_template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


def _template_source(template: str) -> str:
    if not isinstance(template, str):
        raise ChatError(f"template must be a name or a template string, got {type(template).__name__}")
    return template if ("{{" in template or "{%" in template) else chat_template(template)


def render_chat(messages: list[dict], *, template: str = "smollm3", enable_thinking: bool = True,
                xml_tools: list | None = None, python_tools: list | None = None, tools: list | None = None,
                add_generation_prompt: bool = False, date: datetime | Date | None = None, **template_kwargs) -> str:
    """Render a conversation to the exact text the model sees.

    messages: OpenAI-style dicts with `role` in system/user/assistant/tool and string `content`; an assistant
      message may carry `tool_calls` (OpenAI format, arguments a JSON string or an object) and `reasoning_content`.
    template: "smollm3" (default), "official", or a template string (any HF chat template).
    enable_thinking: /think (True) or /no_think (False); a /think or /no_think in the system prompt wins.
    xml_tools / tools: tool specs offered as <tool_call> functions (`tools` wins, as in the official template);
      python_tools: functions callable from <code> blocks. Each a list of dicts (JSON schemas) or strings.
    date: the "Today Date" printed in the system turn (default: today).
    Raises ChatError for input the template would silently mangle (unknown role, non-string content, ...)."""
    source = _template_source(template)
    messages, kwargs = _prepare(messages, enable_thinking, xml_tools, python_tools, tools, date, template_kwargs)
    return _render(source, messages, add_generation_prompt, date, kwargs)[0]


def tokenize_chat(tokenizer, messages: list[dict], *, template: str = "smollm3", add_generation_prompt: bool = False,
                  **template_kwargs) -> tuple[list[int], list[int]]:
    """Render and tokenize a conversation in one pass: (ids, assistant_mask), one 0/1 per id.

    The mask is 1 on every token that overlaps a `{% generation %}` span (the whole assistant turn, from
    <|im_start|>assistant to <|im_end|>\\n), computed from the one encoding of the full text exactly as
    transformers' `apply_chat_template(..., return_assistant_tokens_mask=True)` computes it; TRL's
    `assistant_only_loss` trains on the same tokens. `tokenizer`: a smollm3 Tokenizer or a `tokenizers.Tokenizer`."""
    source = _template_source(template)
    date = template_kwargs.pop("date", None)
    enable_thinking = template_kwargs.pop("enable_thinking", True)
    xml_tools, python_tools, tools = (template_kwargs.pop(k, None) for k in ("xml_tools", "python_tools", "tools"))
    messages, kwargs = _prepare(messages, enable_thinking, xml_tools, python_tools, tools, date, template_kwargs)
    text, spans = _render(source, messages, add_generation_prompt, date, kwargs)
    encoding = getattr(tokenizer, "tok", tokenizer).encode(text, add_special_tokens=False)
    ids = encoding.ids
    mask = [0] * len(ids)
    for start, end in spans:
        if end <= start:
            continue
        first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
        if first is None:
            break
        for t in range(first, last + 1 if last is not None else len(ids)):
            mask[t] = 1
    return ids, mask


# ------------------------------------------------------------------------------------------------------------------
# input checks: a template renders almost anything, so mistakes must be caught before it does


def _prepare(messages, enable_thinking, xml_tools, python_tools, tools, date, extra) -> tuple[list[dict], dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatError(f"messages must be a non-empty list of dicts, got {_describe(messages)}")
    if not isinstance(enable_thinking, bool):
        raise ChatError(f"enable_thinking must be True or False, got {enable_thinking!r}")
    if date is not None and not isinstance(date, Date):
        raise ChatError(f"date must be a datetime.date or datetime.datetime, got {_describe(date)}")
    prepared = [_check_message(i, m) for i, m in enumerate(messages)]
    kwargs = dict(extra, enable_thinking=enable_thinking)
    for name, value in (("xml_tools", xml_tools), ("python_tools", python_tools), ("tools", tools)):
        kwargs[name] = _check_tools(name, value)
    return prepared, kwargs


def _check_message(i: int, message) -> dict:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise ChatError(f"{where} must be a dict with 'role' and 'content', got {_describe(message)}")
    # as transformers does: None-valued keys are dropped, `reasoning`/`thinking` are aliases of `reasoning_content`
    message = {k: v for k, v in message.items() if v is not None}
    role = message.get("role")
    if role not in ROLES:
        raise ChatError(f"{where} has role {role!r}; the roles are {', '.join(ROLES)}")
    content = message.get("content")
    if content is None and not (role == "assistant" and message.get("tool_calls")):
        raise ChatError(f"{where} ({role}) has no 'content'; give it a string (only an assistant message with "
                        "tool_calls may omit it)")
    if content is not None and not isinstance(content, str):
        raise ChatError(f"{where} ({role}) content must be a string, got {_describe(content)}; "
                        "join text parts into one string first")
    for key in ("reasoning_content", "thinking", "reasoning"):
        if key in message:
            if not isinstance(message[key], str):
                raise ChatError(f"{where}.{key} must be a string, got {_describe(message[key])}")
            message = {"thinking": message[key], **message, "reasoning_content": message[key]}
            break
    if "tool_calls" in message:
        if role != "assistant":
            raise ChatError(f"{where} ({role}) has tool_calls; only assistant messages make tool calls")
        _check_tool_calls(where, message["tool_calls"])
    return message


def _check_tool_calls(where: str, calls) -> None:
    if not isinstance(calls, list):
        raise ChatError(f"{where}.tool_calls must be a list, got {_describe(calls)}")
    for j, call in enumerate(calls):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ChatError(f"{where}.tool_calls[{j}] must look like {{'type': 'function', 'function': "
                            f"{{'name': str, 'arguments': ...}}}}, got {call!r}")
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError as e:
                raise ChatError(f"{where}.tool_calls[{j}] arguments are not valid JSON ({e.msg}): {fn['arguments']!r}"
                                ) from None
        if args is not None and not isinstance(args, dict):
            raise ChatError(f"{where}.tool_calls[{j}] arguments must be a JSON object, got {fn['arguments']!r}")


def _check_tools(name: str, tools):
    if tools is None:
        return None
    if not isinstance(tools, (list, tuple)):
        raise ChatError(f"{name} must be a list of tool specs (dicts or strings), got {_describe(tools)}; "
                        f"wrap a single tool in a list: {name}=[tool]")
    for j, tool in enumerate(tools):
        if not isinstance(tool, (dict, str)):
            raise ChatError(f"{name}[{j}] must be a dict (a JSON schema) or a string, got {_describe(tool)}")
    return list(tools)


def _describe(x) -> str:
    text = repr(x)
    return f"{type(x).__name__} {text[:60] + '...' if len(text) > 60 else text}"
