"""Chat templates, rendered exactly as transformers renders them (jinja2 sandbox, same globals and filters).

`render_template` renders any HF chat template string (a model directory's chat_template.jinja).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(ValueError):
    pass


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text (transformers' AssistantTracker); it renders
    its body unchanged and, when asked, records the character spans it produced."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_mark", []), [], [], body).set_lineno(lineno)

    def _mark(self, caller):
        text = caller()
        spans = getattr(self.environment, "_generation_spans", None)
        if spans is not None:
            spans.append(text)
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
    template = compile_template(source)
    extra = {}
    if date is not None:
        extra["strftime_now"] = lambda fmt: date.strftime(fmt)
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **extra, **kwargs)
