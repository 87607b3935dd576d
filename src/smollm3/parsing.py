"""Model output → reasoning, content and OpenAI-style tool calls, whole or streamed.

SmolLM3 writes
  <think>\\n...\\n</think>\\n                      reasoning (think mode; in no_think mode the prompt pre-fills it empty)
  <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>     a call of an XML tool (`tools` / `xml_tools`)
  <code>get_weather(city="Paris")</code>           Python run in a stateful notebook (`python_tools`)
and plain text (the answer) around them. We return

  reasoning   the text inside a leading <think>...</think>, stripped; None when the output has no think block.
              An unclosed <think> (the output was cut off while thinking) is all reasoning, as vLLM's and
              llama.cpp's reasoning parsers do, so a stream never has to take back reasoning it already sent.
  content     everything else, whitespace-stripped at both ends, with well-formed tool blocks taken out.
  tool_calls  OpenAI format: {"id": "call_...", "type": "function",
                              "function": {"name": str, "arguments": "<JSON object as a string>"}}.
              A <code> block becomes a call of the function "python" with arguments {"code": "<the code>"}.

A tool block that is malformed (not JSON, no name, arguments not an object, empty code) or truncated (no closing
tag) is left in the content verbatim: nothing is lost and nothing raises. Tags inside the reasoning are reasoning.

`parse_output(text)` parses a whole output; `StreamParser` parses it delta by delta with the same result:
joining the deltas of `feed(...)` and `finish()` gives exactly `parse_output` of the joined text. `answer_text(text)`
is the cheap cut that answer checkers use: the raw text after the think block, tool blocks and whitespace kept.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
CODE_OPEN, CODE_CLOSE = "<code>", "</code>"
PYTHON_TOOL = "python"  # the function name under which <code> blocks are returned


@dataclass
class ParsedOutput:
    content: str
    reasoning: str | None = None
    tool_calls: list[dict] = field(default_factory=list)


@dataclass
class ParsedDelta:
    """What one `feed` adds: maps one-to-one onto an OpenAI chat.completion.chunk `delta` (reasoning text, content
    text, complete tool calls; add an `index` to each tool call when streaming). Reasoning always precedes content."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)

    def __bool__(self):
        return bool(self.reasoning or self.content or self.tool_calls)


def parse_output(text: str, *, xml_tools: bool = True, python_tools: bool = True) -> ParsedOutput:
    """Parse a complete model output (decoded without the stop token). `xml_tools` / `python_tools` = False leave
    <tool_call> / <code> blocks in the content (e.g. when no tools of that kind were offered)."""
    parser = StreamParser(xml_tools=xml_tools, python_tools=python_tools)
    parser.feed(text)
    parser.finish()
    return parser.result()


def answer_text(text: str) -> str:
    """The answer part of a model output, unparsed: what follows the last </think>; without one, what precedes an
    unclosed <think> (cut off while thinking: no answer yet); the whole text when there is no think block."""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    return text.split(THINK_OPEN, 1)[0]


def tool_call(name: str, arguments: dict) -> dict:
    """An OpenAI-style tool call with a fresh id."""
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


class StreamParser:
    """Incremental parser: `feed(delta) -> ParsedDelta` as text arrives, `finish() -> ParsedDelta` at the end.

    Text that might still turn into a tag (a trailing "<too") or into trailing whitespace is held back until the
    next delta decides it, so what has been emitted is never taken back."""

    def __init__(self, *, xml_tools: bool = True, python_tools: bool = True):
        self.blocks = {}
        if xml_tools:
            self.blocks[TOOL_OPEN] = TOOL_CLOSE
        if python_tools:
            self.blocks[CODE_OPEN] = CODE_CLOSE
        self.state = "start"  # start -> reasoning -> content <-> block
        self.buffer = ""  # undecided text
        self.block_open = ""  # the opening tag of the block being read
        self.pending_ws = {"reasoning": "", "content": ""}  # whitespace held until more text follows
        self.started = {"reasoning": False, "content": False}
        self.reasoning: str | None = None
        self.content = ""
        self.tool_calls: list[dict] = []
        self.finished = False

    # ---- public
    def feed(self, text: str) -> ParsedDelta:
        if self.finished:
            raise RuntimeError("StreamParser.feed after finish(); make a new parser per output")
        self.buffer += text
        delta = ParsedDelta()
        self._advance(delta, final=False)
        return delta

    def finish(self) -> ParsedDelta:
        """Flush everything held back: an unclosed block becomes content, trailing whitespace is dropped."""
        delta = ParsedDelta()
        if not self.finished:
            self._advance(delta, final=True)
            if self.state == "block":  # truncated tool block: verbatim content
                self._emit(delta, "content", self.block_open + self.buffer)
            elif self.buffer:
                self._emit(delta, "reasoning" if self.state == "reasoning" else "content", self.buffer)
            self.buffer = ""
            self.finished = True
        return delta

    def result(self) -> ParsedOutput:
        """Everything parsed so far, as one ParsedOutput."""
        return ParsedOutput(content=self.content, reasoning=self.reasoning, tool_calls=list(self.tool_calls))

    # ---- the state machine
    def _advance(self, delta: ParsedDelta, final: bool) -> None:
        while True:
            if self.state == "start":
                head = self.buffer.lstrip()
                if head.startswith(THINK_OPEN):
                    self.buffer = head[len(THINK_OPEN):]
                    self.state, self.reasoning = "reasoning", ""
                elif head and THINK_OPEN.startswith(head) and not final:
                    return  # "<thi": wait
                elif head or final:
                    self.state = "content"
                else:
                    return  # only whitespace so far
            elif self.state == "reasoning":
                end = self.buffer.find(THINK_CLOSE)
                if end < 0:
                    self._emit_safe(delta, "reasoning", (THINK_CLOSE,), final)
                    return
                self._emit(delta, "reasoning", self.buffer[:end])
                self.buffer = self.buffer[end + len(THINK_CLOSE):]
                self.state = "content"
            elif self.state == "content":
                starts = [(i, tag) for tag in self.blocks if (i := self.buffer.find(tag)) >= 0]
                if not starts:
                    self._emit_safe(delta, "content", tuple(self.blocks), final)
                    return
                i, tag = min(starts)
                self._emit(delta, "content", self.buffer[:i])
                self.buffer = self.buffer[i + len(tag):]
                self.state, self.block_open = "block", tag
            else:  # block: wait for the closing tag
                close = self.blocks[self.block_open]
                end = self.buffer.find(close)
                if end < 0:
                    return
                body = self.buffer[:end]
                self.buffer = self.buffer[end + len(close):]
                call = _block_to_call(self.block_open, body)
                if call is None:  # malformed: keep it as text
                    self._emit(delta, "content", self.block_open + body + close)
                else:
                    self.tool_calls.append(call)
                    delta.tool_calls.append(call)
                self.state = "content"

    def _emit_safe(self, delta, kind, tags, final):
        """Emit the buffer except a tail that could be the start of one of `tags`."""
        keep = 0 if final else _partial_tag_len(self.buffer, tags)
        self._emit(delta, kind, self.buffer[:len(self.buffer) - keep])
        self.buffer = self.buffer[len(self.buffer) - keep:]

    def _emit(self, delta, kind, text):
        """Append text to reasoning or content, stripping leading whitespace and holding trailing whitespace."""
        if not self.started[kind]:
            text = text.lstrip()
        if not text:
            return
        body = text.rstrip()
        if not body:
            self.pending_ws[kind] += text
            return
        out = self.pending_ws[kind] + body
        self.pending_ws[kind] = text[len(body):]
        self.started[kind] = True
        if kind == "reasoning":
            self.reasoning = (self.reasoning or "") + out
            delta.reasoning += out
        else:
            self.content += out
            delta.content += out


def _partial_tag_len(text: str, tags) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `tags`."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


def _block_to_call(tag: str, body: str) -> dict | None:
    if tag == CODE_OPEN:
        code = body.strip("\n")
        return tool_call(PYTHON_TOOL, {"code": code}) if code.strip() else None
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models double-encode the arguments
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return tool_call(obj["name"], args)
