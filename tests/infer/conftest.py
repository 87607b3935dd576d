"""Fixtures for the inference tests: a tiny random SmolLM3 with a real (small, trained) tokenizer, and the real
SmolLM2-135M-Instruct loaded once (tests/conftest.py converts it)."""

from pathlib import Path

import pytest
import torch

from random_weights import WIDE, save_tiny


@pytest.fixture(scope="session")
def tiny_dir(trained_tokenizer_dir, tmp_path_factory) -> Path:
    """A 4-layer SmolLM3 (NoPE every 4th layer) with random weights, saved with a trained 768-token tokenizer."""
    return save_tiny(trained_tokenizer_dir, tmp_path_factory.mktemp("tiny") / "tiny-smollm3")


@pytest.fixture(scope="session")
def tiny_wide_dir(trained_tokenizer_dir, tmp_path_factory) -> Path:
    """tiny_dir's model with 8 heads of 64 (hidden 256), wide enough for the fused decode kernels (head_dim >= 32)."""
    return save_tiny(trained_tokenizer_dir, tmp_path_factory.mktemp("tiny-wide") / "tiny-wide-smollm3", **WIDE)


@pytest.fixture(scope="session")
def smollm2_llm(smollm2_dir):
    """The real SmolLM2-135M-Instruct in an LLM (fp32, CPU), shared by the real-weights tests."""
    from smollm3.infer import LLM

    return LLM(smollm2_dir, device="cpu", dtype=torch.float32, max_model_len=1024, max_num_seqs=16)
