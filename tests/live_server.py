"""A real HTTP server for tests: an app under uvicorn on 127.0.0.1 at an ephemeral port, and the official `openai`
client pointed at it (imported by name: pyproject's pythonpath holds tests/)."""

import socket
import threading
import time

MODEL = "smollm2-135m-instruct"  # the name the real-weights servers serve SmolLM2-135M-Instruct under
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]  # a question with one short right answer


def start(app, **config):
    """uvicorn on 127.0.0.1, an ephemeral port (`config`: more uvicorn.Config settings) -> (base url, stop())."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", **config))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)

    def stop():
        srv.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def client(base):
    import openai

    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
