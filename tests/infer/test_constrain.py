"""The forced tool-call grammar: exactly the prefixes of a schema-valid call are accepted, and the engine produces
a call that parses even from a model with random weights."""

import json
import random
import re
import time

import pytest
import torch

from smollm3.infer import SamplingParams
from smollm3.infer.constrain import JSONConstraint, ToolCallConstraint
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


SCHEMA = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "y"]}}}


@pytest.mark.parametrize("think, text, state", [
    (False, '{"a": 1, "b": "x"}', "done"),
    (False, '{"a": 1, "b": "x"}\n', "done"),
    (False, '{"b": "y", "a": -2}', "done"),
    (False, '{"a": 1', "partial"),
    (False, '{"a": 1, "b": "x",', "bad"),  # no property left to follow the comma (it would be a dead end)
    (False, '{"b": "x"}', "bad"),  # a is required
    (False, '{"a": 1} x', "bad"),
    (False, '[1]', "bad"),  # the root is an object
    (False, '<think>', "bad"),
    (True, '<thi', "partial"),
    (True, '<think>\nany text { at all', "partial"),
    (True, '<think>\nhm</think>\n{"a": 3}', "done"),
    (True, '{"a": 3}', "done"),  # thinking may be skipped
])
def test_json_grammar(think, text, state):
    from smollm3.infer.constrain import JSONConstraint

    assert JSONConstraint(SCHEMA, think=think)._check(text) == state


def test_json_object_nesting_is_bounded():
    from smollm3.infer.constrain import MAX_DEPTH, JSONConstraint

    c = JSONConstraint()
    assert c._check('{"a": ' + "[" * (MAX_DEPTH - 2)) == "partial"
    assert c._check('{"a": ' + "[" * MAX_DEPTH) == "bad"  # a runaway "[[[[" cannot exhaust the parser's stack


def test_schema_checks_name_what_is_unsupported():
    from smollm3.infer.openai_api import APIError
    from smollm3.infer.response_format import check_schema, response_constraint

    got = check_schema({"type": "object", "properties": {"p": {"$ref": "#/definitions/P"}},
                        "definitions": {"P": {"properties": {"q": {"type": ["string", "null"]}}, "title": "P"}}})
    assert got == {"type": "object", "properties": {"p": {"type": "object", "properties": {
        "q": {"type": ["string", "null"]}}}}}  # $ref inlined, annotations dropped, the implied type added
    for bad, word in [({"type": "array"}, "root"), ({"type": "object", "properties": {"a": {"minLength": 1}}},
                                                    "minLength"),
                      ({"type": "object", "properties": {"a": {"enum": []}}}, "enum"),
                      ({"type": "object", "properties": {"a": {"type": "string", "enum": [1]}}}, "enum"),
                      ({"type": "object", "properties": {"a": {"$ref": "#/$defs/none"}}}, "$ref"),
                      ({"type": "object", "additionalProperties": {"type": "string"}}, "additionalProperties")]:
        with pytest.raises(APIError, match=re.escape(word)) as e:
            check_schema(bad)
        assert e.value.param == "response_format"
    assert response_constraint({"type": "text"}, think=False) is None
    assert response_constraint({"type": "json_object"}, think=True)().think


RICH = {"type": "object", "required": ["rows"], "properties": {
    "rows": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "n": {"type": ["integer", "null"]}, "x": {"type": "number"},
        "tag": {"enum": ["a", "ab", "abc"]}, "any": {}, "alt": {"anyOf": [{"type": "string"}, {"type": "array"}]},
        "ok": {"type": "boolean"}}}},
    "note": {"type": "string"}}}


def rich_document(rng: random.Random) -> str:
    def row():
        r = {"name": rng.choice(["plain", 'quote " here', "tab\there", "\u00e9t\u00e9", "caf\u00e9"])}
        if rng.random() < 0.5:
            r["n"] = rng.choice([None, 0, 7, -12, 130])
        if rng.random() < 0.5:
            r["x"] = rng.choice([0.5, -3.25e-2, 10, 1e5])
        if rng.random() < 0.5:
            r["tag"] = rng.choice(["a", "ab", "abc"])
        if rng.random() < 0.3:
            r["any"] = rng.choice([[1, {"k": [True, None]}], "s", 2.5, {}])
        if rng.random() < 0.3:
            r["alt"] = rng.choice(["text", [1, "two"]])
        if rng.random() < 0.3:
            r["ok"] = rng.random() < 0.5
        return r
    doc = {"rows": [row() for _ in range(rng.randint(0, 6))]}
    if rng.random() < 0.5:
        doc["note"] = "n" * rng.randint(0, 40)
    return json.dumps(doc, indent=rng.choice([None, 1]))


@pytest.mark.parametrize("seed", range(20))
def test_remembered_parses_decide_as_a_fresh_parse_does(seed):
    """The constraint reuses parses of its committed output (the memo): every candidate it accepts or refuses, at
    every step, is decided as a parser with no memory decides it, for valid documents cut into random tokens and
    for candidates that break them in every way."""
    rng = random.Random(seed)
    text = rich_document(rng)
    kept = JSONConstraint(RICH, think=seed % 2 == 0)
    if kept.think:
        text = "<think>\nfirst { this\n</think>\n" + text
    alphabet = list('{}[]",:0123456789-+.eE ntrufals\\abc') + ["\n"]
    i = 0
    while i < len(text):
        token = text[i:i + rng.randint(1, 6)]
        for cand in [token] + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(8)]:
            fresh = JSONConstraint(RICH, think=kept.think)._check(kept.text + cand)
            assert kept.accepts(cand) == (fresh != "bad"), (kept.text, cand)
        assert kept.accepts(token)
        kept.advance(token)
        assert kept.done == (JSONConstraint(RICH, think=kept.think)._check(kept.text) == "done")
        i += len(token)
    assert kept.done and json.loads(text[text.find("{", text.find("</think>") + 1 if kept.think else 0):])


def test_a_long_json_answer_costs_linear_time():
    """A 1,000-row answer: the grammar's work per token stays small (it once re-parsed the whole output for every
    candidate, 25 s for 8 KB)."""
    rows = [{"name": f"row {i}", "n": i} for i in range(1000)]
    text = json.dumps({"rows": rows})  # 31 KB, 0.4 s here
    c = JSONConstraint(RICH)
    start = time.perf_counter()
    for i in range(0, len(text), 4):
        assert c.first_accepted([(0, text[i:i + 4])]) == 0
        c.advance(text[i:i + 4])
    assert c.done and time.perf_counter() - start < 10
