"""smollm3: the SmolLM3 system end to end, with Hugging Face-compatible checkpoints in and out."""

from smollm3.checkpoint import build_model, load_pretrained, save_pretrained
from smollm3.config import ModelConfig, preset
from smollm3.model import SmolLM3ForCausalLM
from smollm3.tokenizer import load_tokenizer

__all__ = ["ModelConfig", "SmolLM3ForCausalLM", "build_model", "load_pretrained", "load_tokenizer", "preset",
           "save_pretrained"]
__version__ = "0.1.0"
