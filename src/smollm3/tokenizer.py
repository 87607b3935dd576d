"""Tokenizers: a thin wrapper over HF `tokenizers` that trains, reads and writes HF tokenizer directories.

A directory we save (tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja) loads
in `transformers.AutoTokenizer`, and any HF tokenizer directory with a tokenizer.json loads here.
`train_tokenizer` trains a byte-level BPE with digits split one by one and SmolLM3's special tokens laid out as in
SmolLM3 (Llama-3's 128,000 + offset layout, after the BPE vocabulary).
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from smollm3 import chat


class TokenizerError(ValueError):
    pass


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
        from smollm3.gguf_io import open_gguf  # gguf_io imports torch; a tokenizer directory needs neither

        return tokenizer_from_gguf(open_gguf(path))
    tj = path / "tokenizer.json"
    if not tj.exists():
        raise FileNotFoundError(f"{path}: no tokenizer.json (only fast, tokenizers-format tokenizers are supported)")
    try:
        tok = HFTokenizer.from_file(str(tj))
    except Exception as e:  # the tokenizers library raises a bare Exception for every parse error
        raise TokenizerError(f"{tj}: not a valid tokenizer.json ({e}); replace it with the model's own "
                             "(e.g. from its Hugging Face repository)") from None
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
    if not p.exists():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{p}: not valid JSON ({e}); fix or replace it") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{p}: expected a JSON object, got {type(data).__name__}")
    return data


def tokenizer_from_gguf(reader) -> Tokenizer:
    """Rebuild a byte-level BPE tokenizer from GGUF metadata (the `gpt2` tokenizer model).

    For the `smollm` pre-tokenizer (SmolLM2) digits are split one by one before the byte-level split, as llama.cpp
    and the original HF tokenizer do; transformers' own GGUF conversion omits that step (offline-assets.md §1.4)."""
    from smollm3.gguf_io import GGUFError, gguf_chat_template, gguf_field  # torch, as in load_tokenizer

    model = gguf_field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFError(f"GGUF tokenizer model {model!r} is not supported; only byte-level BPE ('gpt2') is")
    tokens = list(gguf_field(reader, "tokenizer.ggml.tokens"))
    types = list(gguf_field(reader, "tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in gguf_field(reader, "tokenizer.ggml.merges")]
    pre = gguf_field(reader, "tokenizer.ggml.pre")
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
        i = gguf_field(reader, key)
        return tokens[int(i)] if i is not None and int(i) < len(tokens) else None

    return Tokenizer(tok, bos_token=name("tokenizer.ggml.bos_token_id"), eos_token=name("tokenizer.ggml.eos_token_id"),
                     pad_token=name("tokenizer.ggml.padding_token_id"), unk_token=name("tokenizer.ggml.unknown_token_id"),
                     chat_template=gguf_chat_template(reader),
                     add_bos_token=bool(gguf_field(reader, "tokenizer.ggml.add_bos_token", False)))


# Llama-3's pre-tokenizer split (also SmolLM3's): contractions, letters, 1-3 digit groups, punctuation, whitespace.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Ours: the same split with every digit on its own (as SmolLM2 does), so numbers tokenize uniformly.
DIGIT_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

# ----------------------------------------------------------------------------------------------------------------
# special tokens and training

# SmolLM3's special tokens by offset from the first special id (128,000 in SmolLM3: 128000 + offset). Offsets 0-4,
# 11 and 12 are SmolLM3's published ids; the tool and code markup at 13-16 is our choice (SmolLM3's own file was
# not available to check). Every other slot is `<|reserved_special_token_k|>`, as in Llama-3.
SPECIAL_TOKENS = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 2: "<think>", 3: "</think>",
                  4: "<|finetune_right_pad_id|>", 11: "<|im_start|>", 12: "<|im_end|>",
                  13: "<tool_call>", 14: "</tool_call>", 15: "<code>", 16: "</code>"}
# Markup the model writes inside its answers: single ids, but not "special", so decode(skip_special_tokens=True)
# keeps them and output parsing still sees reasoning and tool calls (as Qwen3's tokenizer does).
MARKUP_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<code>", "</code>")
BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"


def special_tokens(slots: int = 256) -> list[str]:
    """The special-token layout: `slots` tokens, SmolLM3's at their offsets, reserved ones in between."""
    if slots <= max(SPECIAL_TOKENS):
        raise TokenizerError(f"special_slots={slots} cannot hold SmolLM3's special tokens; use at least "
                             f"{max(SPECIAL_TOKENS) + 1}")
    tokens, reserved = [], 0
    for i in range(slots):
        if i in SPECIAL_TOKENS:
            tokens.append(SPECIAL_TOKENS[i])
        else:
            tokens.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return tokens


def add_special_tokens(tok: HFTokenizer, slots: int = 256) -> None:
    """Append the layout after the current vocabulary, one id each, in order."""
    for t in special_tokens(slots):
        if t in MARKUP_TOKENS:
            tok.add_tokens([AddedToken(t, special=False, normalized=False)])
        else:
            tok.add_special_tokens([AddedToken(t, special=True, normalized=False)])


def train_tokenizer(corpus, vocab_size: int, out_dir: str | os.PathLike | None = None, *, special_slots: int = 256,
                    min_frequency: int = 2, show_progress: bool = True) -> Tokenizer:
    """Train a byte-level BPE tokenizer on text files and return it (saved to `out_dir` when given).

    corpus: files or directories; .jsonl/.json/.ndjson (optionally .gz) are read as JSON lines with a "text" field,
      anything else as plain UTF-8 text. vocab_size: total ids, `special_slots` of them special tokens at the end
      (SmolLM3: 128,000 BPE + 256 special). The chat template saved with it is our SmolLM3 template."""
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise TokenizerError(f"vocab size must be an integer, got {vocab_size!r}")
    names = special_tokens(special_slots)
    needed = special_slots + 256  # + the byte-level alphabet, which every byte-level BPE starts from
    if vocab_size < needed:
        raise TokenizerError(f"vocab size {vocab_size} is too small: {special_slots} special-token slots plus the "
                             f"256 byte-level base tokens need {needed}; use --vocab-size {needed} or more "
                             "(or fewer --special-slots)")
    files = corpus_files(corpus)
    tok = HFTokenizer(models.BPE(fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(DIGIT_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - special_slots, min_frequency=min_frequency,
                                  show_progress=show_progress, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator(_read_corpus(files, show_progress), trainer=trainer)
    bpe_size = tok.get_vocab_size()
    add_special_tokens(tok, special_slots)
    if show_progress and bpe_size < vocab_size - special_slots:
        print(f"note: the corpus supports only {bpe_size} BPE tokens, so the vocabulary has "
              f"{bpe_size + special_slots} ids instead of {vocab_size}", file=sys.stderr)
    tokenizer = Tokenizer(tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, chat_template=chat.chat_template("smollm3"),
                          add_bos_token=False)
    assert [tokenizer.token_to_id(t) for t in names] == list(range(bpe_size, bpe_size + special_slots))
    if out_dir is not None:
        tokenizer.save(out_dir)
    return tokenizer


JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
# what a directory contributes: text and JSON-lines files, not a `corpus build` folder's manifest.json, LICENSES/*
# or marker files (a .json file is read only when named: it is as often one JSON document as JSON lines)
DIR_SUFFIXES = (".txt", ".jsonl", ".ndjson")


def corpus_files(paths) -> list[Path]:
    """Files named, and the .txt/.jsonl/.ndjson (optionally .gz) files under directories named (sorted), each
    checked to exist."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and f.name.removesuffix(".gz").endswith(DIR_SUFFIXES))
            if not found:
                raise TokenizerError(f"corpus directory {p} has no {', '.join(DIR_SUFFIXES)} files (.gz ok) in it; "
                                     "name other files one by one")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"corpus path {p} does not exist")
    if not files:
        raise TokenizerError(f"no corpus files found in {', '.join(map(str, paths))}")
    return files


def _read_corpus(files: list[Path], show_progress: bool, chunk_chars: int = 1 << 16):
    """Yield texts: one per JSON record, or ~64k-character runs of whole lines of a text file (so that newline runs
    like "\\n\\n" are seen inside one text). Progress is shown in bytes read."""
    from tqdm.auto import tqdm

    total = sum(f.stat().st_size for f in files if not f.name.endswith(".gz"))
    bar = tqdm(total=total or None, unit="B", unit_scale=True, desc="reading corpus", disable=not show_progress)
    with bar:
        for f in files:
            opener = gzip.open if f.name.endswith(".gz") else open
            is_json = f.name.removesuffix(".gz").endswith(JSON_SUFFIXES)
            with opener(f, "rb") as fh:
                run = []
                size = 0
                for lineno, raw in enumerate(fh, 1):
                    bar.update(len(raw))
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise TokenizerError(f"{f}:{lineno}: not UTF-8 text ({e.reason})") from None
                    if is_json:
                        if line.strip():
                            yield _json_text(f, lineno, line)
                        continue
                    run.append(line)
                    size += len(line)
                    if size >= chunk_chars:
                        yield "".join(run)
                        run, size = [], 0
                if run:
                    yield "".join(run)


def _json_text(f: Path, lineno: int, line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{f}:{lineno}: not a JSON line ({e.msg}); JSON-lines corpora need one object per "
                             "line with a \"text\" field") from None
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise TokenizerError(f"{f}:{lineno}: no string \"text\" field in this record")
    return text


# ----------------------------------------------------------------------------------------------------------------
# SmolLM3's own tokenizer: Llama-3's BPE (128,000 tiktoken ranks) + SmolLM3's special tokens


def tokenizer_from_tiktoken(path: str | os.PathLike, special_slots: int = 256) -> Tokenizer:
    """Build a `tokenizers` BPE from a tiktoken ranks file (one "base64-token rank" per line) with Llama-3's split,
    then SmolLM3's special tokens after it. With Llama-3's file (`smollm3_tokenizer()`) this is SmolLM3's tokenizer:
    128,256 ids, `<|im_start|>` 128011, `<|im_end|>` 128012. tiktoken merges the pair whose result has the lowest
    rank; listing every split of each token ordered by the token's rank gives the same result in a BPE model (the
    conversion HF used for Llama-3's tokenizer.json)."""
    import base64

    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError:
                raise TokenizerError(f"{path}:{lineno}: not a tiktoken ranks line (base64 token, space, rank)") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps")
    byte_char = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(byte_char[x] for x in b)

    merges = []
    for token, rank in ranks.items():
        splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += [(rank, ranks[a], ranks[b], a, b) for a, b in splits]
    merges.sort()
    tok = HFTokenizer(models.BPE(vocab={text(t): r for t, r in ranks.items()},
                                 merges=[(text(a), text(b)) for *_, a, b in merges], fuse_unk=False,
                                 byte_fallback=False, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    add_special_tokens(tok, special_slots)
    # the released instruct model ends turns with <|im_end|> (its config's eos_token_id is 128012)
    return Tokenizer(tok, bos_token=BOS, eos_token="<|im_end|>", pad_token=PAD, chat_template=chat.chat_template("smollm3"),
                     add_bos_token=False, model_max_length=65536)


def smollm3_tokenizer(special_slots: int = 256) -> Tokenizer:
    """SmolLM3's tokenizer from Llama-3's ranks as shipped in the `llama-models` wheel (pip install --no-deps
    llama-models; Llama 3 Community License). The package is located, not imported."""
    import importlib.util

    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("Llama-3's BPE ranks come from the llama-models wheel: pip install --no-deps llama-models")
    return tokenizer_from_tiktoken(Path(spec.submodule_search_locations[0]) / "llama3" / "tokenizer.model",
                                   special_slots)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of every byte-level BPE."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table
