"""Serving benchmark over HTTP, modelled on `vllm bench serve`: streamed requests against the OpenAI server, latency
and throughput as a user of the server sees them.

    python benchmarks/bench_serve.py --model runs/m --input-len 512 --output-len 256 --num-prompts 256 \\
        --concurrency 1,8,64,256 --out benchmarks/results/DATE-serve.json
    python benchmarks/bench_serve.py --preset smollm3-3b --max-model-len 65536 ...   # random weights, SmolLM3's
        # tokenizer (pip install --no-deps llama-models)
    python benchmarks/bench_serve.py --base-url http://127.0.0.1:8000 ...            # a server already running

Without --base-url the server runs in this process (its engine on a background thread, uvicorn on another), with
the engine settings given here. Datasets:
- `random`: prompts of exactly --input-len random token ids, sent to /v1/completions as ids; --output-len tokens
  each (ignore_eos), greedy.
- `chat-shared-prefix`: chat requests that share SmolLM3's think-mode system prompt and two tool specs and differ
  in the user turn (a chat app's traffic; what prefix caching serves), to /v1/chat/completions.
Load: a fixed --concurrency (a sweep, comma-separated) or a Poisson --request-rate. --long-prompt-len N adds one
N-token request once the streams are running and reports the streams' inter-token latency while it is read.
Per run: requests completed, output tok/s, TTFT, TPOT (per request: (latency - TTFT) / (tokens - 1)) and
inter-token latency (ITL, between streamed chunks), each p50/p99 in ms; JSON under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
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


def build_state(args):
    import torch

    from smollm3.infer.server import build_state as from_dir

    kw = dict(max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
              gpu_memory_utilization=args.gpu_memory_utilization, max_num_batched_tokens=args.max_num_batched_tokens,
              prefix_caching=not args.no_prefix_caching, device=args.device)
    if args.dataset == "chat-shared-prefix":  # the load sends tools: serve a template that renders them (the server
        kw["chat_template"] = "smollm3"  # refuses tools with tool_choice auto where the model would never see them)
    if args.model:
        return from_dir(args.model, **kw)
    import tempfile

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
        body.update(temperature=0, ignore_eos=True, stream=True, stream_options={"include_usage": True})
    return out


async def one_request(client: httpx.AsyncClient, base: str, model: str, endpoint: str, body: dict) -> dict:
    t0 = time.perf_counter()
    chunks, text, usage, error = [], [], None, None
    try:
        async with client.stream("POST", base + endpoint, json={**body, "model": model}) as resp:
            if resp.status_code != 200:
                return {"ok": False, "error": f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"}
            async for line in resp.aiter_lines():
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
                        text.append(piece)
    except httpx.HTTPError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    end = time.perf_counter()
    n = usage["completion_tokens"] if usage else len(chunks)
    if error is None and not chunks:  # e.g. a random-weight model repeating the prompt's last newline, which the
        # chat parser holds back as leading whitespace: no chunk to time the first token by
        error = f"no visible text in {n} streamed tokens (whitespace only?): TTFT and ITL need visible tokens"
    return {"ok": error is None and bool(chunks), "error": error, "start": t0, "ttft": chunks[0] - t0 if chunks else None,
            "latency": end - t0, "tokens": n, "itl": list(np.diff(chunks)), "text": "".join(text),
            "cached": ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")}


async def run_load(base, model, reqs, concurrency, rate, long_req, rng) -> tuple[list[dict], dict | None, float]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600.0), limits=limits) as client:
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
        return results, long_res, time.perf_counter() - t0


def pct(xs, q):
    return round(float(np.percentile(xs, q)) * 1e3, 2) if len(xs) else None


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
           "cached_prompt_tokens": sum(r["cached"] or 0 for r in ok)}
    if window is not None:  # inter-token latency of chunks that arrived while the long prompt was being read
        a, b = window
        during = []
        for r in ok:
            t = r["start"] + r["ttft"]
            for x in r["itl"]:
                t += x
                if a <= t <= b:
                    during.append(x)
        out["itl_during_long_prefill_p50_ms"] = pct(during, 50)
        out["itl_during_long_prefill_p99_ms"] = pct(during, 99)
        out["itl_during_long_prefill_count"] = len(during)
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
    ap.add_argument("--served-model", default=None, help="model name at --base-url (default: its first model)")
    ap.add_argument("--dataset", choices=["random", "chat-shared-prefix"], default="random")
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--concurrency", default=None, help="comma-separated sweep, e.g. 1,8,64,256 (default: all at once)")
    ap.add_argument("--request-rate", type=float, default=None, help="Poisson arrivals per second instead")
    ap.add_argument("--long-prompt-len", type=int, default=None,
                    help="also send one prompt of this many tokens once the streams run; report ITL meanwhile")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-outputs", action="store_true", help="keep every request's text in the JSON")
    eng = ap.add_argument_group("engine (in-process server)")
    eng.add_argument("--max-model-len", type=int, default=None)
    eng.add_argument("--max-num-seqs", type=int, default=256)
    eng.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    eng.add_argument("--max-num-batched-tokens", type=int, default=2048)
    eng.add_argument("--no-prefix-caching", action="store_true")
    eng.add_argument("--device", default=None)
    ap.add_argument("--out", required=True, help="JSON results file")
    args = ap.parse_args(argv)

    stop, engine = None, None
    if args.base_url:
        base = args.base_url.rstrip("/")
        model = args.served_model or httpx.get(base + "/v1/models").json()["data"][0]["id"]
        vocab = 32000
    else:
        base, model, engine, stop = start_server(args)
        vocab = engine.config.vocab_size
    rng = random.Random(args.seed)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "args": {k: v for k, v in vars(args).items()}, "runs": []}
    if engine is not None:
        import torch

        res["device"] = torch.cuda.get_device_name() if engine.device.type == "cuda" else "cpu"
        res["engine"] = {"max_model_len": engine.max_model_len, "kv_cache_tokens": engine.kv_cache_tokens,
                         "block_size": engine.block_size, "max_num_seqs": engine.max_num_seqs,
                         "max_num_batched_tokens": engine.max_num_batched_tokens,
                         "prefix_caching": engine.blocks.prefix_caching}
    try:
        loads = [int(c) for c in args.concurrency.split(",")] if args.concurrency else [None]
        for conc in loads:
            reqs = requests_for(args, rng, vocab)
            long_req = None
            if args.long_prompt_len:
                ids = [rng.randrange(min(1000, vocab // 2), vocab) for _ in range(args.long_prompt_len)]
                long_req = ("/v1/completions", {"prompt": ids, "max_tokens": 1, "temperature": 0, "stream": True,
                                                "stream_options": {"include_usage": True}})
            before = dict(engine.stats) if engine is not None else None
            if engine is not None:
                engine.stats["max_running"] = 0
            results, long_res, wall = asyncio.run(run_load(base, model, reqs, conc, args.request_rate, long_req, rng))
            window = None
            if long_res is not None and long_res["ok"]:
                window = (long_res["start"], long_res["start"] + long_res["ttft"])
            row = {"concurrency": conc or len(reqs), "request_rate": args.request_rate,
                   **summarise(results, wall, window)}
            if engine is not None:  # the engine's own counts over the run
                row["engine"] = {k: engine.stats[k] - before[k] for k in ("prompt_tokens", "cached_prompt_tokens",
                                                                           "preemptions", "decode_steps",
                                                                           "prefill_steps")}
                row["engine"]["max_running"] = engine.stats.get("max_running")
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
