"""Serving benchmark over HTTP, modelled on `vllm bench serve`: streamed requests against the OpenAI server, latency
and throughput as a user of the server sees them.

    python benchmarks/bench_serve.py --model runs/m --input-len 512 --output-len 256 --num-prompts 256 \\
        --concurrency 1,8,64,256 --out benchmarks/results/DATE-serve.json
    python benchmarks/bench_serve.py --preset smollm3-3b --max-model-len 65536 ...   # random weights, SmolLM3's
        # tokenizer (pip install --no-deps llama-models)
    python benchmarks/bench_serve.py --base-url http://127.0.0.1:8000 ...            # a server already running

Without --base-url, `smollm3 serve` runs in a process of its own with the engine settings given here (the client's
per-token work would otherwise share the server's interpreter, as a real client's does not); --in-process serves
from this process instead (its engine on a background thread, uvicorn on another). Datasets:
- `random`: prompts of exactly --input-len random token ids, sent to /v1/completions as ids; --output-len tokens
  each (ignore_eos), greedy.
- `chat-shared-prefix`: chat requests that share SmolLM3's think-mode system prompt and two tool specs and differ
  in the user turn (a chat app's traffic; what prefix caching serves), to /v1/chat/completions.
Load: a fixed --concurrency (a sweep, comma-separated) or a Poisson --request-rate. --long-prompt-len N adds one
N-token request once the streams are running and reports the streams' inter-token latency while it is read;
--with-baseline runs the same load without it first, against the same server, as the latency to compare with (one
server process for both: the streams-alone p50 of one tree's server processes moved 4.74-6.31 ms within one H100
lease, session 25). --repeat runs each load (and its baseline) that many times.
Per run: requests completed, output tok/s, TTFT, TPOT (per request: (latency - TTFT) / (tokens - 1)) and
inter-token latency (ITL: per token, a chunk's gap shared by the tokens it carries, counted from the usage the
server puts in every chunk with stream_options.continuous_usage_stats, as SGLang's bench_serving does; where a
server gives no such count, per chunk), the gaps between chunks as they came (chunk_gap_*), each p50/p99 in ms,
and, with the server in another process,
the share of one core the client itself used (near 1: the client's parsing bounds the figures); JSON under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

WEATHER_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                                          "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Current local time in a time zone",
                                      "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                                                     "required": ["zone"]}}},
]
CITIES = ["Paris", "Lagos", "Lima", "Osaka", "Quito", "Oslo", "Perth", "Cairo", "Hanoi", "Tunis", "Minsk", "Dakar"]


def start_server(args):
    """The OpenAI server in this process -> (base URL, served model name, engine, stop function)."""
    import uvicorn

    from smollm3.infer.server import create_app, kv_capacity_line

    state = build_state(args)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    engine = state.engine.engine
    print(kv_capacity_line(engine), flush=True)

    def stop():
        srv.should_exit = True
        thread.join(timeout=10)
        state.engine.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", state.model_name, engine, stop


def start_server_process(args):
    """`smollm3 serve` in a process of its own (as `vllm bench serve` runs beside `vllm serve`): the client's
    per-token work does not share the server's interpreter -> (base URL, served model name, vocab size, stop)."""
    model_dir = args.model or str(preset_dir(args.preset, args.device))
    port = free_port()
    cmd = [sys.executable, "-m", "smollm3.cli", "serve", "--model", model_dir, "--port", str(port),
           "--max-num-seqs", str(args.max_num_seqs), "--gpu-memory-utilization", str(args.gpu_memory_utilization),
           "--max-num-batched-tokens", str(args.max_num_batched_tokens)]
    if args.max_prefill_tokens_during_decode:
        cmd += ["--max-prefill-tokens-during-decode", str(args.max_prefill_tokens_during_decode)]
    if args.max_prefill_layers_during_decode:
        cmd += ["--max-prefill-layers-during-decode", str(args.max_prefill_layers_during_decode)]
    cmd += ["--max-model-len", str(args.max_model_len)] if args.max_model_len else []
    cmd += ["--no-prefix-caching"] if args.no_prefix_caching else []
    cmd += ["--invariant-prefill"] if args.invariant_prefill else []
    cmd += ["--device", args.device] if args.device else []
    cmd += ["--chat-template", "smollm3"] if args.dataset == "chat-shared-prefix" else []
    log = tempfile.NamedTemporaryFile("w+", prefix="bench-serve-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def stop():
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()

    wait_until_healthy(proc, base, 900, stop, log.name)
    for line in Path(log.name).read_text().splitlines():
        if line.startswith(("KV cache", "warm-up")):
            print(line, flush=True)
    name = httpx.get(base + "/v1/models").json()["data"][0]["id"]
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    return base, name, vocab, stop


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def wait_until_healthy(proc: subprocess.Popen, base: str, timeout: float, stop, log: str | None = None):
    """Until the server process at `base` answers /health; SystemExit naming why if it exits or `timeout` s pass
    (then `stop()` it). `log`: its log file, whose tail an exit shows."""
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            tail = f":\n{Path(log).read_text()[-3000:]}" if log else " (its output is above)"
            raise SystemExit(f"the server exited ({proc.returncode}){tail}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            stop()
            where = f"; its log: {log}" if log else ""
            raise SystemExit(f"the server did not answer /health in {timeout:g} s{where}")
        time.sleep(0.3)


def server_counts(base: str) -> dict:
    """The server's engine counters from /metrics (Prometheus text)."""
    names = {"smollm3_prompt_tokens_total": "prompt_tokens", "smollm3_prompt_tokens_cached_total": "cached_prompt_tokens",
             "smollm3_preemptions_total": "preemptions", "smollm3_decode_steps_total": "decode_steps",
             "smollm3_prefill_steps_total": "prefill_steps", "smollm3_requests_running_max": "max_running_since_start"}
    out = {}
    for line in httpx.get(base + "/metrics").text.splitlines():
        key, _, value = line.partition(" ")
        if key in names:
            out[names[key]] = int(float(value))
    return out


def server_histograms(base: str) -> dict:
    """The server's histograms from /metrics: {name: {bound: cumulative count}} for the engine's step time and the
    garbage collector's pauses (the latter only where the server runs as `smollm3 serve`)."""
    out = {}
    for line in httpx.get(base + "/metrics").text.splitlines():
        for name in ("smollm3_step_seconds", "smollm3_gc_pause_seconds"):
            if line.startswith(name + '_bucket{le="'):
                bound, _, value = line[len(name) + 12:].partition('"} ')
                out.setdefault(name, {})[float(bound)] = int(float(value))
    return out


def histogram_summary(before: dict, after: dict) -> dict:
    """A run's share of one histogram (after less before): observations, and the bucket bounds (ms) that hold the
    p50, the p99 and the largest (a quantile lies at or below its bound, above the bound before)."""
    counts = {b: after[b] - before.get(b, 0) for b in sorted(after)}
    n = counts[float("inf")]

    def bound(q):
        b = next(b for b, c in counts.items() if c >= q * n)
        return round(b * 1e3, 2) if b != float("inf") else "inf"

    return {"count": n, "p50_le_ms": bound(0.5), "p99_le_ms": bound(0.99), "max_le_ms": bound(1.0)} if n else {"count": 0}


def preset_dir(name: str, device: str | None) -> Path:
    """Random weights of preset `name` written by a process of its own (bf16 on a GPU), so that this process holds
    no GPU memory that a server's KV sizing would count."""
    out = Path(tempfile.mkdtemp(prefix="bench-serve-")) / name
    code = ("import runpy, sys, torch; from pathlib import Path; dev = sys.argv[4] or ('cuda' if "
            "torch.cuda.is_available() else 'cpu'); runpy.run_path(sys.argv[1])['write_preset'](sys.argv[2], "
            "Path(sys.argv[3]), torch.bfloat16 if dev.startswith('cuda') else torch.float32, dev)")
    subprocess.run([sys.executable, "-c", code, __file__, name, str(out), device or ""], check=True)
    return out


def build_state(args):
    import torch

    from smollm3.infer.server import build_state as from_dir

    kw = dict(max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
              gpu_memory_utilization=args.gpu_memory_utilization, max_num_batched_tokens=args.max_num_batched_tokens,
              max_prefill_tokens_during_decode=args.max_prefill_tokens_during_decode,
              max_prefill_layers_during_decode=args.max_prefill_layers_during_decode,
              prefix_caching=not args.no_prefix_caching, invariant_prefill=args.invariant_prefill, device=args.device)
    if args.dataset == "chat-shared-prefix":  # the load sends tools: serve a template that renders them (the server
        kw["chat_template"] = "smollm3"  # refuses tools with tool_choice auto where the model would never see them)
    if args.model:
        return from_dir(args.model, **kw)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(tempfile.mkdtemp(prefix="bench-serve-")) / args.preset
    write_preset(args.preset, out, torch.bfloat16 if device == "cuda" else torch.float32, device)
    return from_dir(str(out), **kw)


def write_preset(name: str, out: Path, dtype, device: str = "cpu") -> Path:
    """A checkpoint directory of preset `name` with random weights (seed 0) and SmolLM3's tokenizer."""
    import torch

    from smollm3 import build_model, preset, save_pretrained
    from smollm3.tokenizer import smollm3_tokenizer

    tok = smollm3_tokenizer()
    cfg = preset(name)
    cfg.vocab_size = max(cfg.vocab_size, tok.vocab_size)
    torch.manual_seed(0)
    save_pretrained(build_model(cfg, device=device, dtype=dtype), out, tokenizer=tok)
    return out


def requests_for(args, rng: random.Random, vocab: int) -> list[tuple[str, dict]]:
    """(endpoint, body) per request."""
    out = []
    for i in range(args.num_prompts):
        if args.dataset == "random":
            ids = [rng.randrange(min(1000, vocab // 2), vocab) for _ in range(args.input_len)]
            out.append(("/v1/completions", {"prompt": ids, "max_tokens": args.output_len}))
        else:
            city = CITIES[i % len(CITIES)]
            user = f"Request {i}: what is the weather in {city} right now, and what time is it there?"
            out.append(("/v1/chat/completions", {"messages": [{"role": "user", "content": user}],
                                                 "tools": WEATHER_TOOLS, "max_tokens": args.output_len}))
    for _, body in out:
        body.update(temperature=0, ignore_eos=True, stream=True,
                    stream_options={"include_usage": True, "continuous_usage_stats": True})
    return out


async def sse_lines(resp: httpx.Response):
    """The response's lines as server-sent events define them: ended by \\n, \\r\\n or \\r only (httpx's aiter_lines
    also ends one at U+2028 and the like, which a server may send raw inside a JSON string)."""
    rest = ""
    async for text in resp.aiter_text():
        text = rest + text
        held = "\r" if text.endswith("\r") else ""  # perhaps the first half of a \r\n cut across reads
        *lines, rest = text[:len(text) - len(held)].replace("\r\n", "\n").replace("\r", "\n").split("\n")
        rest += held
        for line in lines:
            yield line
    if rest:
        yield rest


async def one_request(client: httpx.AsyncClient, base: str, model: str, endpoint: str, body: dict) -> dict:
    """One streamed request: TTFT, and the inter-token latencies per token. A chunk can carry several tokens (the
    server holds a token whose text ends inside a UTF-8 character until the next completes it: ~1.1% of SmolLM3's
    vocabulary, so a random-weight model's replies are full of them); with usage in every chunk
    (continuous_usage_stats) each of a chunk's k tokens gets 1/k of its gap, as SGLang's bench_serving counts.
    Without it, one chunk is one token. `chunk_gaps` keeps the gaps between chunks as they came."""
    t0 = time.perf_counter()
    chunks, counts, text, usage, error = [], [], [], None, None
    try:
        async with client.stream("POST", base + endpoint, json={**body, "model": model}) as resp:
            if resp.status_code != 200:
                return {"ok": False, "error": f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"}
            async for line in sse_lines(resp):
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    error = event["error"]
                    continue
                if event.get("usage"):
                    usage = event["usage"]
                for c in event.get("choices", []):
                    piece = c.get("text") or (c.get("delta") or {}).get("content") or \
                        (c.get("delta") or {}).get("reasoning") or ""
                    if piece:
                        chunks.append(time.perf_counter())
                        counts.append((event.get("usage") or {}).get("completion_tokens"))
                        text.append(piece)
    except httpx.HTTPError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    end = time.perf_counter()
    n = usage["completion_tokens"] if usage else len(chunks)
    if error is None and not chunks:  # e.g. a random-weight model repeating the prompt's last newline, which the
        # chat parser holds back as leading whitespace: no chunk to time the first token by
        error = f"no visible text in {n} streamed tokens (whitespace only?): TTFT and ITL need visible tokens"
    return {"ok": error is None and bool(chunks), "error": error, "start": t0, "ttft": chunks[0] - t0 if chunks else None,
            "latency": end - t0, "tokens": n, "itl": per_token_gaps(chunks, counts), "chunk_gaps": list(np.diff(chunks)),
            "per_token": bool(counts) and None not in counts, "text": "".join(text),
            "cached": ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")}


def per_token_gaps(times: list[float], counts: list) -> list[float]:
    """The gaps between tokens from chunk arrival times and each chunk's running token count (None: unknown, one
    token a chunk): k new tokens after a gap g are k gaps of g / k; a chunk with no new token (text the server held
    back, released) adds its gap to the next."""
    if None in counts:
        return list(np.diff(times))
    out, last_t, last_n = [], times[0] if times else 0.0, counts[0] if counts else 0
    for t, n in zip(times[1:], counts[1:]):
        if n > last_n:
            out += [(t - last_t) / (n - last_n)] * (n - last_n)
            last_t, last_n = t, n
    return out


async def poll_running(client: httpx.AsyncClient, base: str, peak: list[int]):
    while True:
        try:
            peak.append((await client.get(base + "/health")).json()["running"])
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        await asyncio.sleep(0.1)


async def run_load(base, model, reqs, concurrency, rate, long_req, rng,
                   peak: list | None = None) -> tuple[list[dict], dict | None, float]:
    """`peak`: a list that gets the server's running-request count every 0.1 s (its /health)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600.0), limits=limits) as client:
        poller = asyncio.create_task(poll_running(client, base, peak)) if peak is not None else None
        sem = asyncio.Semaphore(concurrency or len(reqs))

        async def limited(ep, body):
            async with sem:
                return await one_request(client, base, model, ep, body)

        t0 = time.perf_counter()
        tasks = []
        for ep, body in reqs:
            tasks.append(asyncio.create_task(limited(ep, body)))
            if rate:
                await asyncio.sleep(rng.expovariate(rate))
        long_res = None
        if long_req is not None:  # once every stream has its first token: the long prompt arrives mid-decode
            await asyncio.sleep(0.5)
            long_res = await one_request(client, base, model, *long_req)
        results = await asyncio.gather(*tasks)
        if poller is not None:
            poller.cancel()
        return results, long_res, (t0, time.perf_counter())


def run_load_split(processes: int, base, model, reqs, concurrency, rate, long_req, seed,
                   peak: list | None = None) -> tuple[list[dict], dict | None, tuple[float, float]]:
    """run_load over `processes` client processes, each with its share of the requests, the concurrency and the
    rate (the long prompt and the poll in the first): one Python client parsing every streamed event can be what
    bounds the figures. Times are perf_counter, one clock for every process of the machine."""
    concurrency = concurrency or len(reqs)
    processes = min(processes, concurrency, len(reqs))  # each process keeps at least one request in flight
    if processes == 1:
        return asyncio.run(run_load(base, model, reqs, concurrency, rate, long_req, random.Random(seed), peak))
    import multiprocessing

    def share(i):  # the concurrency split exactly: the processes' shares add up to it
        conc = concurrency // processes + (i < concurrency % processes)
        return (i, base, model, reqs[i::processes], conc, rate / processes if rate else None,
                long_req if i == 0 else None, seed + i, peak is not None and i == 0)

    ctx = multiprocessing.get_context("fork")  # fork: nothing to pickle but the results (run_path'd scripts too)
    done = ctx.Queue()
    procs = [ctx.Process(target=_client_process, args=(done, share(i)), daemon=True) for i in range(processes)]
    for proc in procs:
        proc.start()
    got = {}
    while len(got) < processes:
        try:
            i, part = done.get(timeout=1.0)
            got[i] = part
        except queue.Empty:
            if any(proc.exitcode not in (None, 0) for proc in procs):
                raise SystemExit("a client process failed (its traceback is above)") from None
    for proc in procs:
        proc.join()
    parts = [got[i] for i in range(processes)]
    results = [None] * len(reqs)
    for i, part in enumerate(parts):  # back in the order of the requests
        results[i::processes] = part[0]
    if peak is not None:
        peak.extend(parts[0][3])
    return results, parts[0][1], (min(p[2][0] for p in parts), max(p[2][1] for p in parts))


def _client_process(done, args):
    i, base, model, reqs, conc, rate, long_req, seed, poll = args
    peak = [] if poll else None
    results, long_res, span = asyncio.run(run_load(base, model, reqs, conc, rate, long_req, random.Random(seed), peak))
    done.put((i, (results, long_res, span, peak or [])))


def pct(xs, q):
    return round(float(np.percentile(xs, q)) * 1e3, 2) if len(xs) else None


def gaps_within(results: list[dict], key: str, window: tuple[float, float]) -> list[float]:
    """The gaps (`itl` or `chunk_gaps`) of the results that end inside window (start, end)."""
    a, b = window
    out = []
    for r in results:
        t = r["start"] + r["ttft"]
        for x in r[key]:
            t += x
            if a <= t <= b:
                out.append(x)
    return out


def summarise(results: list[dict], wall: float, window: tuple[float, float] | None = None) -> dict:
    ok = [r for r in results if r["ok"]]
    itl = [x for r in ok for x in r["itl"]]
    tpot = [(r["latency"] - r["ttft"]) / (r["tokens"] - 1) for r in ok if r["tokens"] > 1]
    out = {"completed": len(ok), "failed": len(results) - len(ok), "duration_s": round(wall, 2),
           "output_tokens": sum(r["tokens"] for r in ok),
           "output_tok_s": round(sum(r["tokens"] for r in ok) / wall, 1),
           "ttft_p50_ms": pct([r["ttft"] for r in ok], 50), "ttft_p99_ms": pct([r["ttft"] for r in ok], 99),
           "tpot_p50_ms": pct(tpot, 50), "tpot_p99_ms": pct(tpot, 99),
           "itl_p50_ms": pct(itl, 50), "itl_p99_ms": pct(itl, 99),
           # per token where every stream said how many tokens each chunk carried (else per chunk)
           "itl_per_token": bool(ok) and all(r["per_token"] for r in ok),
           "chunk_gap_p50_ms": pct([x for r in ok for x in r["chunk_gaps"]], 50),
           "chunk_gap_p99_ms": pct([x for r in ok for x in r["chunk_gaps"]], 99),
           "cached_prompt_tokens": sum(r["cached"] or 0 for r in ok)}
    if window is not None:  # the gaps that ended while the long prompt was being read
        during, chunk_gaps = gaps_within(ok, "itl", window), gaps_within(ok, "chunk_gaps", window)
        out["itl_during_long_prefill_p50_ms"] = pct(during, 50)
        out["itl_during_long_prefill_p99_ms"] = pct(during, 99)
        out["itl_during_long_prefill_count"] = len(during)
        out["chunk_gap_during_long_prefill_p99_ms"] = pct(chunk_gaps, 99)
        # how much of the read the streams were there for: streams that end early leave its deepest (and dearest)
        # steps unmeasured
        last = max((r["start"] + r["latency"] for r in ok), default=window[0])
        out["long_prefill_streamed_fraction"] = round(min(1.0, max(0.0, (last - window[0]) / (window[1] - window[0]))),
                                                      3) if window[1] > window[0] else 0.0
    errors = [r["error"] for r in results if not r["ok"]]
    if errors:
        out["first_error"] = str(errors[0])[:300]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF model directory (served in this process)")
    src.add_argument("--preset", help="random weights of a preset, with SmolLM3's tokenizer (served in this process)")
    src.add_argument("--base-url", help="a running server, e.g. http://127.0.0.1:8000")
    ap.add_argument("--vocab-size", type=int, default=32000,
                    help="with --base-url: random prompt ids are drawn below this (the served model's vocabulary)")
    ap.add_argument("--served-model", default=None, help="model name at --base-url (default: its first model)")
    ap.add_argument("--dataset", choices=["random", "chat-shared-prefix"], default="random")
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--concurrency", default=None, help="comma-separated sweep, e.g. 1,8,64,256 (default: all at once)")
    ap.add_argument("--request-rate", type=float, default=None, help="Poisson arrivals per second instead")
    ap.add_argument("--long-prompt-len", type=int, default=None,
                    help="also send one prompt of this many tokens once the streams run; report ITL meanwhile")
    ap.add_argument("--with-baseline", action="store_true",
                    help="with --long-prompt-len: before each load, the same load without the long prompt, against "
                         "the same server (its row has long_prompt: false)")
    ap.add_argument("--repeat", type=int, default=1, help="run each load (and its baseline) this many times")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-outputs", action="store_true", help="keep every request's text in the JSON")
    eng = ap.add_argument_group("engine (in-process server)")
    eng.add_argument("--max-model-len", type=int, default=None)
    eng.add_argument("--max-num-seqs", type=int, default=256)
    eng.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    eng.add_argument("--max-num-batched-tokens", type=int, default=2048)
    eng.add_argument("--max-prefill-tokens-during-decode", type=int, default=None)
    eng.add_argument("--max-prefill-layers-during-decode", type=int, default=None)
    eng.add_argument("--no-prefix-caching", action="store_true")
    eng.add_argument("--invariant-prefill", action="store_true")
    eng.add_argument("--device", default=None)
    eng.add_argument("--in-process", action="store_true",
                     help="serve from this process (client, server and engine share one interpreter); default: "
                          "`smollm3 serve` in a process of its own")
    ap.add_argument("--client-processes", type=int, default=1,
                    help="split the load over this many client processes (a 256-stream load can keep one busy)")
    ap.add_argument("--out", required=True, help="JSON results file")
    args = ap.parse_args(argv)
    if args.client_processes < 1 or (args.client_processes > 1 and args.in_process):
        ap.error("--client-processes must be at least 1, and 1 with --in-process (the server shares this process)")
    if args.with_baseline and not args.long_prompt_len:
        ap.error("--with-baseline compares a load with and without --long-prompt-len: give --long-prompt-len")
    if args.repeat < 1:
        ap.error(f"--repeat must be at least 1 (got {args.repeat})")

    stop, engine = None, None
    if args.base_url:
        base = args.base_url.rstrip("/")
        model = args.served_model or httpx.get(base + "/v1/models").json()["data"][0]["id"]
        vocab = args.vocab_size
    elif args.in_process:
        base, model, engine, stop = start_server(args)
        vocab = engine.config.vocab_size
    else:
        base, model, vocab, stop = start_server_process(args)
    rng = random.Random(args.seed)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "args": {k: v for k, v in vars(args).items()}, "runs": []}
    if engine is not None:
        import torch

        res["device"] = torch.cuda.get_device_name() if engine.device.type == "cuda" else "cpu"
        res["engine"] = {"max_model_len": engine.max_model_len, "kv_cache_tokens": engine.kv_cache_tokens,
                         "block_size": engine.block_size, "max_num_seqs": engine.max_num_seqs,
                         "max_num_batched_tokens": engine.max_num_batched_tokens,
                         "max_prefill_tokens_during_decode": engine.scheduler.max_prefill_tokens_during_decode,
                         "max_prefill_layers_during_decode": engine.max_prefill_layers_during_decode,
                         "prefix_caching": engine.blocks.prefix_caching}
    elif not args.base_url:  # the server process's engine, as its endpoints describe it
        health, listed = httpx.get(base + "/health").json(), httpx.get(base + "/v1/models").json()["data"][0]
        res["engine"] = {"max_model_len": listed.get("max_model_len"),
                         "kv_cache_tokens": health["kv_blocks_total"] * health["kv_block_size"],
                         "block_size": health["kv_block_size"], "max_num_seqs": health["max_num_seqs"],
                         "max_num_batched_tokens": args.max_num_batched_tokens,
                         "max_prefill_tokens_during_decode": args.max_prefill_tokens_during_decode,
                         "max_prefill_layers_during_decode": args.max_prefill_layers_during_decode,
                         "prefix_caching": not args.no_prefix_caching, "invariant_prefill": args.invariant_prefill,
                         "server": "own process"}
    try:
        # vllm bench serve's initial test run: one request alone, which fails the benchmark early with its error
        # and leaves no first-request costs (cuBLAS handles, kernel selection) inside the timed runs
        first = requests_for(argparse.Namespace(**{**vars(args), "num_prompts": 1}), random.Random(args.seed + 1),
                             vocab)
        test = run_load_split(1, base, model, first, 1, None, None, args.seed)[0][0]
        if not test["ok"]:
            raise SystemExit(f"the initial test request failed: {test['error']}")
        concurrencies = [int(c) for c in args.concurrency.split(",")] if args.concurrency else [None]
        with_long = [False, True] if args.with_baseline else [bool(args.long_prompt_len)]
        loads = [(c, i, w) for c in concurrencies for i in range(args.repeat) for w in with_long]
        for conc, repeat, long_prompt in loads:
            reqs = requests_for(args, rng, vocab)
            long_req = None
            if long_prompt:
                ids = [rng.randrange(min(1000, vocab // 2), vocab) for _ in range(args.long_prompt_len)]
                long_req = ("/v1/completions", {"prompt": ids, "max_tokens": 1, "temperature": 0, "stream": True,
                                                "stream_options": {"include_usage": True,
                                                                   "continuous_usage_stats": True}})
            remote = engine is None and not args.base_url  # our server, in its own process
            before = dict(engine.stats) if engine is not None else server_counts(base) if remote else None
            hist_before = server_histograms(base) if remote else None
            if engine is not None:
                engine.stats["max_running"] = 0
            peak = []
            cpu = time.process_time()
            results, long_res, (t0, t1) = run_load_split(args.client_processes, base, model, reqs, conc,
                                                         args.request_rate, long_req, rng.randrange(2**31),
                                                         peak if remote else None)
            cpu, wall = time.process_time() - cpu, t1 - t0
            window = None
            if long_res is not None and long_res["ok"]:
                window = (long_res["start"], long_res["start"] + long_res["ttft"])
            row = {"concurrency": conc or len(reqs), "request_rate": args.request_rate, "repeat": repeat,
                   "long_prompt": long_prompt, **summarise(results, wall, window)}
            if engine is None and args.client_processes == 1:  # this process is only the client: near 100% of one
                # core, it bounds the figures
                row["client_cpu_share"] = round(cpu / wall, 2)
                if cpu > 0.8 * wall:
                    print(f"warning: the client used {cpu / wall:.0%} of a core: its own parsing may bound these "
                          "figures", flush=True)
            if engine is not None:  # the engine's own counts over the run
                row["engine"] = {k: engine.stats[k] - before[k] for k in ("prompt_tokens", "cached_prompt_tokens",
                                                                           "preemptions", "decode_steps",
                                                                           "prefill_steps")}
                row["engine"]["max_running"] = engine.stats.get("max_running")
            elif remote:  # the same counts from /metrics; requests running at once polled from /health every
                # 0.1 s (a lower bound), and the server's high-water mark since it started
                after = server_counts(base)
                row["engine"] = {k: after[k] - before[k] for k in after if k != "max_running_since_start"}
                row["engine"] |= {"max_running": max(peak, default=0),
                                  "max_running_since_start": after["max_running_since_start"]}
                # which set the worst gaps: slow engine steps, or collections that stopped the server's threads
                hist_after = server_histograms(base)
                for name, key in (("smollm3_step_seconds", "step_seconds"), ("smollm3_gc_pause_seconds", "gc_pauses")):
                    if name in hist_after:
                        row["engine"][key] = histogram_summary(hist_before.get(name, {}), hist_after[name])
            if long_res is not None:
                row["long_prompt_ttft_ms"] = round(long_res["ttft"] * 1e3, 1) if long_res["ok"] else None
            if args.save_outputs:
                row["outputs"] = [r.get("text") for r in results]
            res["runs"].append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items() if k != "outputs"), flush=True)
    finally:
        if stop is not None:
            stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
