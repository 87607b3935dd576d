"""`smollm3 chat`: the REPL streams answers, toggles /think and reasoning display, reads multi-line input and
tools from a file, and keeps the history without reasoning."""

import io
import json
import subprocess
import sys

import pytest

from smollm3.infer.chat_repl import ChatSession, load_tools, read_message
from smollm3.infer.sampling import SamplingParams
from smollm3.parsing import StreamParser

THINKING = "<think>\nParis is the capital.\n</think>\nThe capital of France is Paris."


def test_read_message_multiline():
    lines = iter(["first \\", "second", '"""', "a", "", "b", '"""', "last"])

    def read(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None  # what input() raises at the end of stdin
    assert read_message(read) == "first \nsecond"
    assert read_message(read) == "a\n\nb"
    assert read_message(read) == "last"
    assert read_message(read) is None


def test_load_tools(tmp_path):
    f = tmp_path / "tools.json"
    f.write_text(json.dumps([{"name": "get_weather", "parameters": {"type": "object"}},
                             {"type": "function", "function": {"name": "get_time"}}]))
    assert [t["function"]["name"] for t in load_tools(f)] == ["get_weather", "get_time"]
    f.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="array"):
        load_tools(f)


@pytest.mark.parametrize("show", [True, False])
def test_reasoning_shown_or_hidden_and_never_remembered(show):
    out = io.StringIO()
    session = ChatSession(engine=None, template="smollm3", params=SamplingParams(), show_reasoning=show, out=out)
    parser = StreamParser()
    for i in range(0, len(THINKING), 5):
        session.show(parser.feed(THINKING[i:i + 5]))
    session.show(parser.finish())
    session.remember(parser.result())
    text = out.getvalue()
    assert text.endswith("The capital of France is Paris.")
    assert ("[thinking] Paris is the capital." in text) == show
    assert session.messages == [{"role": "assistant", "content": "The capital of France is Paris."}]


@pytest.mark.real_weights
def test_session_streams_and_keeps_history(smollm2_llm):
    out = io.StringIO()
    session = ChatSession(smollm2_llm.engine, smollm2_llm.chat_template,
                          SamplingParams(max_tokens=16, temperature=0.0), system="You are terse.", out=out)
    parsed = session.send("What is the capital of France?")
    assert "Paris" in parsed.content and parsed.content in out.getvalue()
    parsed2 = session.send("And of Germany?")
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert session.messages[2] == {"role": "assistant", "content": parsed.content}
    assert session.messages[4]["content"] == parsed2.content
    session.clear()
    assert session.messages == [{"role": "system", "content": "You are terse."}]


@pytest.mark.real_weights
def test_chat_cli(smollm2_dir, tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}}}]))
    script = "\n".join(["What is the capital of France?", "/no_think", "/reasoning hide", "/bogus",
                        '"""', "Say", "hello.", '"""', "/exit", ""])
    proc = subprocess.run([sys.executable, "-m", "smollm3.cli", "chat", "--model", str(smollm2_dir), "--temperature",
                           "0", "--max-tokens", "12", "--max-model-len", "512", "--tools", str(tools)],
                          input=script, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Paris" in out
    assert "reasoning mode: /no_think" in out and "reasoning is hidden" in out
    assert "unknown command /bogus" in out
    assert out.count("\n> ") >= 5  # a prompt per message and command
