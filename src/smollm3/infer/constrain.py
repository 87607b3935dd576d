"""Constrained decoding: forced tool calls (tool_choice "required" or a named function) and JSON output
(response_format json_object / json_schema).

The server puts the fixed start of the call into the prompt (`<tool_call>\\n{"name": "`, plus the name and
`"arguments": ` when one function is forced) and gives the request a ToolCallConstraint for the rest: the function
name (one of the tools), the arguments as a JSON object following that function's JSON schema (declared
properties only, required ones present, types, enums), then `}` and `</tool_call>`. At each step the engine walks
the candidate tokens in sampling order and takes the first one that keeps the output a prefix of this grammar, so
the call always parses, whatever the model's quality. A JSONConstraint does the same for a whole output: an
optional `<think>...</think>` block (when thinking is on), then one JSON object following the response schema.

The check re-parses the output from its start with a recursive-descent parser that stops cleanly when the text
runs out. What the output already holds is not parsed again, though: a value that ended inside the committed text
(its one character of lookahead included) parses the same however the text goes on, so its end is remembered by
(position, schema, depth); an object or array still open resumes after its last comma, a string still being
written where its scan stopped. A step then costs about the nesting depth at the cursor, not the length of the
output (without this a 4 KB JSON answer took 6 s of grammar checks and an 8 KB one 25 s, during which every other
stream of the engine waited).
"""

from __future__ import annotations

import json
import re

_WS = " \t\n\r"
MAX_WS = 16  # a run of whitespace longer than this is refused (it stops degenerate "\n\n\n..." loops)
MAX_DEPTH = 32  # deeper nesting is refused: the parser recurses, and a runaway "[[[[..." must not exhaust the stack
_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_INTEGER = re.compile(r"-?(0|[1-9]\d*)")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for function names


class _End(Exception):
    """The text ran out while still valid: it is a prefix of the grammar."""


class _Bad(Exception):
    """The text left the grammar."""


ANY: dict = {}  # the schema of any JSON value; one object, so that the memo's keys (ids) stay the same; never mutated


class _Parser:
    """`memo` (kept by the constraint between checks) remembers parses inside `text[:stable]`, the committed output:
    (start, id(schema), depth) -> (schema, end) for a value that ended before `stable`; ("object" | "array", start,
    id(schema), depth) -> (schema, position after its last comma[, keys used]) for a container still open; ("str",
    start) -> how far a string's scan got; ("types", id(schema)) -> the alternatives of a list of types."""

    def __init__(self, text: str, memo: dict | None = None, stable: int = 0):
        self.s, self.i = text, 0
        self.depth = 0
        self.memo = {} if memo is None else memo
        self.stable = stable if memo is not None else 0
        self.open_ended = 0  # alternatives that returned while an earlier one ran out of text (see alternatives)

    def peek(self) -> str:
        if self.i >= len(self.s):
            raise _End
        return self.s[self.i]

    def take(self) -> str:
        c = self.peek()
        self.i += 1
        return c

    def ws(self):
        start = self.i
        while self.i < len(self.s) and self.s[self.i] in _WS:
            self.i += 1
        if self.i - start > MAX_WS:
            raise _Bad

    def lit(self, word: str):
        for ch in word:
            if self.take() != ch:
                raise _Bad

    def choice(self, options: list[str]) -> str:
        """Match one of `options` (the longest one the text continues into)."""
        got = ""
        while True:
            if got in options and not (self.i < len(self.s) and any(
                    o.startswith(got + self.s[self.i]) for o in options)):
                if self.i >= len(self.s) and any(o != got and o.startswith(got) for o in options):
                    raise _End  # a longer option may still follow
                return got
            got += self.take()
            if not any(o.startswith(got) for o in options):
                raise _Bad

    # ---- JSON, guided by a JSON schema (the subset tool parameters use)

    def value(self, schema: dict):
        key = (self.i, id(schema), self.depth)
        known = self.memo.get(key)
        if known is not None and known[0] is schema:  # the entry holds its schema: the id cannot be another's
            self.i = known[1]
            return
        if self.depth >= MAX_DEPTH:
            raise _Bad
        open_ended = self.open_ended
        self.depth += 1
        try:
            self._value(schema)
        finally:
            self.depth -= 1
        if self.i < self.stable and self.open_ended == open_ended:
            self.memo[key] = (schema, self.i)

    def _value(self, schema: dict):
        self.ws()
        schema = schema if isinstance(schema, dict) else ANY
        if "enum" in schema or "const" in schema:
            values = schema["enum"] if "enum" in schema else [schema["const"]]
            self.choice([json.dumps(v, ensure_ascii=False) for v in values])
            return
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                return self.alternatives(schema[key])
        t = schema.get("type")
        if isinstance(t, list):
            known = self.memo.get(("types", id(schema)))
            if known is None or known[0] is not schema:  # one variant object per type, kept: their ids key the memo
                known = self.memo[("types", id(schema))] = (schema, [{**schema, "type": x} for x in t])
            return self.alternatives(known[1])
        if t is None:  # any JSON value: the first character decides
            c = self.peek()
            t = {"{": "object", "[": "array", '"': "string", "t": "boolean", "f": "boolean", "n": "null"}.get(
                c, "number" if c == "-" or c.isdigit() else None)
            if t is None:
                raise _Bad
            schema = {"type": t}
        if t == "object":
            self.object(schema)
        elif t == "array":
            self.array(schema)
        elif t == "string":
            self.string()
        elif t in ("number", "integer"):
            self.number(_INTEGER if t == "integer" else _NUMBER)
        elif t == "boolean":
            self.choice(["true", "false"])
        elif t == "null":
            self.lit("null")
        else:
            raise _Bad

    def alternatives(self, schemas: list):
        start, ran_out = self.i, False
        for s in schemas:
            self.i = start
            try:
                self.value(s)
                if ran_out:  # an earlier alternative may still match once more text comes: not final, not memoized
                    self.open_ended += 1
                return
            except _Bad:
                continue
            except _End:
                ran_out = True
        if ran_out:
            raise _End
        raise _Bad

    def string(self):
        self.lit('"')
        key = ("str", self.i)
        self.i = max(self.i, self.memo.get(key, 0))  # resume the scan where it stopped inside the committed text
        while True:
            if self.i <= self.stable:  # between characters, not inside an escape
                self.memo[key] = self.i
            c = self.take()
            if c == '"':
                return
            if c == "\\":
                e = self.take()
                if e == "u":
                    for _ in range(4):
                        if self.take() not in "0123456789abcdefABCDEF":
                            raise _Bad
                elif e not in '"\\/bfnrt':
                    raise _Bad
            elif ord(c) < 0x20:
                raise _Bad

    def number(self, pattern: re.Pattern):
        start = self.i
        allowed = "0123456789-" + ("" if pattern is _INTEGER else "+.eE")
        while self.i < len(self.s) and self.s[self.i] in allowed:
            self.i += 1
        text = self.s[start:self.i]
        if self.i >= len(self.s):  # may continue: valid if some completion is a number
            if pattern.fullmatch(text) or pattern.fullmatch(text + "0"):
                raise _End
            raise _Bad
        if not pattern.fullmatch(text):
            raise _Bad

    def object(self, schema: dict):
        # declared properties (even none) are the only ones written: a valid instance whatever additionalProperties
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else None
        required = set(schema.get("required") or []) if props is not None else set()
        self.lit("{")
        here, known = self.resume("object", schema)
        open_ended = self.open_ended
        if known is not None:  # after the last comma the committed text holds, with the keys used before it
            self.i, used = known[0], set(known[1])
        else:
            used = set()
            self.ws()
            if self.peek() == "}":
                if required - used:
                    raise _Bad
                self.i += 1
                return
        while True:
            self.ws()
            if props is not None:  # only the declared properties, each at most once
                left = [json.dumps(k, ensure_ascii=False) for k in props if k not in used]
                if not left:
                    raise _Bad
                key = json.loads(self.choice(left))
            else:
                start = self.i
                self.string()
                key = json.loads(self.s[start:self.i])
            used.add(key)
            self.ws()
            self.lit(":")
            self.value(props.get(key, ANY) if props is not None else ANY)
            self.ws()
            c = self.take()
            if c == "}":
                if required - used:
                    raise _Bad
                return
            if c != "," or (props is not None and len(used) == len(props)):  # no key left to follow a comma
                raise _Bad
            self.remember(here, schema, open_ended, self.i, frozenset(used))

    def array(self, schema: dict):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else ANY
        self.lit("[")
        here, known = self.resume("array", schema)
        open_ended = self.open_ended
        if known is not None:  # after the last comma the committed text holds
            self.i = known[0]
        else:
            self.ws()
            if self.peek() == "]":
                self.i += 1
                return
        while True:
            self.value(items)
            self.ws()
            c = self.take()
            if c == "]":
                return
            if c != ",":
                raise _Bad
            self.remember(here, schema, open_ended, self.i)

    def resume(self, kind: str, schema: dict) -> tuple[tuple, tuple | None]:
        """A container opened here: (its memo key, what was remembered after its last comma, or None)."""
        here = (kind, self.i, id(schema), self.depth)
        known = self.memo.get(here)
        return here, (known[1:] if known is not None and known[0] is schema else None)

    def remember(self, here: tuple, schema: dict, open_ended: int, *state):
        """A container's scan got past a comma inside the committed text: the next parse may start there."""
        if self.i <= self.stable and self.open_ended == open_ended:
            self.memo[here] = (schema, *state)


class GrammarConstraint:
    """What the engine drives: `first_accepted` picks a token, `advance` appends its text, `done` ends the
    request. Subclasses say in `_check(text)` whether an output is "done", "partial" (a prefix) or "bad"."""

    def __init__(self):
        self.text = ""
        self.done = False
        self.memo: dict = {}  # _Parser's, over self.text
        self._tried: tuple[str, str] | None = None  # (text, state) of the last accepted candidate, for advance

    def accepts(self, text: str) -> bool:
        """Would the output stay inside the grammar with `text` appended?"""
        if not text or "\ufffd" in text:  # incomplete UTF-8 pieces are never accepted
            return False
        state = self._check(self.text + text)
        if state != "bad":
            self._tried = (text, state)
        return state != "bad"

    def first_accepted(self, candidates) -> int | None:
        """The first (token id, text) of `candidates` that `accepts`. Most refusals are decided by the first
        character, so each first character is checked once."""
        refused = set()
        for i, text in candidates:
            if not text or text[0] in refused:
                continue
            if not self.accepts(text[0]):
                refused.add(text[0])
                continue
            if self.accepts(text):
                return i
        return None

    def advance(self, text: str):
        tried, self._tried = self._tried, None
        self.text += text
        state = tried[1] if tried is not None and tried[0] == text else self._check(self.text)
        if state == "bad":
            raise ValueError(f"{self.text[-200:]!r} left the {type(self).__name__} grammar")
        self.done = state == "done"

    def _check(self, text: str) -> str:
        raise NotImplementedError

    def _parser(self, text: str) -> _Parser:
        """A parser over `text` (the output so far, maybe with a candidate after it) that reuses what is known of
        the committed output."""
        return _Parser(text, self.memo, len(self.text))


class ToolCallConstraint(GrammarConstraint):
    """The rest of a forced tool call. `tools` maps function names to their parameter schemas; with `forced` set,
    the prompt already ends in `{"name": "<forced>", "arguments": ` and only the arguments and the closing
    remain; otherwise it ends in `{"name": "` and the name comes first."""

    def __init__(self, tools: dict[str, dict], forced: str | None = None):
        super().__init__()
        self.tools, self.forced = tools, forced
        self.arguments = {name: {**(schema or {}), "type": "object"} for name, schema in tools.items()}

    def _check(self, text: str) -> str:
        p = self._parser(text)
        try:
            if self.forced is not None:
                name = self.forced
            else:
                name = p.choice([n + '"' for n in self.tools])[:-1]
                p.ws()
                p.lit(",")
                p.ws()
                p.lit('"arguments"')
                p.ws()
                p.lit(":")
            p.value(self.arguments[name])
            p.ws()
            p.lit("}")
            p.ws()
            p.lit("</tool_call>")
        except _End:
            return "partial"
        except _Bad:
            return "bad"
        return "done" if p.i == len(text) else "bad"


class JSONConstraint(GrammarConstraint):
    """A whole output that is one JSON object following `schema` (a checked schema: see response_format.py;
    None = any object), optionally after a `<think>...</think>` block when `think` is on. The output is done when
    the object closes (trailing whitespace allowed)."""

    def __init__(self, schema: dict | None = None, think: bool = False):
        super().__init__()
        self.schema = {"type": "object", **(schema or {})}
        self.think = think

    def _check(self, text: str) -> str:
        p = self._parser(text)
        try:
            if self.think:
                start = len(text) - len(text.lstrip(_WS))
                head = text[start:]
                if head.startswith(THINK_OPEN):
                    end = head.find(THINK_CLOSE, len(THINK_OPEN))
                    if end < 0:
                        return "partial"  # reasoning: any text until </think>
                    p.i = start + end + len(THINK_CLOSE)
                elif head and THINK_OPEN.startswith(head):
                    return "partial"
            p.value(self.schema)
            p.ws()
        except _End:
            return "partial"
        except _Bad:
            return "bad"
        return "done" if p.i == len(text) else "bad"
