"""Issue 26: one request cannot freeze the server. Over HTTP against the real SmolLM2-135M-Instruct: a body limit
(413, from Content-Length or while a chunked upload streams), 400s for invalid Unicode and too-deep JSON, a bounded
waiting queue (429), /health fast while large requests are refused, and a warning when listening beyond localhost
without an API key."""

import concurrent.futures
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.real_weights

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from live_server import FRANCE, MODEL, client, start  # noqa: E402 (after the importorskips)

LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def server(smollm2_llm):
    """One KV slot and room for one waiting request, so the queue is easy to fill."""
    from smollm3.infer import BackgroundEngine, Engine
    from smollm3.infer.server import ServerState, create_app

    llm = smollm2_llm
    engine = Engine(llm.model, llm.tokenizer, max_model_len=512, max_num_seqs=1,
                    eos_token_ids=sorted(llm.engine.eos_token_ids), defaults=llm.engine.defaults)
    state = ServerState(BackgroundEngine(engine), llm.tokenizer, MODEL, llm.chat_template, max_body_bytes=LIMIT,
                        max_waiting=1)
    base, stop = start(create_app(state))
    yield SimpleNamespace(base=base, state=state, engine=engine, client=client(base))
    stop()
    state.engine.close()


def post(server, body: bytes, path="/v1/chat/completions", **kw):
    return httpx.post(server.base + path, content=body, headers={"content-type": "application/json"}, timeout=120,
                      **kw)


def still_serving(server):
    r = server.client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=2)
    assert r.choices[0].message.content


def test_body_limit_413_from_content_length_and_from_a_chunked_upload(server):
    big = b'{"prompt": "' + b"x" * LIMIT + b'"}'
    r = post(server, big, "/v1/completions")
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text

    def chunked():  # no Content-Length: the server counts while it reads
        for _ in range(64):
            yield b" " * 8192
        yield b"{}"

    r = httpx.post(server.base + "/v1/completions", content=chunked(), timeout=120)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413 and "at most 262144 bytes" in r.json()["error"]["message"]
    still_serving(server)


@pytest.mark.parametrize("body, param, needle", [
    (b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}', "messages", "lone surrogate"),
    (b'{"prompt": "\\udfff", "max_tokens": 1}', "prompt", "lone surrogate"),
    (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "deeper"),
    (b'{"messages": ' + b"[" * 100 + b"]" * 100 + b"}", "messages", "deeper"),
    (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', None, "UTF-8"),
])
def test_invalid_unicode_and_deep_json_are_400s(server, body, param, needle):
    path = "/v1/completions" if b"prompt" in body else "/v1/chat/completions"
    r = post(server, body, path)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
    assert r.json()["error"]["param"] == param
    still_serving(server)


def test_full_queue_gets_429(server):
    long = {"model": MODEL, "messages": FRANCE, "max_tokens": 400, "ignore_eos": True, "temperature": 0,
            "stream": True}
    with httpx.stream("POST", server.base + "/v1/chat/completions", json=long, timeout=120) as a:
        next(a.iter_lines())
        deadline = time.time() + 60
        while server.engine.num_running < 1 and time.time() < deadline:
            time.sleep(0.05)
        with httpx.stream("POST", server.base + "/v1/chat/completions", json=long, timeout=120) as b:
            next(b.iter_lines())
            assert server.engine.num_running == 1 and server.engine.num_waiting == 1  # the slot is taken: b waits
            with pytest.raises(openai.RateLimitError) as e:
                server.client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=2)
            assert e.value.status_code == 429 and e.value.response.headers["retry-after"] == "1"
            assert e.value.body["code"] == "rate_limit_exceeded"
            assert httpx.get(server.base + "/health").json()["waiting"] == 1
    deadline = time.time() + 60  # both streams closed: aborted, the queue drains
    while (server.engine.num_running or server.engine.num_waiting) and time.time() < deadline:
        time.sleep(0.05)
    still_serving(server)


def test_health_stays_fast_while_large_requests_are_refused(server):
    """A body at the limit (refused before tokenizing: it cannot fit the context) and eight prompts that must be
    tokenized to be refused, all at once, while /health is polled."""
    at_limit = b'{"prompt": "' + b"x" * (LIMIT - 64) + b'"}'
    tokenized = ('{"prompt": "' + "hello " * 12_000 + '"}').encode()  # 72 kB, under the no-tokenize bound
    assert len(tokenized) < 512 * server.state.token_bytes

    def refuse(body):
        return post(server, body, "/v1/completions").json()["error"]["code"]

    httpx.get(server.base + "/health")
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        jobs = [pool.submit(refuse, at_limit)] + [pool.submit(refuse, tokenized) for _ in range(8)]
        worst = 0.0
        with httpx.Client(base_url=server.base) as http:
            while not all(j.done() for j in jobs):
                t = time.perf_counter()
                assert http.get("/health").status_code == 200
                worst = max(worst, time.perf_counter() - t)
                time.sleep(0.02)
        assert [j.result() for j in jobs] == ["context_length_exceeded"] * 9
    assert worst < 0.1, f"/health took {worst * 1000:.0f} ms"
    still_serving(server)


def test_warning_when_listening_beyond_localhost_without_a_key(smollm2_dir):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "smollm3.cli", "serve", "--model", str(smollm2_dir), "--port", "0",
                             "--host", "0.0.0.0", "--max-model-len", "128", "--max-num-seqs", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("serving"):
                break
        assert any(s.startswith("WARNING: listening on 0.0.0.0 without an API key") for s in seen), "".join(seen)
        port = line.split(" on ")[1].split()[0].removesuffix("/v1").rsplit(":", 1)[1]
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_one_request_cannot_fill_the_queue_by_itself(server):
    """prompts x n beyond what the queue takes for one request (max(max_waiting, 64)) is a 400, not a 429: retrying
    would never help."""
    with pytest.raises(openai.BadRequestError) as e:
        server.client.completions.create(model=MODEL, prompt=["a", "b", "c", "d", "e"], n=13, max_tokens=1)
    assert e.value.body["param"] == "prompt" and "65 generations" in e.value.body["message"]
    assert server.engine.num_waiting == 0
    still_serving(server)
