"""The serving path's host cost alone: the real OpenAI server and engine in a process of their own, with the model's
device work (decode steps, prompt chunks) replaced by a no-op that hands out fixed tokens, under bench_serve's
streaming load from client processes. It measures the ceiling that the host side (scheduling, detokenising, the
event loop, a server-sent event per token) puts on serving throughput whatever the GPU, and nothing of the model:
compare it with a real run's figures to see which side bounds that run.

    python benchmarks/serve_host.py --model DIR --num-prompts 256 --input-len 512 --output-len 256 \
        --client-processes 2 --out benchmarks/results/DATE-serve-host.json

DIR is any model directory with a tokenizer (a small one loads fastest); it runs on the CPU. The replies are the
token ids 7 * previous + 3 modulo the vocabulary, greedy (the pipelined decode path, as on a GPU).
"""

from __future__ import annotations

import argparse
import json
import random
import runpy
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def serve_without_device(model: str, port: int):
    """The child: `smollm3 serve`'s app and engine, the runner's device work a no-op."""
    import torch
    import uvicorn

    from smollm3.infer.server import build_state, create_app

    torch.set_num_threads(1)
    state = build_state(model, device="cpu")
    engine = state.engine.engine
    runner, vocab = engine.runner, engine.config.vocab_size

    def launch(b, kv_len):  # what the fused step leaves behind: argmax, the next inputs
        runner.greedy_buf[:b] = (runner.tokens_buf[:b] * 7 + 3) % vocab
        runner.tokens_buf[:b] = runner.greedy_buf[:b]
        runner.lengths_buf[:b] += 1

    def prefill(chunks):  # logits for the chunks that end their prompt
        return torch.zeros(sum(r.num_computed + n == r.num_tokens for r, n in chunks), vocab)

    runner.launch, runner.prefill = launch, prefill
    engine.async_decode = True
    uvicorn.run(create_app(state), host="127.0.0.1", port=port, log_level="warning")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--client-processes", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    bench = runpy.run_path(str(HERE / "bench_serve.py"))
    import httpx

    port = bench["free_port"]()
    code = "import runpy, sys; runpy.run_path(sys.argv[1])['serve_without_device'](sys.argv[2], int(sys.argv[3]))"
    server = subprocess.Popen([sys.executable, "-c", code, __file__, args.model, str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        bench["wait_until_healthy"](server, base, 300, server.terminate)
        model = httpx.get(base + "/v1/models").json()["data"][0]["id"]
        vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
        load = argparse.Namespace(dataset="random", input_len=args.input_len, output_len=args.output_len,
                                  num_prompts=args.num_prompts)
        reqs = bench["requests_for"](load, random.Random(0), vocab)
        before = bench["server_counts"](base)
        results, _, (t0, t1) = bench["run_load_split"](args.client_processes, base, model, reqs, None, None, None, 0)
        after = bench["server_counts"](base)
    finally:
        server.terminate()
        server.wait(timeout=30)
    row = bench["summarise"](results, t1 - t0)
    steps = {k: after[k] - before[k] for k in ("decode_steps", "prefill_steps")}
    row |= steps | {"host_ms_per_step": round((t1 - t0) * 1e3 / max(1, sum(steps.values())), 2)}
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args), "run": row}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(" ".join(f"{k}={v}" for k, v in row.items()))
    return res


if __name__ == "__main__":
    main()
