"""smollm3: the SmolLM3 system end to end, with Hugging Face-compatible checkpoints in and out.

The public names are imported on first use (PEP 562), so `import smollm3.cli` (and `smollm3 --help`) does not pay
for torch.
"""

import importlib

_EXPORTS = {
    "render_chat": "smollm3.chat", "tokenize_chat": "smollm3.chat",
    "build_model": "smollm3.checkpoint", "load_pretrained": "smollm3.checkpoint", "save_pretrained": "smollm3.checkpoint",
    "ModelConfig": "smollm3.config", "preset": "smollm3.config",
    "SmolLM3ForCausalLM": "smollm3.model",
    "ParsedOutput": "smollm3.parsing", "StreamParser": "smollm3.parsing", "parse_output": "smollm3.parsing",
    "load_tokenizer": "smollm3.tokenizer",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module 'smollm3' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
