"""benchmarks/bench_serve.py against the real HTTP server (in-process) on the tiny model: every request completes
with its tokens, the latency figures are there and ordered, and the shared-prefix chat load is served from the
prefix cache. Also serve_host.py's host-only run, the SSE line splitting, and engine_steps.py's step table."""

import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("where", ["own process", "in process", "own process, two clients"])
def test_bench_serve_runs_and_counts(tiny_dir, tmp_path, where):
    bench = runpy.run_path(str(REPO / "benchmarks" / "bench_serve.py"))
    flags = {"own process": [], "in process": ["--in-process"], "own process, two clients": ["--client-processes", "2"]}
    res = bench["main"](["--model", str(tiny_dir), "--device", "cpu", "--input-len", "24", "--output-len", "6",
                         "--num-prompts", "6", "--concurrency", "1,3", "--max-model-len", "256",
                         "--out", str(tmp_path / "serve.json")] + flags[where])
    assert [r["concurrency"] for r in res["runs"]] == [1, 3]
    assert res["engine"]["max_model_len"] == 256 and res["engine"]["kv_cache_tokens"] > 0
    for run in res["runs"]:
        assert run["completed"] == 6 and run["failed"] == 0 and run["output_tokens"] == 36
        assert 0 < run["ttft_p50_ms"] <= run["ttft_p99_ms"] and 0 < run["itl_p50_ms"] <= run["itl_p99_ms"]
        assert run["itl_per_token"] and 0 < run["chunk_gap_p50_ms"] <= run["chunk_gap_p99_ms"]
        # the engine's own counts over the run: every prompt token prefilled, a decode step per later token
        assert run["engine"]["prompt_tokens"] == 6 * 24 and run["engine"]["decode_steps"] >= 5
        assert run["engine"]["max_running"] <= run["concurrency"]
        if where != "in process":  # (the poll every 0.1 s may miss a short run: the high-water mark cannot)
            assert 1 <= run["engine"]["max_running_since_start"] <= 3
            # the server's step histogram over the run: one observation per step, a step prefills or decodes or both
            e, steps = run["engine"], run["engine"]["step_seconds"]
            assert max(e["decode_steps"], e["prefill_steps"]) <= steps["count"] <= e["decode_steps"] + e["prefill_steps"]
            p50, p99, top = (float(steps[k]) for k in ("p50_le_ms", "p99_le_ms", "max_le_ms"))  # "inf": past 2.5 s
            assert 0 < p50 <= p99 <= top
            assert "gc_pauses" in e  # a server run as `smollm3 serve` times its collections (often none in a run)
        else:
            assert 1 <= run["engine"]["max_running"]


@pytest.mark.real_weights
def test_bench_serve_shared_prefix_chat_hits_the_cache(smollm2_dir, tmp_path):
    bench = runpy.run_path(str(REPO / "benchmarks" / "bench_serve.py"))
    res = bench["main"](["--model", str(smollm2_dir), "--device", "cpu", "--dataset", "chat-shared-prefix",
                         "--output-len", "3", "--num-prompts", "3", "--concurrency", "1", "--max-model-len", "2048",
                         "--out", str(tmp_path / "chat.json")])
    run = res["runs"][0]
    prefix = 64 * 3  # the template's system turn and the two tool specs fill more than three blocks
    assert run["completed"] == 3 and run["cached_prompt_tokens"] >= 2 * prefix


def test_serve_host_measures_the_host_path_alone(tiny_dir, tmp_path):
    """benchmarks/serve_host.py: the real server with the device work a no-op completes every streamed request and
    counts the engine's steps."""
    host = runpy.run_path(str(REPO / "benchmarks" / "serve_host.py"))
    run = host["main"](["--model", str(tiny_dir), "--num-prompts", "8", "--input-len", "16", "--output-len", "5",
                        "--client-processes", "2", "--out", str(tmp_path / "host.json")])["run"]
    assert run["completed"] == 8 and run["failed"] == 0 and run["output_tokens"] == 40
    assert run["decode_steps"] >= 4 and run["prefill_steps"] >= 1 and run["host_ms_per_step"] > 0


def test_a_chunks_gap_is_shared_by_the_tokens_it_carries():
    """Per-token gaps from chunk times and running token counts (continuous usage): 2 tokens after 30 ms are two
    gaps of 15; a chunk that brings no new token (held text released) rolls its gap into the next; without counts,
    a chunk is a token."""
    per_token_gaps = runpy.run_path(str(REPO / "benchmarks" / "bench_serve.py"))["per_token_gaps"]
    times, counts = [0.0, 0.010, 0.040, 0.045, 0.060], [1, 2, 4, 4, 5]
    assert per_token_gaps(times, counts) == pytest.approx([0.010, 0.015, 0.015, 0.020])
    assert per_token_gaps(times, [None] * 5) == pytest.approx([0.010, 0.030, 0.005, 0.015])
    assert per_token_gaps([], []) == []


def test_stream_events_survive_line_separators_in_text():
    """U+2028, U+2029 and U+0085 are legal raw inside JSON, but str.splitlines() (httpx's aiter_lines) ends a line at
    each: the server escapes them, and bench_serve's client splits lines only where server-sent events do."""
    import asyncio
    import json

    from smollm3.infer.server import sse

    text = "a\u2028b\u2029c\u0085d\ne\r"
    event = sse({"text": text})
    assert len(event.strip().splitlines()) == 1 and json.loads(event[len("data: "):])["text"] == text
    bench = runpy.run_path(str(REPO / "benchmarks" / "bench_serve.py"))

    class Response:  # a raw (unescaped) event cut across reads, as another server may send it
        async def aiter_text(self):
            for piece in ['data: {"t": "x\u2028', 'y"}\r', '\ndata: [DONE]\n\n']:
                yield piece

    async def lines():
        return [line async for line in bench["sse_lines"](Response())]

    assert asyncio.run(lines()) == ['data: {"t": "x\u2028y"}', "data: [DONE]", ""]


def test_engine_steps_classes_every_step(tiny_dir, tmp_path):
    """benchmarks/engine_steps.py: every prompt token and every decode row is in the step table, in each pass; a
    profiled step is timed apart."""
    bench = runpy.run_path(str(REPO / "benchmarks" / "engine_steps.py"))
    res = bench["main"](["--model", str(tiny_dir), "--max-model-len", "256", "--requests", "12", "--input-len", "40",
                         "--output-len", "5", "--passes", "async,sync", "--profile-steps", "1",
                         "--out", str(tmp_path / "steps.json")])
    assert [p["sync_every_step"] for p in res["passes"]] == [False, True]
    for p in res["passes"]:
        kinds, (profiled,) = p["kinds"], p["profiled_steps"]
        decode_rows, prompt = profiled["plan"]
        decode_rows += sum(k["decode_rows"] for k in kinds.values())
        prompt += sum(k["prompt_tokens"] for k in kinds.values())
        # the first token of each reply comes with its prompt's last chunk, the other 4 from decode steps
        assert prompt == 12 * 40 and decode_rows == 12 * 4
        assert sum(k["steps"] for k in kinds.values()) + 1 == p["steps"] and profiled["wall_ms"] > 0


def test_long_prompt_runs_beside_its_baseline_on_one_server(tiny_dir, tmp_path):
    """--long-prompt-len with --with-baseline and --repeat: per repeat, the load alone and then with the long prompt,
    against one server; serve_targets' target 9 is each repeat's p99 during the prompt over the p50 alone, and the
    median of the repeats."""
    bench = runpy.run_path(str(REPO / "benchmarks" / "bench_serve.py"))
    res = bench["main"](["--model", str(tiny_dir), "--device", "cpu", "--in-process", "--input-len", "16",
                         "--output-len", "230", "--num-prompts", "3", "--max-model-len", "256",
                         "--long-prompt-len", "250", "--max-num-batched-tokens", "64",
                         "--max-prefill-tokens-during-decode", "8", "--with-baseline", "--repeat", "2",
                         "--out", str(tmp_path / "t9.json")])
    rows = res["runs"]
    assert [(r["repeat"], r["long_prompt"]) for r in rows] == [(0, False), (0, True), (1, False), (1, True)]
    for r in rows:
        assert r["completed"] == 3 and r["failed"] == 0 and r["output_tokens"] == 690
        assert ("long_prompt_ttft_ms" in r) == r["long_prompt"] and ("itl_during_long_prefill_count" in r) == r["long_prompt"]
    during = [r for r in rows if r["long_prompt"]]
    assert all(r["long_prompt_ttft_ms"] > 0 and r["itl_during_long_prefill_count"] > 0 for r in during)
    # 230 tokens a stream outlast the 250-token prompt read 8 tokens a step
    assert [r["long_prefill_streamed_fraction"] for r in during] == [1.0, 1.0]
    summary = runpy.run_path(str(REPO / "benchmarks" / "serve_targets.py"))["t9_summary"]
    t9 = summary(rows)
    want = [round(d["itl_during_long_prefill_p99_ms"] / a["itl_p50_ms"], 2) for a, d in zip(rows[0::2], rows[1::2])]
    assert t9["each_repeat"] == want and t9["itl_p99_during_over_p50_alone"] == sum(want) / 2
    assert t9["met"] == (sum(want) / 2 <= 3) and t9["itl_p50_alone_ms"] == [rows[0]["itl_p50_ms"], rows[2]["itl_p50_ms"]]
    # streams that end before the prompt is read leave its deepest steps unmeasured: not met, whatever the ratio
    short = [dict(r, itl_during_long_prefill_p99_ms=rows[0]["itl_p50_ms"], long_prefill_streamed_fraction=0.8)
             if r["long_prompt"] else r for r in rows]
    assert summary(short)["each_repeat"][0] <= 3 and not summary(short)["met"]


def test_with_baseline_needs_a_long_prompt(tiny_dir, tmp_path, capsys):
    bench = runpy.run_path(str(REPO / "benchmarks" / "bench_serve.py"))
    with pytest.raises(SystemExit):
        bench["main"](["--model", str(tiny_dir), "--with-baseline", "--out", str(tmp_path / "x.json")])
    assert "--with-baseline compares a load with and without --long-prompt-len" in capsys.readouterr().err
