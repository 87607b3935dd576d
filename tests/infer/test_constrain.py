"""The forced tool-call grammar: exactly the prefixes of a schema-valid call are accepted, and the engine produces
a call that parses even from a model with random weights."""

import json

import pytest
import torch

from smollm3.infer import SamplingParams
from smollm3.infer.constrain import ToolCallConstraint
from smollm3.infer.llm import build_engine
from smollm3.parsing import parse_output

WEATHER = {"type": "object", "required": ["city"],
           "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}, "days": {"type": "integer"}}}
TOOLS = {"get_weather": WEATHER, "get_time": {}}


@pytest.mark.parametrize("text, state", [
    ('get_weather", "arguments": {"city": "Paris"}}</tool_call>', "done"),
    ('get_weather", "arguments": {"city": "Paris", "unit": "c", "days": 12}}\n</tool_call>', "done"),
    ('get_time", "arguments": {"any": [1, {"x": null}]}}</tool_call>', "done"),
    ('get_w', "partial"),
    ('get_weather", "arguments": {"city": "P', "partial"),
    ('get_weather", "arguments": {"city": "Paris", "days": 12', "partial"),
    ('get_weather", "arguments": {"city": "Paris", "unit": "', "partial"),
    ('get_weather", "arguments": {}}', "bad"),  # city is required
    ('get_weather", "arguments": {"town": "Paris"', "bad"),  # undeclared property
    ('get_weather", "arguments": {"city": 3', "bad"),  # wrong type
    ('get_weather", "arguments": {"city": "Paris", "days": 1.5', "bad"),  # integer
    ('get_weather", "arguments": {"city": "Paris", "days": 012', "bad"),
    ('get_weather", "arguments": {"city": "Paris", "unit": "k', "bad"),  # not in the enum
    ('get_weather", "arguments": {"city": "Paris", "city": "Rome"', "bad"),  # each property once
    ('get_weather", "arguments": {"city": "Paris"}}</tool_call> more', "bad"),
    ('get_date"', "bad"),
    ('get_time", "arguments": {' + " " * 40, "bad"),  # runaway whitespace
])
def test_grammar(text, state):
    assert ToolCallConstraint(TOOLS)._check(text) == state


def test_forced_name_and_union_types():
    c = ToolCallConstraint({"f": {"type": "object", "properties": {
        "x": {"anyOf": [{"type": "number"}, {"type": "array", "items": {"type": "boolean"}}]}}}}, forced="f")
    assert c._check('{"x": [true, false]}}</tool_call>') == "done"
    assert c._check('{"x": -1.5e3} }  </tool_call>') == "done"
    assert c._check('{"x": [tr') == "partial"
    assert c._check('{"x": [1]') == "bad"
    assert c.accepts('{"x') and not c.accepts('{"y') and not c.accepts("\ufffd")
    c.advance('{"x": 1}')
    assert not c.done
    c.advance("}</tool_call>")
    assert c.done


def test_engine_forced_call_parses_even_with_random_weights(tiny_dir):
    """A schema with only finite choices (enum, boolean), so even a random model must finish the call (it may
    spend many tokens on the whitespace JSON allows, hence the room)."""
    engine, _ = build_engine(tiny_dir, device="cpu", dtype=torch.float32, max_model_len=512, max_num_seqs=2)
    schema = {"type": "object", "required": ["unit", "metric"],
              "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}, "metric": {"type": "boolean"}}}
    prefix = '<tool_call>\n{"name": "get_weather", "arguments": '
    ids = engine.tokenizer.encode("What is the weather?" + prefix)
    r = engine.add_request(ids, SamplingParams(max_tokens=200, temperature=1.0, seed=0),
                           constraint=ToolCallConstraint({"get_weather": schema}, forced="get_weather"))
    while not r.finished:
        engine.step()
    assert r.finish_reason == "stop" and r.constraint.done, r.text
    calls = parse_output(prefix + r.text).tool_calls
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather", r.text
    args = json.loads(calls[0]["function"]["arguments"])
    assert args["unit"] in ("celsius", "fahrenheit") and isinstance(args["metric"], bool)
    free = engine.generate([ids], SamplingParams(max_tokens=40, temperature=1.0, seed=0))[0]
    assert not parse_output(prefix + free.text).tool_calls  # unconstrained, the random model makes no call
