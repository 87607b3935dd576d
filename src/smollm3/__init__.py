"""smollm3: the SmolLM3 system end to end, with Hugging Face-compatible checkpoints in and out."""

from smollm3.chat import render_chat, tokenize_chat
from smollm3.checkpoint import build_model, load_pretrained, save_pretrained
from smollm3.config import ModelConfig, preset
from smollm3.model import SmolLM3ForCausalLM
from smollm3.parsing import ParsedOutput, StreamParser, parse_output
from smollm3.tokenizer import load_tokenizer

__all__ = ["ModelConfig", "ParsedOutput", "SmolLM3ForCausalLM", "StreamParser", "build_model", "load_pretrained",
           "load_tokenizer", "parse_output", "preset", "render_chat", "save_pretrained", "tokenize_chat"]
__version__ = "0.1.0"
