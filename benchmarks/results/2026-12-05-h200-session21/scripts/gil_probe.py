"""A CPU proxy for target 9's server tail: `smollm3 serve`'s app and engine with the device work replaced by a
sleep (the GIL released, as while a CUDA step runs and the host waits on it): GPU_MS per decode step. 64 streaming
clients; the client's gaps (ITL) against the server's own step histogram, at the default GIL switch interval and at
SWITCH seconds. Usage: PYTHONPATH=src:benchmarks python3 .carry/gil_probe.py MODEL_DIR [gpu_ms] [switch ...]"""
import json, os, random, runpy, subprocess, sys, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = Path("benchmarks/bench_serve.py").resolve()
CLIENTS = int(os.environ.get("CLIENTS", 2))


def child(model, port, gpu_ms, switch):
    import torch, uvicorn
    from smollm3.infer.server import build_state, create_app
    if switch > 0:
        sys.setswitchinterval(switch)
    torch.set_num_threads(1)
    state = build_state(model, device="cpu", max_model_len=2048)
    engine = state.engine.engine
    runner, vocab = engine.runner, engine.config.vocab_size

    def launch(b, kv_len):
        time.sleep(gpu_ms / 1e3)
        runner.greedy_buf[:b] = (runner.tokens_buf[:b] * 7 + 3) % vocab
        runner.tokens_buf[:b] = runner.greedy_buf[:b]
        runner.lengths_buf[:b] += 1

    def prefill(chunks, decode=()):
        time.sleep(gpu_ms / 1e3)
        return torch.zeros(sum(r.num_computed + n == r.num_tokens for r, n in chunks) + len(decode), vocab)

    runner.launch, runner.prefill = launch, prefill
    engine.async_decode = True
    if os.environ.get("PROFILE"):  # the event loop's thread (this one), written at SIGTERM
        import cProfile, signal
        prof = cProfile.Profile()

        def dump(*_):
            prof.disable(); prof.dump_stats(os.environ["PROFILE"]); os._exit(0)
        signal.signal(signal.SIGTERM, dump)
        prof.enable()
    uvicorn.run(create_app(state), host="127.0.0.1", port=port, log_level="warning")


def main():
    model = sys.argv[1]
    gpu_ms = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
    switches = [float(s) for s in sys.argv[3:]] or [0.0, 0.0005]
    bench = runpy.run_path(str(BENCH))
    import httpx
    vocab = json.loads((Path(model) / "config.json").read_text())["vocab_size"]
    for switch in switches:
        port = bench["free_port"]()
        code = ("import runpy, sys; runpy.run_path(sys.argv[1])['child'](sys.argv[2], int(sys.argv[3]), "
                "float(sys.argv[4]), float(sys.argv[5]))")
        server = subprocess.Popen([sys.executable, "-c", code, __file__, model, str(port), str(gpu_ms), str(switch)])
        base = f"http://127.0.0.1:{port}"
        try:
            bench["wait_until_healthy"](server, base, 300, server.terminate)
            name = httpx.get(base + "/v1/models").json()["data"][0]["id"]
            load = type("L", (), dict(dataset="random", input_len=32, output_len=300, num_prompts=64))()
            reqs = bench["requests_for"](load, random.Random(0), vocab)
            hist = bench.get("server_histograms", lambda base: {})
            h0 = hist(base)
            results, _, (t0, t1) = bench["run_load_split"](CLIENTS, base, name, reqs, None, None, None, 0)
            h1 = hist(base)
        finally:
            server.terminate(); server.wait(timeout=30)
        row = bench["summarise"](results, t1 - t0)
        steps = bench["histogram_summary"](h0["smollm3_step_seconds"], h1["smollm3_step_seconds"]) if h1 else None
        itl = [x for r in results if r["ok"] for x in r["itl"]]
        near0 = sum(x < 1e-3 for x in itl) / len(itl)
        merged = sum(r["tokens"] - len(r["itl"]) - 1 for r in results if r["ok"])  # tokens that shared a chunk
        print(f"tokens {sum(r['tokens'] for r in results if r['ok'])}, chunks "
              f"{sum(len(r['itl']) + 1 for r in results if r['ok'])}, tokens sent in another's chunk {merged}")
        long = sum(x > 1.6 * gpu_ms / 1e3 for x in itl) / len(itl)
        print(f"chunk gaps p50 {row['chunk_gap_p50_ms']} p99 {row['chunk_gap_p99_ms']} ms; per token {row['itl_per_token']}")
        print(f"gpu {gpu_ms} ms, switch {switch or 'default'}, {CLIENTS} client processes: ITL p50 {row['itl_p50_ms']} "
              f"p99 {row['itl_p99_ms']} ms, gaps < 1 ms {near0:.1%}, > 1.6 x gpu {long:.1%}; steps {steps}; "
              f"completed {row['completed']}", flush=True)


if __name__ == "__main__":
    main()
