"""Output parsing: reasoning, content and OpenAI-style tool calls from well-formed, truncated, malformed and streamed
SmolLM3 outputs."""

import json
import random
import re

import pytest

from smollm3.parsing import ParsedDelta, StreamParser, parse_output

WEATHER_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Copenhagen"}}\n</tool_call>'


def fn(call):
    return call["function"]["name"], json.loads(call["function"]["arguments"])


# ---- well-formed


def test_reasoning_and_answer():
    out = parse_output("<think>\nThe user greets me.\nI greet back.\n</think>\nHello! How can I help?")
    assert out.reasoning == "The user greets me.\nI greet back."
    assert out.content == "Hello! How can I help?"
    assert out.tool_calls == []


def test_no_think_outputs_have_no_reasoning():
    out = parse_output("Paris is the capital of France.")
    assert (out.reasoning, out.content) == (None, "Paris is the capital of France.")
    empty = parse_output("<think>\n\n</think>\nShort answer.")  # an empty think block, as /no_think pre-fills it
    assert (empty.reasoning, empty.content) == ("", "Short answer.")


def test_xml_tool_call_is_openai_style():
    out = parse_output("<think>\nNeed the weather.\n</think>\n" + WEATHER_CALL)
    assert out.reasoning == "Need the weather." and out.content == ""
    [call] = out.tool_calls
    assert call["type"] == "function" and re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
    assert isinstance(call["function"]["arguments"], str)  # OpenAI: arguments are a JSON string
    assert fn(call) == ("get_weather", {"city": "Copenhagen"})


def test_model_card_formats_and_text_around_calls():
    # the model card's forms: no newlines inside the tags, python calls in <code>
    text = ('Let me check both.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>\n'
            '<code>get_weather(city="Copenhagen")</code>\nDone.')
    out = parse_output(text)
    assert out.content == "Let me check both.\n\n\n\nDone."
    assert [fn(c) for c in out.tool_calls] == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"}),
                                               ("python", {"code": 'get_weather(city="Copenhagen")'})]
    assert len({c["id"] for c in out.tool_calls}) == 3


def test_arguments_variants():
    out = parse_output('<tool_call>{"name": "f"}</tool_call>'
                       '<tool_call>{"name": "g", "arguments": "{\\"x\\": 1}"}</tool_call>'
                       '<tool_call>{"name": "h", "parameters": {"y": "é"}}</tool_call>')
    assert [fn(c) for c in out.tool_calls] == [("f", {}), ("g", {"x": 1}), ("h", {"y": "é"})]
    assert out.tool_calls[2]["function"]["arguments"] == '{"y": "é"}'


def test_tool_kinds_can_be_switched_off():
    text = "Use <code>print(1)</code> in HTML. " + WEATHER_CALL
    assert parse_output(text, python_tools=False).content.startswith("Use <code>print(1)</code> in HTML.")
    assert [fn(c)[0] for c in parse_output(text, python_tools=False).tool_calls] == ["get_weather"]
    assert parse_output(text, xml_tools=False, python_tools=False).content == text
    assert parse_output(text, xml_tools=False).content == "Use  in HTML. " + WEATHER_CALL


def test_tags_inside_reasoning_are_reasoning():
    out = parse_output("<think>\nI could write " + WEATHER_CALL + " but won't.\n</think>\nNo call needed.")
    assert out.tool_calls == [] and WEATHER_CALL in out.reasoning and out.content == "No call needed."


# ---- truncated and malformed: content, never an exception


@pytest.mark.parametrize("text, content", [
    ('I will call it.\n<tool_call>\n{"name": "get_weather", "argu', 'I will call it.\n<tool_call>\n{"name": "get_weather", "argu'),
    ("<tool_call>", "<tool_call>"),
    ("Running: <code>for i in range(3):\n    print(i)", "Running: <code>for i in range(3):\n    print(i)"),
    ("<tool_call>\nnot json at all\n</tool_call>", "<tool_call>\nnot json at all\n</tool_call>"),
    ('<tool_call>{"arguments": {"city": "Paris"}}</tool_call>', '<tool_call>{"arguments": {"city": "Paris"}}</tool_call>'),
    ('<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>', '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>'),
    ('<tool_call>{"name": "f", "arguments": "not json"}</tool_call>',
     '<tool_call>{"name": "f", "arguments": "not json"}</tool_call>'),
    ('<tool_call>["get_weather", {"city": "Paris"}]</tool_call>', '<tool_call>["get_weather", {"city": "Paris"}]</tool_call>'),
    ("<code>\n\n</code>", "<code>\n\n</code>"),
    ("</tool_call> stray closing tag and </think>", "</tool_call> stray closing tag and </think>"),
    ("", ""),
])
def test_truncated_and_malformed_blocks_stay_in_the_content(text, content):
    out = parse_output(text)
    assert (out.content, out.tool_calls, out.reasoning) == (content, [], None)


def test_malformed_block_next_to_a_good_one():
    out = parse_output("<tool_call>{bad}</tool_call>\n" + WEATHER_CALL)
    assert out.content == "<tool_call>{bad}</tool_call>"
    assert [fn(c)[0] for c in out.tool_calls] == ["get_weather"]


def test_output_cut_off_while_thinking_is_reasoning():
    out = parse_output("<think>\nFirst, 17 * 23 = 17 * 20 + 17 * 3 = 340 + 51")
    assert (out.reasoning, out.content, out.tool_calls) == ("First, 17 * 23 = 17 * 20 + 17 * 3 = 340 + 51", "", [])


# ---- streaming: the deltas add up to parse_output, whatever the chunking

STREAMED = [
    "<think>\nThe user wants the weather.\nI'll call the tool.\n</think>\nChecking now.\n" + WEATHER_CALL,
    "  <think>\n\n</think>\n\nPlain <b>answer</b> with < and <t and <code but no tags. ",
    "Try this:\n<code>x = 2\nprint(x ** 10)</code>\nand <tool_call>{oops}</tool_call> then " + WEATHER_CALL + " ok",
    "<think>\ncut off mid-thought <tool_ca",
    'Answer.\n<tool_call>\n{"name": "f", "arguments": {"a": "</tool',
    "<thinking>is not a think tag</thinking>",
]


def run_stream(text, sizes):
    parser, deltas, i = StreamParser(), [], 0
    for n in sizes:
        deltas.append(parser.feed(text[i:i + n]))
        i += n
    deltas.append(parser.feed(text[i:]))
    deltas.append(parser.finish())
    return parser, deltas


@pytest.mark.parametrize("text", STREAMED)
def test_stream_deltas_add_up_to_parse_output(text):
    whole = parse_output(text)
    rng = random.Random(0)
    for trial in range(60):
        sizes = [1] * len(text) if trial == 0 else [rng.randint(1, 8) for _ in range(len(text))]
        parser, deltas = run_stream(text, sizes)
        assert all(isinstance(d, ParsedDelta) for d in deltas)
        assert "".join(d.content for d in deltas) == whole.content
        reasoning = "".join(d.reasoning for d in deltas)
        assert reasoning == (whole.reasoning or "")
        calls = [c for d in deltas for c in d.tool_calls]
        assert [c["function"] for c in calls] == [c["function"] for c in whole.tool_calls]
        assert parser.result().content == whole.content and parser.result().reasoning == whole.reasoning


def test_stream_emits_early_and_holds_back_only_what_is_undecided():
    p = StreamParser()
    assert p.feed("<thi") == ParsedDelta()  # might be <think>
    assert p.feed("nk>\nStep one") .reasoning == "Step one"
    assert p.feed(". </thi").reasoning == "."  # " </thi" might close the block
    assert p.feed("nk>\nThe answer is").content == "The answer is"
    assert p.feed(" 4. <tool").content == " 4."  # "<tool" might open a call
    d = p.feed('_call>{"name": "f", "arguments": {}}</tool_call>')
    assert d.content == "" and [c["function"]["name"] for c in d.tool_calls] == ["f"]
    assert not p.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        p.feed("more")
