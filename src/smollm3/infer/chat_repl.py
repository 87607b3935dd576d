"""`smollm3 chat`: a streaming chat REPL on the engine.

Type a message and press Enter. A line ending in a backslash continues on the next line; a line of three double
quotes starts and ends a multi-line block. Commands:
  /think, /no_think        reasoning mode for the next turns (SmolLM3 templates; others ignore it)
  /reasoning show|hide     print or hide the model's <think> reasoning
  /system TEXT             set the system prompt (and start over)
  /tool TEXT               answer the last tool call with TEXT (a tool message), and let the model go on
  /clear                   forget the conversation
  /help, /exit             (Ctrl-D exits too; Ctrl-C stops a reply)
The history keeps each reply's answer and tool calls but not its reasoning: the model never sees old thoughts.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

from smollm3.chat import render_chat
from smollm3.infer.engine import Engine
from smollm3.infer.openai_api import inline_tool_calls
from smollm3.infer.sampling import SamplingParams
from smollm3.parsing import StreamParser

DIM, RESET = "\033[2m", "\033[0m"


def load_tools(path: str | Path) -> list[dict]:
    """A JSON file with a list of OpenAI tool specs ({"type": "function", "function": {...}}) or bare functions."""
    tools = json.loads(Path(path).read_text())
    if not isinstance(tools, list):
        raise ValueError(f"{path}: expected a JSON array of tools")  # noqa: TRY004 (bad file content: the CLI reports ValueError)
    out = []
    for j, t in enumerate(tools):
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict):
            out.append(t)
        elif isinstance(t, dict) and isinstance(t.get("name"), str):
            out.append({"type": "function", "function": t})
        else:
            raise ValueError(f"{path}: tools[{j}] is neither {{'type': 'function', 'function': {{...}}}} nor a "
                             "function with a 'name'")
    return out


class ChatSession:
    def __init__(self, engine: Engine, template: str, params: SamplingParams, *, system: str | None = None,
                 tools: list[dict] | None = None, enable_thinking: bool = True, show_reasoning: bool = True,
                 out=None, color: bool = False):
        self.engine, self.template, self.params = engine, template, params
        self.tools = tools or None
        self.enable_thinking, self.show_reasoning = enable_thinking, show_reasoning
        self.out = out or sys.stdout
        self.color = color
        self.messages: list[dict] = []
        self._in_reasoning = False
        self.system = system
        if system:
            self.messages.append({"role": "system", "content": system})

    def clear(self):
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def send(self, text: str, role: str = "user"):
        """Add a user (or tool) message, stream the reply to `out`, and keep it in the history. -> ParsedOutput"""
        self.messages.append({"role": role, "content": text})
        prompt = render_chat(inline_tool_calls(self.messages, self.template), template=self.template,
                             enable_thinking=self.enable_thinking,
                             tools=self.tools, add_generation_prompt=True)
        ids = self.engine.tokenizer.encode(prompt)
        room = self.engine.max_model_len - len(ids)
        if room < 1:
            self.messages.pop()
            raise ValueError(f"the conversation has {len(ids)} tokens, the context {self.engine.max_model_len}; "
                             "/clear to start over")
        params = dataclasses.replace(self.params, max_tokens=min(self.params.max_tokens, room))
        parser = StreamParser(xml_tools=bool(self.tools), python_tools=False)
        self._in_reasoning = False
        req = self.engine.add_request(ids, params, on_update=lambda r: self.show(parser.feed(r.take_delta())))
        try:
            while not req.finished:
                self.engine.step()
        except KeyboardInterrupt:
            self.engine.abort(req)
            while not req.finished:
                self.engine.step()
            self._write(" [stopped]")
        self.show(parser.finish())
        self._write("\n")
        if req.finish_reason == "length":
            self._write(self._dim(f"[reply cut at {len(req.output_ids)} tokens]\n"))
        parsed = parser.result()
        self.remember(parsed)
        return parsed

    def show(self, delta):
        """Print one ParsedDelta: reasoning dimmed (or not at all), then the answer and any tool calls."""
        if delta.reasoning and self.show_reasoning:
            if not self._in_reasoning:
                self._write(self._dim("[thinking] "))
                self._in_reasoning = True
            self._write(self._dim(delta.reasoning))
        if delta.content or delta.tool_calls:
            if self._in_reasoning:
                self._write("\n\n")
                self._in_reasoning = False
            self._write(delta.content)
            for call in delta.tool_calls:
                fn = call["function"]
                self._write(f"\n[tool call] {fn['name']}({fn['arguments']})\n")

    def remember(self, parsed):
        """Keep a reply in the history: its answer and tool calls, never its reasoning."""
        reply = {"role": "assistant", "content": parsed.content}
        if parsed.tool_calls:
            reply["tool_calls"] = parsed.tool_calls
        self.messages.append(reply)

    def _dim(self, text: str) -> str:
        return f"{DIM}{text}{RESET}" if self.color else text

    def _write(self, text: str):
        if text:
            self.out.write(text)
            self.out.flush()


def read_message(read=input) -> str | None:
    """One message from the user: a line, backslash-continued lines, or a block between lines of three quotes.
    None at end of input."""
    try:
        line = read("> ")
    except EOFError:
        return None
    if line.strip() == '"""':
        lines = []
        while True:
            try:
                line = read("")
            except EOFError:
                break
            if line.strip() == '"""':
                break
            lines.append(line)
        return "\n".join(lines)
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        try:
            line = read(". ")
        except EOFError:
            break
    lines.append(line)
    return "\n".join(lines)


def repl(session: ChatSession, read=input):
    out = session._write
    out("smollm3 chat: /help for commands, Ctrl-D to quit. Reasoning mode: "
        f"{'/think' if session.enable_thinking else '/no_think'}\n")
    while True:
        text = read_message(read)
        if text is None:
            out("\n")
            return
        cmd, _, arg = text.strip().partition(" ")
        if cmd in ("/exit", "/quit"):
            return
        if cmd == "/help":
            out(__doc__.split("Commands:\n", 1)[1])
        elif cmd in ("/think", "/no_think"):
            session.enable_thinking = cmd == "/think"
            out(f"reasoning mode: {cmd}\n")
        elif cmd == "/reasoning" and arg in ("show", "hide"):
            session.show_reasoning = arg == "show"
            out(f"reasoning is {'shown' if session.show_reasoning else 'hidden'}\n")
        elif cmd == "/system":
            session.system = arg or None
            session.clear()
            out("system prompt set; conversation cleared\n")
        elif cmd == "/clear":
            session.clear()
            out("conversation cleared\n")
        elif cmd == "/tool":
            _send(session, arg, "tool")
        elif re.fullmatch(r"/[a-z_]+", cmd):
            out(f"unknown command {cmd}; /help lists them\n")
        elif text.strip():
            _send(session, text, "user")


def _send(session: ChatSession, text: str, role: str):
    try:
        session.send(text, role)
    except ValueError as e:
        session._write(f"error: {e}\n")
