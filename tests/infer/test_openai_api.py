"""The OpenAI shapes around the engine, without HTTP: request checks name the parameter, reasoning and tool calls
come out as `reasoning` / `reasoning_content` and `tool_calls` with JSON-string arguments, whole or streamed."""

import json

import pytest

from smollm3.infer import openai_api as oa
from smollm3.infer.openai_api import APIError

THINKING = '<think>\nThe user wants the weather.\n</think>\nLet me check.\n<tool_call>\n{"name": "get_weather", ' \
           '"arguments": {"city": "Paris"}}\n</tool_call>'
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]


def test_chat_choice_splits_reasoning_content_and_tool_calls():
    c = oa.chat_choice(0, THINKING, "stop", xml_tools=True)
    m = c["message"]
    assert m["reasoning"] == m["reasoning_content"] == "The user wants the weather."
    assert m["content"] == "Let me check."
    (call,) = m["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], str) and json.loads(call["function"]["arguments"]) == {
        "city": "Paris"}
    assert c["finish_reason"] == "tool_calls"
    only_call = oa.chat_choice(0, THINKING.split("Let me check.\n")[1], "stop", xml_tools=True)["message"]
    assert only_call["content"] is None and only_call["reasoning"] is None
    # without tools offered, a tool block is just text; a cut-off reply is "length"
    plain = oa.chat_choice(1, THINKING, "length", xml_tools=False)
    assert "tool_calls" not in plain["message"] and "<tool_call>" in plain["message"]["content"]
    assert plain["finish_reason"] == "length"


@pytest.mark.parametrize("step", [1, 3, 7])
def test_streamed_choice_adds_up_to_the_whole(step):
    whole = oa.chat_choice(0, THINKING, "stop", xml_tools=True)["message"]
    s = oa.ChatChoiceStream(0, xml_tools=True)
    entries = [s.start()]
    pieces = [THINKING[i:i + step] for i in range(0, len(THINKING), step)]
    for k, piece in enumerate(pieces):
        entries += s.feed(piece, "stop" if k == len(pieces) - 1 else None)
    assert entries[0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [e["delta"] for e in entries[1:]]
    assert "".join(d.get("reasoning", "") for d in deltas) == whole["reasoning"]
    assert all(d.get("reasoning") == d.get("reasoning_content") for d in deltas)
    assert "".join(d.get("content", "") for d in deltas) == whole["content"]
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert [c["index"] for c in calls] == [0] and calls[0]["function"] == whole["tool_calls"][0]["function"]
    assert entries[-1]["finish_reason"] == "tool_calls" and entries[-1]["delta"] == {}
    assert all(e["finish_reason"] is None for e in entries[:-1])


def test_forced_prefix_is_part_of_the_parsed_output():
    prefix, constraint = oa.forced_call("get_weather", TOOLS)
    assert constraint.forced == "get_weather" and prefix.endswith('"arguments": ')
    c = oa.chat_choice(0, '{"city": "Rome"}}\n</tool_call>', "stop", prefix=prefix, xml_tools=True)
    assert json.loads(c["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Rome"}
    prefix, constraint = oa.forced_call("required", TOOLS + [{"type": "function", "function": {"name": "now"}}])
    assert constraint.forced is None and prefix.endswith('{"name": "')
    assert oa.forced_call("auto", TOOLS) == ("", None)


def test_history_loses_old_reasoning_only():
    msgs = oa.chat_messages([
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "<think>old</think>Hello!", "reasoning_content": "old"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "reasoning": "current", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
    ])
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert msgs[2] == {"role": "assistant", "content": "Hello!"}
    assert msgs[4]["reasoning"] == "current"  # after the last user message: the turn in progress keeps it


@pytest.mark.parametrize("body, param", [
    ({"max_tokens": -1}, "max_tokens"), ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"max_tokens": 5000}, "max_tokens"), ({"temperature": 3}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"seed": 1.5}, "seed"), ({"stop": [1]}, "stop"), ({"stop": ""}, "stop"),
    ({"presence_penalty": 2.5}, "presence_penalty"), ({"frequency_penalty": "x"}, "frequency_penalty"),
    ({"logit_bias": {"5": 101}}, "logit_bias"), ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"1000": 1}}, "logit_bias"), ({"logit_bias": [1]}, "logit_bias"),
    ({"ignore_eos": "yes"}, "ignore_eos"),
])
def test_bad_sampling_fields(body, param):
    with pytest.raises(APIError) as e:
        oa.sampling_params(body, prompt_len=10, max_model_len=1024, default_max_tokens=None, vocab_size=1000)
    assert e.value.status == 400 and e.value.param == param
    assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}


def test_context_length_and_defaults():
    with pytest.raises(APIError) as e:
        oa.sampling_params({}, prompt_len=1024, max_model_len=1024, default_max_tokens=None)
    assert e.value.code == "context_length_exceeded"
    assert oa.sampling_params({}, 1000, 1024, None).max_tokens == 24  # chat: the rest of the context
    assert oa.sampling_params({}, 10, 1024, 16).max_tokens == 16  # completions: OpenAI's default 16
    p = oa.sampling_params({"temperature": 0, "top_k": -1, "stop": "\n", "seed": 3}, 10, 1024, None)
    assert (p.temperature, p.top_k, p.stop, p.seed, p.top_p) == (0, 0, ["\n"], 3, None)


@pytest.mark.parametrize("tools, choice", [
    ({"type": "function"}, None), ([{"type": "function"}], None), ([{"type": "code", "function": {"name": "f"}}], None),
    ([{"type": "function", "function": {"name": "bad name!"}}], None),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], None),
    (TOOLS + TOOLS, None), (TOOLS, "sometimes"), (TOOLS, {"type": "function", "function": {"name": "nope"}}),
    (None, "required"),
])
def test_bad_tools_and_tool_choice(tools, choice):
    with pytest.raises(APIError) as e:
        oa.tool_choice(choice, oa.chat_tools(tools))
    assert e.value.status == 400 and e.value.param in ("tools", "tool_choice")


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_tool_calls_inlined_only_for_templates_that_ignore_them():
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    msgs = [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "sunny"}]
    assert oa.renders_tool_calls("smollm3") and not oa.renders_tool_calls(CHATML)
    assert oa.inline_tool_calls(msgs, "smollm3") is msgs
    inlined = oa.inline_tool_calls(oa.chat_messages(msgs), CHATML)
    assert inlined[1] == {"role": "assistant",
                          "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'}
    # what the model wrote is what it sees again: our parser reads the inlined text back as the same call
    from smollm3.parsing import parse_output

    assert parse_output(inlined[1]["content"]).tool_calls[0]["function"]["arguments"] == call["function"]["arguments"]
