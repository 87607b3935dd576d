"""Issue 23 (acceptance 7 and 8): every OpenAI parameter either has its documented effect or is refused with a 400
that names it, through the official `openai` client, against the real SmolLM2-135M-Instruct."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.real_weights

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from live_server import FRANCE, MODEL, client, start  # noqa: E402 (after the importorskips)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def server(smollm2_llm):
    """The model's own template (SmolLM2's ChatML: no tools, no think mode) and, over the same engine, our smollm3
    template (tools and think mode)."""
    from smollm3.infer import BackgroundEngine, Engine
    from smollm3.infer.server import ServerState, create_app

    llm = smollm2_llm
    engine = Engine(llm.model, llm.tokenizer, max_model_len=512, max_num_seqs=8,
                    eos_token_ids=sorted(llm.engine.eos_token_ids), defaults=llm.engine.defaults)
    bg = BackgroundEngine(engine)
    state = ServerState(bg, llm.tokenizer, MODEL, llm.chat_template)
    base, stop = start(create_app(state))
    state3 = ServerState(bg, llm.tokenizer, MODEL, "smollm3")
    base3, stop3 = start(create_app(state3))
    yield SimpleNamespace(base=base, state=state, engine=engine, model=llm.model, tokenizer=llm.tokenizer,
                          client=client(base), client3=client(base3))
    stop()
    stop3()
    bg.close()


def assert_400(server, param, call):
    with pytest.raises(openai.BadRequestError) as e:
        call()
    assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body
    # the server keeps serving
    r = server.client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=2)
    assert r.choices[0].message.content


def reference_logprobs(server, prompt_ids, output_ids):
    """log_softmax of the model's logits at each output position, computed here, independently of the engine."""
    ids = torch.tensor([prompt_ids + output_ids])
    with torch.no_grad():
        logits = server.model(ids)[0, len(prompt_ids) - 1:-1].float()
    return logits.log_softmax(-1)


def test_completion_logprobs_equal_the_models_log_softmax(server):
    prompt = server.tokenizer.encode("The capital of France is")
    r = server.client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0, logprobs=3)
    out_ids = server.state.engine.engine.tokenizer.encode(r.choices[0].text)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert "".join(lp.tokens) == r.choices[0].text and lp.text_offset[0] == 0
    ref = reference_logprobs(server, prompt, out_ids)
    greedy = ref.argmax(-1).tolist()
    assert greedy == out_ids  # the text re-encodes to the greedy tokens
    for step, (token, got, top) in enumerate(zip(out_ids, lp.token_logprobs, lp.top_logprobs)):
        assert got == pytest.approx(ref[step, token].item(), abs=1e-3)
        assert len(top) == 3 and max(top.values()) == pytest.approx(got, abs=1e-6)  # greedy: the top token
        expected = ref[step].topk(3).values.tolist()
        assert sorted(top.values(), reverse=True) == pytest.approx(expected, abs=1e-3)
    chunks = list(server.client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0,
                                                   logprobs=3, stream=True))
    streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
    assert [t for b in streamed for t in b.tokens] == lp.tokens
    assert [o for b in streamed for o in b.text_offset] == lp.text_offset


def test_chat_logprobs_and_top_logprobs_whole_and_streamed(server):
    r = server.client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=6,
                                              logprobs=True, top_logprobs=4)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens - (r.choices[0].finish_reason == "stop")
    assert b"".join(bytes(e.bytes) for e in content).decode() .strip() == r.choices[0].message.content
    for e in content:
        assert len(e.top_logprobs) == 4
        values = [t.logprob for t in e.top_logprobs]
        assert values == sorted(values, reverse=True) and e.logprob == pytest.approx(values[0], abs=1e-6)
        assert e.top_logprobs[0].token == e.token and all(v <= 0 for v in values)
    chunks = list(server.client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=6,
                                                        logprobs=True, top_logprobs=4, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in content]
    plain = server.client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=2)
    assert plain.choices[0].logprobs is None
    assert_400(server, "top_logprobs", lambda: server.client.chat.completions.create(
        model=MODEL, messages=FRANCE, max_tokens=2, top_logprobs=3))
    assert_400(server, "top_logprobs", lambda: server.client.chat.completions.create(
        model=MODEL, messages=FRANCE, max_tokens=2, logprobs=True, top_logprobs=21))
    assert_400(server, "logprobs", lambda: server.client.completions.create(
        model=MODEL, prompt="hi", max_tokens=2, logprobs=6))


def test_frequency_and_presence_penalties_stop_repetition(server):
    kw = dict(model=MODEL, prompt="I like apples. I like apples. I like apples. I like apples.", max_tokens=16,
              temperature=0)
    base = server.client.completions.create(**kw).choices[0].text
    assert base.count("big apple") >= 2, base  # greedy on this prompt repeats itself
    for penalty in ("frequency_penalty", "presence_penalty"):  # OpenAI's definitions, over the output so far
        text = server.client.completions.create(**kw, **{penalty: 2.0}).choices[0].text
        assert text.count("big apple") == 1 and len(set(text.split())) > len(set(base.split())), (penalty, text)
    assert_400(server, "frequency_penalty", lambda: server.client.completions.create(**kw, frequency_penalty=2.5))
    assert_400(server, "presence_penalty", lambda: server.client.chat.completions.create(
        model=MODEL, messages=FRANCE, presence_penalty=-3))


def test_logit_bias(server):
    kw = dict(model=MODEL, prompt="The capital of France is", max_tokens=1, temperature=0)
    first = server.tokenizer.encode(server.client.completions.create(**kw).choices[0].text)[0]
    banned = server.client.completions.create(**kw, logit_bias={str(first): -100}).choices[0].text
    assert server.tokenizer.encode(banned)[0] != first
    forced = server.tokenizer.encode(" banana")[0]
    chat = server.client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=1,
                                                 logit_bias={str(forced): 100})
    assert chat.choices[0].message.content == "banana"
    assert_400(server, "logit_bias", lambda: server.client.completions.create(**kw, logit_bias={"49152": 5}))
    assert_400(server, "logit_bias", lambda: server.client.completions.create(**kw, logit_bias={"5": 101}))


def test_best_of_returns_the_candidate_with_the_best_cumulative_logprob(server):
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=1.0, seed=11)
    candidates = server.client.completions.create(**kw, n=3, logprobs=0).choices
    scores = [sum(c.logprobs.token_logprobs) for c in candidates]
    best = server.client.completions.create(**kw, best_of=3)
    assert len(best.choices) == 1 and best.choices[0].logprobs is None  # logprobs were not asked for
    assert best.choices[0].text == candidates[scores.index(max(scores))].text
    assert best.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in candidates)  # all are billed
    assert_400(server, "best_of", lambda: server.client.completions.create(**kw, n=2, best_of=1))
    assert_400(server, "best_of", lambda: server.client.completions.create(**kw, best_of=2, stream=True))


def test_response_format_json(server):
    ask = [{"role": "user", "content": 'Answer with a JSON object: {"capital": ...}. What is the capital of France?'}]
    for stream in (False, True):
        kw = dict(model=MODEL, messages=ask, temperature=0, max_tokens=40, response_format={"type": "json_object"})
        if stream:
            chunks = list(server.client.chat.completions.create(**kw, stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            reason = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            r = server.client.chat.completions.create(**kw)
            text, reason = r.choices[0].message.content, r.choices[0].finish_reason
        assert reason == "stop" and isinstance(json.loads(text), dict), text
    schema = {"type": "object", "additionalProperties": False, "required": ["city", "country", "big"], "properties": {
        "city": {"type": "string"}, "country": {"$ref": "#/$defs/country"}, "big": {"type": "boolean"},
        "rank": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
        "$defs": {"country": {"enum": ["France", "Germany"]}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}
    r = server.client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=40,
                                              response_format=fmt)
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop", text
    got = json.loads(text)
    assert set(got) <= set(schema["properties"]) and {"city", "country", "big"} <= set(got)
    assert isinstance(got["city"], str) and got["country"] in ("France", "Germany")
    assert isinstance(got["big"], bool) and (got.get("rank") is None or isinstance(got["rank"], int))


def chat(server, **kw):
    return lambda: server.client.chat.completions.create(**{"model": MODEL, "messages": FRANCE, "max_tokens": 4, **kw})


@pytest.mark.parametrize("fmt, needle", [
    ({"type": "xml"}, "unknown type"),
    ({"type": "json_schema"}, "json_schema must be an object"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
        "a": {"type": "string", "pattern": "^a"}}}}}, "pattern"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": ["b"],
                                                                     "properties": {"a": {}}}}}, "required"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}, "type"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
        "a": {"$ref": "#/$defs/a"}}, "$defs": {"a": {"type": "array", "items": {"$ref": "#/$defs/a"}}}}}},
     "recursive"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
        "a": {"oneOf": [{"type": "string"}]}}}}}, "oneOf"),
])
def test_bad_response_format_is_a_400_naming_it(server, fmt, needle):
    with pytest.raises(openai.BadRequestError) as e:
        chat(server, response_format=fmt)()
    assert e.value.body["param"] == "response_format" and needle in e.value.body["message"], e.value.body
    assert chat(server, temperature=0)().choices[0].message.content  # still serving


def test_context_limits_are_400s_naming_the_field(server):
    assert_400(server, "messages", chat(server, messages=[{"role": "user", "content": "hello " * 600}]))
    assert_400(server, "messages", chat(server, messages=[{"role": "user", "content": "x" * 200_000}]))  # untokenized
    assert_400(server, "max_tokens", chat(server, max_tokens=600))
    assert_400(server, "max_completion_tokens", chat(server, max_completion_tokens=600))
    assert_400(server, "prompt", lambda: server.client.completions.create(model=MODEL, prompt="hello " * 600))


def test_legacy_functions_are_tools(server):
    fn = WEATHER["function"]
    r = server.client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What's the weather in Paris?"}], functions=[fn],
        function_call={"name": "get_weather"}, temperature=0, max_tokens=40)
    choice = r.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.function_call.name == "get_weather"
    assert isinstance(json.loads(choice.message.function_call.arguments)["city"], str)
    # the legacy history (assistant function_call, then a function message) goes back to the model
    follow = server.client.chat.completions.create(model=MODEL, temperature=0, max_tokens=8, messages=[
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "function_call": choice.message.function_call.model_dump()},
        {"role": "function", "name": "get_weather", "content": "sunny, 21 C"}])
    assert follow.choices[0].message.content
    # SmolLM2's template cannot show functions to the model: "auto" is refused, naming the field
    assert_400(server, "functions", chat(server, functions=[fn]))
    assert_400(server, "function_call", chat(server, function_call="auto"))
    assert_400(server, "functions", chat(server, functions=[fn], tools=[WEATHER]))
    assert_400(server, "tools", chat(server, tools=[WEATHER]))


def test_reasoning_effort_is_the_think_mode(server):
    c3 = server.client3
    usage = {effort: c3.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=1, temperature=0,
                                                reasoning_effort=effort).usage.prompt_tokens
             for effort in ("minimal", "high")}
    no_think = c3.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=1, temperature=0,
                                          extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert usage["minimal"] == no_think.usage.prompt_tokens != usage["high"]
    assert_400(server, "reasoning_effort", lambda: c3.chat.completions.create(
        model=MODEL, messages=FRANCE, max_tokens=1, reasoning_effort="low",
        extra_body={"chat_template_kwargs": {"enable_thinking": False}}))
    assert_400(server, "reasoning_effort", chat(server, reasoning_effort="high"))  # SmolLM2's template: no think mode
    assert_400(server, "reasoning_effort", lambda: c3.chat.completions.create(
        model=MODEL, messages=FRANCE, max_tokens=1, reasoning_effort="extreme"))


def test_parallel_tool_calls(server):
    """parallel_tool_calls false: generation stops at the first complete call (a </tool_call> stop string that the
    parser gets back). SmolLM2 writes no calls by itself, so the mechanics are checked on the request plan, and
    the field over HTTP."""
    from smollm3.infer import server_prep as prep
    from smollm3.parsing import TOOL_CLOSE

    limits = dict(tokenizer=server.tokenizer, template="smollm3", max_model_len=512, vocab_size=49152,
                  token_bytes=server.state.token_bytes)
    body = {"messages": FRANCE, "tools": [WEATHER], "parallel_tool_calls": False}
    plan = prep.prepare_chat(body, **limits)
    assert plan.tool_stop and plan.jobs[0].params.stop == [TOOL_CLOSE]
    assert not prep.prepare_chat({**body, "parallel_tool_calls": True}, **limits).tool_stop
    r = server.client3.chat.completions.create(model=MODEL, messages=FRANCE, tools=[WEATHER], temperature=0,
                                               max_tokens=4, parallel_tool_calls=False)
    assert r.choices[0].message.content is not None
    assert_400(server, "parallel_tool_calls", chat(server, parallel_tool_calls=False))  # without tools


def test_unknown_fields_are_refused_and_metadata_accepted(server):
    assert_400(server, "frobnicate", chat(server, extra_body={"frobnicate": 1}))
    assert_400(server, "suffix", lambda: server.client.completions.create(model=MODEL, prompt="hi", suffix="!"))
    assert_400(server, "response_format", lambda: server.client.completions.create(
        model=MODEL, prompt="hi", max_tokens=1, extra_body={"response_format": {"type": "json_object"}}))
    assert_400(server, "echo", lambda: server.client.completions.create(model=MODEL, prompt="hi", max_tokens=1,
                                                                         echo=True, logprobs=1))
    r = chat(server, user="u-1", metadata={"k": "v"}, store=False, service_tier="auto", temperature=0)()
    assert r.choices[0].message.content
    assert_400(server, "user", chat(server, user=5))


def test_usage_reports_cached_prompt_tokens(server):
    """cached_tokens: the prompt tokens the engine served from its prefix cache (whole KV blocks)."""
    long = [{"role": "system", "content": "You answer in one word. " * 30}] + FRANCE  # several full blocks
    first = server.client.chat.completions.create(model=MODEL, messages=long, temperature=0, max_tokens=1)
    again = server.client.chat.completions.create(model=MODEL, messages=long, temperature=0, max_tokens=1, n=2)
    block = server.engine.block_size
    assert first.usage.prompt_tokens > 2 * block
    assert first.usage.prompt_tokens_details.cached_tokens < block <= again.usage.prompt_tokens_details.cached_tokens
    assert again.usage.prompt_tokens_details.cached_tokens <= again.usage.prompt_tokens  # counted once, like it
    prompt = "Once upon a time, " * 40
    server.client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)  # now in the cache
    chunks = list(server.client.completions.create(model=MODEL, prompt=[prompt, prompt], max_tokens=1, stream=True,
                                                   temperature=0, stream_options={"include_usage": True}))
    usage = chunks[-1].usage  # two prompts: the sum of each one's cached tokens
    assert usage.prompt_tokens_details.cached_tokens >= 2 * (usage.prompt_tokens // 2 - block)


def test_logprob_values_are_finite_json(server):
    r = httpx.post(server.base + "/v1/completions", timeout=60, json={
        "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0, "logprobs": 5,
        "logit_bias": {"28": -100}})
    assert r.status_code == 200
    block = r.json()["choices"][0]["logprobs"]
    assert all(math.isfinite(v) for top in block["top_logprobs"] for v in top.values())


def _events(r) -> list[dict]:
    return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "The capital of France is"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Name three colours."}]}),
])
def test_continuous_usage_counts_the_tokens_each_chunk_carries(server, path, body):
    """stream_options.continuous_usage_stats (vLLM's extension): every chunk's usage counts the tokens generated up
    to it, so a client can tell a chunk that carries two tokens (a character split across tokens) from one."""
    body = {**body, "max_tokens": 24, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    events = _events(httpx.post(server.base + path, json=body, timeout=60))
    counts = [e["usage"]["completion_tokens"] for e in events]
    assert all(e["usage"]["prompt_tokens"] == events[-1]["usage"]["prompt_tokens"] > 0 for e in events)
    assert counts == sorted(counts) and counts[-1] == 24 and counts[-2] == 24  # the last content chunk: all of them
    content = [e for e in events if e["choices"] and (e["choices"][0].get("text") or
                                                       e["choices"][0].get("delta", {}).get("content"))]
    assert len(content) >= 10 and counts[0] < 24
    plain = _events(httpx.post(server.base + path, json={**body, "stream_options": {"include_usage": True}},
                               timeout=60))
    assert [e["usage"] for e in plain[:-1]] == [None] * (len(plain) - 1)  # without it: the last chunk only
    assert plain[-1]["usage"]["completion_tokens"] == 24


@pytest.mark.parametrize("options, needle", [
    ({"include_usage": True, "chunk_size": 4}, "unknown stream_options field 'chunk_size'"),
    ({"continuous_usage_stats": True}, "needs 'include_usage': true"),
    ({"include_usage": "yes"}, "'stream_options.include_usage' must be a boolean"),
])
def test_bad_stream_options_are_a_400_naming_them(server, options, needle):
    r = httpx.post(server.base + "/v1/completions", timeout=60, json={
        "prompt": "Hi", "max_tokens": 2, "stream": True, "stream_options": options})
    assert r.status_code == 400 and needle in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "stream_options"
