"""Fixtures for the evaluation tests: a tiny random SmolLM3 with a real (small, trained) tokenizer, and bits-per-byte
computed by hand to check the runner against."""

import math
from pathlib import Path

import pytest
import torch
from random_weights import save_tiny

POSITIONS = 256  # short, so a RULER length past it (and YaRN) costs little on a CPU


@pytest.fixture(scope="session")
def tiny_eval_dir(trained_tokenizer_dir, tmp_path_factory) -> Path:
    """A 4-layer SmolLM3 (NoPE every 4th layer, 256 positions) with random weights and the trained 768-token
    tokenizer. Weights well above init scale, so greedy decoding has clear winners."""
    return save_tiny(trained_tokenizer_dir, tmp_path_factory.mktemp("tiny-eval") / "tiny-smollm3",
                     max_position_embeddings=POSITIONS)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP's spinning threads make
    each small matmul 10-50x slower; the tests on the tiny model run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _bits_per_byte(model, tok, texts):
    """By hand: the NLL (nats) of every token after the first given all before it, over ln 2 and the UTF-8 bytes."""
    nll = 0.0
    for text in texts:
        ids = torch.tensor([tok.encode(text, add_special_tokens=True)])
        with torch.no_grad():
            logp = model(ids)[0, :-1].double().log_softmax(-1)
        nll -= float(logp.gather(-1, ids[0, 1:, None]).sum())
    return nll / math.log(2) / sum(len(t.encode("utf-8")) for t in texts)


@pytest.fixture
def bits_per_byte():
    """`bits_per_byte(model, tokenizer, texts)`, the reference the ppl tasks are checked against."""
    return _bits_per_byte
