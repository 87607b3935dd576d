"""The server under load (the tiny model on CPU, real HTTP on 127.0.0.1): 256 concurrent streaming clients, 50 of
whom disconnect mid-stream, all served at once by the paged engine; every block is back in the free pool as
/health reports it; and resident memory after 2,000 requests stays within 5% of after 200."""

import asyncio
import json
import time

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from live_server import start  # noqa: E402 (after the importorskips)


@pytest.fixture(scope="module")
def server(tiny_dir):
    from smollm3.infer.server import build_state, create_app

    state = build_state(str(tiny_dir), device="cpu", max_model_len=256, max_num_seqs=256)
    base, stop = start(create_app(state), limit_concurrency=2048, backlog=2048)
    yield base, state.engine.engine
    stop()
    state.engine.close()


async def stream(client, base, prompt, max_tokens, drop_after=None) -> int:
    """Stream one completion; with drop_after, hang up after that many chunks. -> tokens generated (the usage the
    last chunk reports), or -1 for a stream dropped on purpose."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    chunks, tokens = 0, None
    async with client.stream("POST", base + "/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                assert "error" not in event
                chunks += 1
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                if drop_after is not None and chunks >= drop_after:
                    return -1  # leaving the block closes the connection mid-stream
    return tokens


async def many(base, n, max_tokens, drop=0, concurrency=None):
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    sem = asyncio.Semaphore(concurrency or n)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def one(i):
            async with sem:
                if i < drop:  # long enough to be running still when the hang-up is noticed
                    return await stream(client, base, [5 + i % 200, 9, 11 + i % 7], 250, drop_after=2)
                return await stream(client, base, [5 + i % 200, 9, 11 + i % 7], max_tokens)
        return await asyncio.gather(*[one(i) for i in range(n)])


def health(base):
    return httpx.get(base + "/health", timeout=10).json()


def wait_idle(base, engine):
    deadline = time.time() + 60
    while (engine.num_running or engine.num_waiting) and time.time() < deadline:
        time.sleep(0.05)
    return health(base)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_256_streams_at_once_50_disconnect_and_every_block_comes_back(server):
    base, engine = server
    engine.stats["max_running"] = 0
    aborted = engine.stats["aborted"]
    chunks = asyncio.run(many(base, 256, max_tokens=48, drop=50))
    assert chunks == [-1] * 50 + [48] * 206  # the others completed with all their tokens
    h = wait_idle(base, engine)
    # a hang-up is noticed when the server next writes to the socket; on a busy CPU the engine can finish a dropped
    # request's 250 tokens before the event loop gets there (seen: 1 in 50), so most, not all, end as aborted
    assert 40 <= engine.stats["aborted"] - aborted <= 50
    assert engine.stats["max_running"] > 200  # admitted together, not queued behind a few slots
    assert h["running"] == 0 and h["kv_blocks_free"] == h["kv_blocks_total"] == engine.blocks.num_blocks
    engine.blocks.check()


def test_resident_memory_settles(server):
    base, engine = server
    asyncio.run(many(base, 200, max_tokens=4, concurrency=64))
    wait_idle(base, engine)
    after_200 = rss_bytes()
    asyncio.run(many(base, 1800, max_tokens=4, concurrency=64))
    h = wait_idle(base, engine)
    after_2000 = rss_bytes()
    assert after_2000 <= 1.05 * after_200, (after_200, after_2000)
    assert h["kv_blocks_free"] == h["kv_blocks_total"]
