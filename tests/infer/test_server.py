"""Acceptance 2 and 3: the real server (uvicorn on 127.0.0.1, an ephemeral port) over the real SmolLM2-135M-Instruct,
driven by the official `openai` client and by raw HTTP."""

import asyncio
import json
import os
import subprocess
import sys
import time
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
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The current time in a time zone",
                                         "parameters": {"type": "object", "properties": {
                                             "zone": {"enum": ["UTC", "CET", "PST"]}}, "required": ["zone"]}}}


@pytest.fixture(scope="module")
def server(smollm2_llm):
    from smollm3.infer import BackgroundEngine, Engine
    from smollm3.infer.server import ServerState, create_app

    llm = smollm2_llm  # shares the weights; the server gets its own engine (KV cache, thread)
    engine = Engine(llm.model, llm.tokenizer, max_model_len=512, max_num_seqs=16,
                    eos_token_ids=sorted(llm.engine.eos_token_ids), defaults=llm.engine.defaults)
    state = ServerState(BackgroundEngine(engine), llm.tokenizer, MODEL, llm.chat_template)
    base, stop = start(create_app(state))
    yield SimpleNamespace(base=base, state=state, engine=engine, client=client(base))
    stop()
    state.engine.close()


def test_models_health_metrics(server):
    models = server.client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    health = httpx.get(server.base + "/health").json()
    e = server.engine
    assert health["status"] == "ok" and health["max_num_seqs"] == 16
    assert health["kv_blocks_total"] == e.blocks.num_blocks and health["kv_blocks_free"] == e.num_free_blocks
    metrics = httpx.get(server.base + "/metrics").text
    assert "# TYPE smollm3_requests_running gauge" in metrics
    assert f"smollm3_kv_blocks_total {e.blocks.num_blocks}" in metrics and "smollm3_kv_blocks_free " in metrics


def test_chat_answers_paris(server):
    r = server.client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=16)
    assert "Paris" in r.choices[0].message.content
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].message.tool_calls is None


def test_stream_adds_up_to_the_plain_answer(server):
    plain = server.client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=16)
    chunks = list(server.client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=16,
                                                        stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    with_reason = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(with_reason) == 1 and with_reason[0].choices[0].finish_reason == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    # on the wire: SSE `data:` lines ending with [DONE]
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.base + "/v1/chat/completions", json=body, timeout=120) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_tool_calls(server):
    # a named function: the call is forced and its arguments follow the schema
    r = server.client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What's the weather like in Paris today?"}],
        tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0, max_tokens=48)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    # "required", streamed: the model picks the function; the call arrives whole with index 0
    chunks = list(server.client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What time is it in Berlin?"}], tools=[WEATHER, TIME],
        tool_choice="required", temperature=0, max_tokens=80, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id and calls[0].type == "function"
    assert calls[0].function.name in ("get_weather", "get_time")
    assert isinstance(json.loads(calls[0].function.arguments), dict)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # the result goes back as a tool message; the conversation continues (SmolLM2's template cannot show tools:
    # "auto" would be refused, "none" leaves them out)
    follow = server.client.chat.completions.create(model=MODEL, temperature=0, max_tokens=8, tools=[WEATHER],
                                                   tool_choice="none", messages=[
        {"role": "user", "content": "What's the weather like in Paris today?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 21, "sky": "sunny"}'}])
    assert follow.choices[0].message.content


def test_completions(server):
    r = server.client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert r.object == "text_completion" and "Paris" in r.choices[0].text
    echoed = server.client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4,
                                              temperature=0, echo=True)
    assert echoed.choices[0].text == "The capital of France is" + r.choices[0].text
    two = server.client.completions.create(model=MODEL, prompt=["Once upon a time", "1, 2, 3,"], n=2, max_tokens=4,
                                           temperature=1.0, seed=7)
    assert [c.index for c in two.choices] == [0, 1, 2, 3] and two.usage.completion_tokens == 16
    again = server.client.completions.create(model=MODEL, prompt=["Once upon a time", "1, 2, 3,"], n=2, max_tokens=4,
                                             temperature=1.0, seed=7)
    assert [c.text for c in again.choices] == [c.text for c in two.choices]  # seeded: reproducible
    streamed = list(server.client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4,
                                                     temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text
    assert streamed[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_64_concurrent_requests_all_complete(server):
    prompts = ["What is the capital of France?", "Name a fruit.", "Say hello.", "What is 2 + 2?"]

    async def run():
        client = openai.AsyncOpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=600)
        jobs = [client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompts[i % 4]}],
                                               temperature=0, max_tokens=4) for i in range(64)]
        try:
            return await asyncio.gather(*jobs)
        finally:
            await client.close()

    before = server.engine.stats["requests"]
    results = asyncio.run(run())
    assert len(results) == 64 and all(r.choices[0].message.content for r in results)
    for k in range(4):  # greedy: the same prompt gets the same answer, whatever it was batched with
        assert len({results[i].choices[0].message.content for i in range(k, 64, 4)}) == 1
    assert server.engine.stats["requests"] - before == 64
    assert server.engine.num_running == 0


def test_disconnect_mid_stream_frees_the_blocks(server):
    aborted = server.engine.stats["aborted"]
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 400, "ignore_eos": True, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.base + "/v1/chat/completions", json=body, timeout=120) as resp:
        lines = resp.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any("content" in line for line in got)
        assert server.engine.num_running == 1
    deadline = time.time() + 60
    while server.engine.num_running and time.time() < deadline:
        time.sleep(0.1)
    assert server.engine.num_running == 0 and server.engine.stats["aborted"] == aborted + 1
    health = httpx.get(server.base + "/health").json()  # every block back in the pool, as the server reports it
    assert health["kv_blocks_free"] == health["kv_blocks_total"] == server.engine.blocks.num_blocks


BAD = [
    ("malformed JSON", "/v1/chat/completions", b'{"messages": [', 400, None),
    ("not an object", "/v1/chat/completions", b"[1, 2]", 400, None),
    ("unknown model", "/v1/chat/completions", {"model": "gpt-5", "messages": FRANCE}, 404, "model"),
    ("no messages", "/v1/chat/completions", {"model": MODEL}, 400, "messages"),
    ("bad role", "/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages"),
    ("prompt too long", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hello " * 600}]}, 400,
     "messages"),
    ("prompt + max_tokens too long", "/v1/completions", {"prompt": "hi", "max_tokens": 600}, 400, "max_tokens"),
    ("negative max_tokens", "/v1/chat/completions", {"messages": FRANCE, "max_tokens": -5}, 400, "max_tokens"),
    ("negative completions max_tokens", "/v1/completions", {"prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ("tools not a list", "/v1/chat/completions", {"messages": FRANCE, "tools": WEATHER}, 400, "tools"),
    ("tool without name", "/v1/chat/completions", {"messages": FRANCE, "tools": [{"type": "function",
                                                                                    "function": {}}]}, 400, "tools"),
    ("unknown named tool", "/v1/chat/completions", {"messages": FRANCE, "tools": [WEATHER], "tool_choice": {
        "type": "function", "function": {"name": "launch"}}}, 400, "tool_choice"),
    ("bad temperature", "/v1/chat/completions", {"messages": FRANCE, "temperature": -1}, 400, "temperature"),
    ("bad n", "/v1/completions", {"prompt": "hi", "n": 0}, 400, "n"),
    ("bad prompt", "/v1/completions", {"prompt": {"text": "hi"}}, 400, "prompt"),
    ("token id out of vocab", "/v1/completions", {"prompt": [10**9], "max_tokens": 1}, 400, None),
]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server):
    for name, path, body, status, param in BAD:
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = httpx.post(server.base + path, headers={"content-type": "application/json"}, timeout=60, **kw)
        assert r.status_code == status, (name, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], name
        if param:
            assert err["param"] == param, (name, err)
    assert httpx.get(server.base + "/v1/nowhere").status_code == 404
    with pytest.raises(openai.NotFoundError):
        server.client.chat.completions.create(model="gpt-5", messages=FRANCE)
    r = server.client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=8)
    assert "Paris" in r.choices[0].message.content
    assert server.engine.num_running == 0 and server.engine.num_waiting == 0


def test_serve_cli_with_api_key(smollm2_dir):
    """`smollm3 serve` as users start it: port 0 picks a free port, printed; the key guards /v1 only."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "smollm3.cli", "serve", "--model", str(smollm2_dir), "--port", "0",
                             "--api-key", "sk-test", "--max-model-len", "256", "--max-num-seqs", "2",
                             "--served-model-name", "tiny-chat"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        seen = []
        for line in proc.stdout:  # ends when the process exits; warnings may come first
            seen.append(line)
            if line.startswith("serving"):
                break
        assert "serving 'tiny-chat' on http://127.0.0.1:" in line, "".join(seen)
        base = line.split(" on ")[1].split()[0].removesuffix("/v1")
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.get(base + "/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            r = httpx.post(base + "/v1/completions", headers=headers, json={"prompt": "hi", "max_tokens": 1})
            assert r.status_code == 401
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny-chat"]
        r = client.completions.create(model="tiny-chat", prompt="The capital of France is", max_tokens=2,
                                      temperature=0)
        assert r.usage.completion_tokens == 2
        # the process is the server's: its heap frozen after warm-up, its collections and steps timed
        metrics = dict(line.rsplit(" ", 1) for line in httpx.get(base + "/metrics").text.splitlines()
                       if not line.startswith("#"))
        assert int(metrics["smollm3_gc_frozen_objects"]) > 10_000
        assert "smollm3_gc_pause_seconds_count" in metrics
        steps = int(metrics["smollm3_step_seconds_count"])  # a prompt step, then a decode step at least
        assert 2 <= steps <= int(metrics["smollm3_prefill_steps_total"]) + int(metrics["smollm3_decode_steps_total"])
        assert steps == int(metrics['smollm3_step_seconds_bucket{le="+Inf"}']) and float(metrics["smollm3_step_seconds_sum"]) > 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_server_on_gpu_with_cuda_graphs(smollm2_dir):
    from smollm3.infer.llm import build_engine

    engine, _ = build_engine(smollm2_dir, device="cuda", dtype=torch.bfloat16, max_model_len=512, max_num_seqs=8)
    assert engine.runner.use_graphs
    from smollm3.infer import SamplingParams

    ids = engine.tokenizer.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    r = engine.generate([ids] * 3, SamplingParams(max_tokens=16, temperature=0))
    assert all("Paris" in x.text for x in r)


def test_outbox_hands_every_update_over_in_order_with_few_wake_ups():
    """The engine thread's updates reach each queue in order, and a burst of them (one decode step's tokens for
    every stream) wakes the event loop a few times, not once per update."""
    from smollm3.infer.server import Outbox

    async def main():
        box = Outbox(asyncio.get_running_loop())
        drains = []
        drain = box._drain
        box._drain = lambda: (drains.append(1), drain())
        queues = [asyncio.Queue() for _ in range(8)]

        def engine_thread():
            for step in range(100):
                for i, q in enumerate(queues):
                    box.put(q, (i, step))

        await asyncio.to_thread(engine_thread)
        await asyncio.sleep(0.05)  # the last drain
        got = [[q.get_nowait() for _ in range(q.qsize())] for q in queues]
        assert got == [[(i, step) for step in range(100)] for i in range(8)]
        assert 1 <= len(drains) < 80, len(drains)  # 800 updates

    asyncio.run(main())


def test_a_lagging_stream_catches_up_in_one_chunk_per_choice():
    from smollm3.infer.server import coalesce

    # (choice, text, finish reason, logprob entries, tokens so far): the joined update keeps the last count
    ups = [(0, "a", None, [1], 1), (0, "b", None, [2], 2), (1, "x", None, [], 1), (1, "y", "stop", [], 2),
           (0, "c", "length", [3], 3)]
    assert coalesce(ups) == [(0, "ab", None, [1, 2], 2), (1, "xy", "stop", [], 2), (0, "c", "length", [3], 3)]
    # nothing joins an update that already finished, and an error stays on its own
    ups = [(0, "a", "stop", [], 1), (0, "", "error", [], 1), (1, "p", None, [], 1), (1, "", "error", [], 1)]
    assert coalesce(ups) == ups
