"""Tokenizers: a thin wrapper over HF `tokenizers` that reads and writes HF tokenizer directories.

A directory we save (tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja) loads
in `transformers.AutoTokenizer`, and any HF tokenizer directory with a tokenizer.json loads here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer


class Tokenizer:
    def __init__(self, tok: HFTokenizer, *, bos_token: str | None = None, eos_token: str | None = None,
                 pad_token: str | None = None, unk_token: str | None = None, chat_template: str | None = None,
                 add_bos_token: bool = False, model_max_length: int | None = None):
        self.tok = tok
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        self.chat_template = chat_template
        self.add_bos_token = add_bos_token
        self.model_max_length = model_max_length

    # ---- ids
    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.tok.id_to_token(i)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.eos_token) if self.eos_token else None

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.pad_token) if self.pad_token else None

    # ---- text
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- files
    def save(self, out_dir: str | os.PathLike):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(out / "tokenizer.json"))
        specials = {k: v for k, v in (("bos_token", self.bos_token), ("eos_token", self.eos_token),
                                      ("pad_token", self.pad_token), ("unk_token", self.unk_token)) if v}
        added = {
            str(t_id): {"content": t.content, "special": t.special, "lstrip": t.lstrip, "rstrip": t.rstrip,
                        "normalized": t.normalized, "single_word": t.single_word}
            for t_id, t in sorted(self.tok.get_added_tokens_decoder().items())
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            "add_bos_token": self.add_bos_token,
            "model_max_length": self.model_max_length or 131072,
            "added_tokens_decoder": added,
            **specials,
        }
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
        (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False))
        if self.chat_template:
            (out / "chat_template.jinja").write_text(self.chat_template)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Any HF tokenizer directory with a tokenizer.json (ours, SmolLM3's, SmolLM2's), or a .gguf file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such tokenizer directory or .gguf file")
    if path.is_file() and path.suffix == ".gguf":
        from smollm3.gguf_io import _open

        return tokenizer_from_gguf(_open(path))
    tj = path / "tokenizer.json"
    if not tj.exists():
        raise FileNotFoundError(f"{path}: no tokenizer.json (only fast, tokenizers-format tokenizers are supported)")
    tok = HFTokenizer.from_file(str(tj))
    cfg = _read_json(path / "tokenizer_config.json")
    special_map = _read_json(path / "special_tokens_map.json")

    def token(key):
        v = cfg.get(key, special_map.get(key))
        return v.get("content") if isinstance(v, dict) else v

    template = None
    if (path / "chat_template.jinja").exists():
        template = (path / "chat_template.jinja").read_text()
    elif isinstance(cfg.get("chat_template"), str):
        template = cfg["chat_template"]
    return Tokenizer(tok, bos_token=token("bos_token"), eos_token=token("eos_token"), pad_token=token("pad_token"),
                     unk_token=token("unk_token"), chat_template=template, add_bos_token=bool(cfg.get("add_bos_token")),
                     model_max_length=cfg.get("model_max_length"))


def _read_json(p: Path) -> dict:
    return json.loads(p.read_text()) if p.exists() else {}


def tokenizer_from_gguf(reader) -> Tokenizer:
    """Rebuild a byte-level BPE tokenizer from GGUF metadata (the `gpt2` tokenizer model).

    For the `smollm` pre-tokenizer (SmolLM2) digits are split one by one before the byte-level split, as llama.cpp
    and the original HF tokenizer do; transformers' own GGUF conversion omits that step (offline-assets.md §1.4)."""
    from smollm3.gguf_io import GGUFError, _field

    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFError(f"GGUF tokenizer model {model!r} is not supported; only byte-level BPE ('gpt2') is")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    pre = _field(reader, "tokenizer.ggml.pre")
    tok = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False,
                                 byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("llama-bpe", "smaug-bpe", "llama3"):
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    # GGUF token types: 3 = control (special), 4 = user-defined (added, not special)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4])

    def name(key):
        i = _field(reader, key)
        return tokens[int(i)] if i is not None and int(i) < len(tokens) else None

    from smollm3.gguf_io import gguf_chat_template

    return Tokenizer(tok, bos_token=name("tokenizer.ggml.bos_token_id"), eos_token=name("tokenizer.ggml.eos_token_id"),
                     pad_token=name("tokenizer.ggml.padding_token_id"), unk_token=name("tokenizer.ggml.unknown_token_id"),
                     chat_template=gguf_chat_template(reader),
                     add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)))


# Llama-3's pre-tokenizer split (also SmolLM3's): contractions, letters, 1-3 digit groups, punctuation, whitespace.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
