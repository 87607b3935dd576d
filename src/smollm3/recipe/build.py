"""The data a miniature recipe builds for itself (the `build:` section of a recipe YAML), under OUT/data:

    corpus/                     `smollm3 corpus build` output (a few Debian documentation packages + Python stdlib),
                                unless `build.corpus.dir` names text you already have in that layout
    text/<domain>/<name>.jsonl  training text per source: web/en, web/fr, ..., code/python, math/math
    heldout/<lang|domain>/<name>.jsonl   held-out text of each source (never trained on): per-language and
                                per-domain validation loss
    tokenizer/                  BPE trained on the training text
    shards/<source>/            datatrove shards, one folder per mixture source (web-en, web-fr, ..., code, math)
    shards/retrieval-<L>/       RULER-style retrieval documents of exactly L tokens, one per pretraining window
    chat/mid.jsonl              reasoning traces for mid-training (rendered with ChatML)
    chat/sft.jsonl              SFT conversations: math in both modes, tool calls (xml and python), multi-turn,
                                needle-in-a-haystack questions (`sft_retrieval`)
    chat/preference.jsonl, chat/preference_heldout.jsonl   APO pairs (correct vs slipped solution; right vs wrong
                                tool call); the held-out ones ask the held-out math questions
    chat/math_heldout.jsonl     math questions not in any training file, for think vs no_think

Every step writes its output atomically (or resumably: shards) and is skipped when its output exists, so an
interrupted build resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

from smollm3.data import synthetic
from smollm3.data.corpus import build_corpus
from smollm3.data.prepare import prepare
from smollm3.data.shards import ShardWriter, token_size_for
from smollm3.data.synthetic_long import NOISE, make_retrieval, retrieval_document
from smollm3.tokenizer import load_tokenizer, train_tokenizer

LANG_SOURCES = ("en", "fr", "es", "de", "it", "pt")


def _write_jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _read_texts(paths) -> list[str]:
    texts = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    return texts


def _pieces(texts: list[str], size: int) -> list[str]:
    """Documents cut at paragraph borders into pieces of about `size` characters: a manual of 40 kB becomes many
    documents, so held-out text can be drawn from every part of the corpus."""
    out = []
    for text in texts:
        cur = ""
        for para in text.split("\n\n"):
            cur = f"{cur}\n\n{para}" if cur else para
            if len(cur) >= size:
                out.append(cur)
                cur = ""
        if cur.strip():
            out.append(cur)
    return out


def _split(texts: list[str], train_chars: int, heldout_chars: int, rng: random.Random) -> tuple[list, list]:
    """Shuffle, take `heldout_chars` of held-out text first, then up to `train_chars` of training text."""
    texts = list(texts)
    rng.shuffle(texts)
    heldout, train, n = [], [], 0
    for t in texts:
        if n < heldout_chars:
            heldout.append(t)
            n += len(t)
        elif sum(map(len, train)) < train_chars:
            train.append(t)
    return train, heldout


def math_document(example: dict) -> str:
    """A worked math example as plain pretraining text (the miniature's stand-in for FineMath)."""
    answer = example["messages"][-1]["content"].replace("<think>\n", "").replace("\n</think>", "")
    return f"Question: {example['messages'][0]['content']}\nSolution: {answer}"


def math_heldout(spec: dict) -> list[dict]:
    """The held-out math questions (think-mode examples): drawn first, so that no training file (pretraining
    documents, mid-training, SFT, preference pairs) ever holds one of them."""
    n, kw = spec.get("chat", {}).get("math_heldout", 100), _math_options(spec)
    seen, out = set(), []
    for ex in synthetic.generate("small_arithmetic", 50 * n, seed=10, think=True, **kw):
        q = ex["messages"][0]["content"]
        if q not in seen:
            seen.add(q)
            out.append(ex)
        if len(out) == n:
            break
    return out


def _math_options(spec: dict) -> dict:
    """build.math.ops: operations per problem, fixed so that every step of a solution sits where it did in the
    last one (default: 2 or 3)."""
    return {"n_ops": spec.get("math", {}).get("ops")}


def _not_heldout(examples: list[dict], heldout: set[str], key: str = "messages") -> list[dict]:
    return [ex for ex in examples if ex[key][0]["content"] not in heldout]


def build_text(data: Path, spec: dict) -> None:
    """corpus -> text/ and heldout/ per source."""
    if (data / "text" / "done").exists():
        return
    c = spec["corpus"]
    langs = tuple(c.get("langs", LANG_SOURCES))
    if c.get("dir"):  # text you already have, laid out as `smollm3 corpus build` writes it
        corpus = Path(c["dir"])
    else:
        corpus = data / "corpus"
        build_corpus(corpus, langs, code=True, sources=tuple(c["sources"]) if c.get("sources") else None)
    for sub in (*langs, "code"):
        if not sorted((corpus / sub).glob("*.jsonl")):
            raise ValueError(f"build.corpus: {corpus / sub} has no .jsonl files; the corpus needs every language of "
                             "`langs` and code/ (as `smollm3 corpus build` lays them out)")
    rng = random.Random(spec.get("seed", 0))
    piece, heldout = c.get("piece_chars", 2000), c.get("heldout_chars", 20_000)
    for lang in langs:
        texts = _pieces(_read_texts(sorted((corpus / lang).glob("*.jsonl"))), piece)
        train, held = _split(texts, c.get("train_chars_per_lang", 10 ** 9), heldout, rng)
        _write_jsonl(data / "text" / "web" / f"{lang}.jsonl", ({"text": t} for t in train))
        _write_jsonl(data / "heldout" / lang / "web.jsonl", ({"text": t} for t in held))
    code = _read_texts(sorted((corpus / "code").glob("*.jsonl")))
    train, held = _split(_pieces(code, piece), c.get("code_chars", 2_000_000), heldout, rng)
    _write_jsonl(data / "text" / "code" / "python.jsonl", ({"text": t} for t in train))
    _write_jsonl(data / "heldout" / "code" / "python.jsonl", ({"text": t} for t in held))
    m = spec.get("math", {})
    n = m.get("documents", 20_000)
    held = {ex["messages"][0]["content"] for ex in math_heldout(spec)}
    docs = [math_document(ex) for ex in
            _not_heldout(synthetic.generate("small_arithmetic", n, seed=1, think=True, **_math_options(spec)), held)]
    docs += [math_document(ex) for ex in synthetic.generate("word_problem", n // 4, seed=1, think=True)]
    rng.shuffle(docs)
    cut = max(1, len(docs) // 50)
    _write_jsonl(data / "text" / "math" / "math.jsonl", ({"text": t} for t in docs[cut:]))
    _write_jsonl(data / "heldout" / "math" / "math.jsonl", ({"text": t} for t in docs[:cut]))
    (data / "text" / "done").write_text("ok\n")


def build_tokenizer(data: Path, spec: dict) -> Path:
    out = data / "tokenizer"
    if not (out / "tokenizer.json").exists():
        tmp = data / "tokenizer.tmp"
        train_tokenizer([data / "text"], spec["tokenizer"]["vocab_size"], tmp, show_progress=False)
        os.replace(tmp, out)
    return out


def build_shards(data: Path, tokenizer: Path) -> None:
    for path in sorted((data / "text").rglob("*.jsonl")):
        domain = path.parent.name
        name = f"web-{path.stem}" if domain == "web" else domain
        prepare([path], tokenizer, data / "shards" / name, workers=1, progress=False)


def build_retrieval(data: Path, tokenizer_path: Path, spec: dict) -> None:
    """Shards of needle-in-a-haystack documents, each `length` tokens and its end-of-document token, so every
    pretraining window of that length (`length` + 1 tokens: the inputs and the last target) holds one whole
    document: the mixture reads back-to-back windows.
    The haystack is RULER's noise sentences, as in the `ruler:` evaluation tasks."""
    r = spec.get("retrieval")
    if not r:
        return
    tok = load_tokenizer(tokenizer_path)
    filler = tok.encode(NOISE * 40)
    for length, count in zip(r["lengths"], r["documents"]):
        out = data / "shards" / f"retrieval-{length}" / "00000.ds"
        if (out.parent / "00000.ds.metadata").exists():
            continue
        rng = random.Random(f"retrieval:{length}")
        with ShardWriter(out, token_size_for(tok.vocab_size), str(tokenizer_path)) as w:
            for _ in range(count):
                ids = _retrieval_ids(rng, tok, length, r.get("kind", "niah_multikey"))
                # pad at the front with haystack text up to exactly `length` tokens (then the eos)
                w.write(filler[:length - len(ids)] + ids + [tok.eos_token_id])


def _retrieval_ids(rng: random.Random, tok, length: int, kind: str) -> list[int]:
    """Token ids of one document of at most `length` tokens: the question and answer, then (multi-key) as many
    distractor keys' queries as fit, each a further answer to learn from."""
    budget = length - (48 if kind == "niah_multikey" else 24)
    for _ in range(50):
        ex = make_retrieval(rng, kind, length=max(budget, 1), tokenizer=tok)
        ids = tok.encode(retrieval_document(ex))
        if len(ids) > length:  # the needles and question alone are too long: less haystack, or fewer needles
            budget -= len(ids) - length + 8
            continue
        for line in _distractor_queries(ex):
            more = tok.encode("\n" + line)
            if len(ids) + len(more) > length:
                break
            ids += more
        return ids
    raise ValueError(f"build.retrieval: {length} tokens cannot hold the needles and questions with this tokenizer; "
                     "use longer retrieval lengths")


def _distractor_queries(example: dict) -> list[str]:
    """For a multi-key example, "The special magic number for KEY is: VALUE" for every key but the target's, in a
    seeded random order: asking for every key gives four or five answers a document instead of one, which is
    what lets a tiny model learn the lookup in minutes."""
    text = example["messages"][0]["content"]
    pairs = re.findall(r"special magic numbers for (\S+) is: (\d+)\.", text)
    lines = [f"The special magic number for {k} is: {v}" for k, v in pairs if v != example["answer"][0]]
    random.Random(text).shuffle(lines)
    return lines


def _retrieval_chats(data: Path, spec: dict, n: int) -> list[dict]:
    """`n` needle-in-a-haystack conversations (no_think) at the retrieval lengths, each leaving room in its length for
    the template's system turn: chat models that are asked the RULER question as a user turn learn to answer it."""
    if not n:
        return []
    r = spec.get("retrieval", {})
    tok = load_tokenizer(data / "tokenizer")
    rng = random.Random("sft-retrieval")
    room = 96  # tokens for the template's turns and a one-line system message
    return [make_retrieval(rng, r.get("kind", "niah_multikey"), length=rng.choice(r["lengths"]) - room, tokenizer=tok)
            for _ in range(n)]


def with_system(example: dict, system: str | None) -> dict:
    """The example with a system turn first (conversations under `messages`, preference pairs under `prompt`). A
    short system message replaces the SmolLM3 template's default think-mode instructions (~400 tokens in a 2k
    vocabulary), which would otherwise fill a miniature's context."""
    if not system:
        return example
    key = "prompt" if "prompt" in example else "messages"
    return {**example, key: [{"role": "system", "content": system}] + example[key]}


def build_chat(data: Path, spec: dict) -> None:
    """Mid-training traces, SFT conversations, preference pairs and held-out math questions."""
    chat = data / "chat"
    c = spec.get("chat", {})
    if (chat / "done").exists():
        return
    n_mid = c.get("mid_examples", 3000)
    ops = _math_options(spec)
    math_test = math_heldout(spec)
    held = {ex["messages"][0]["content"] for ex in math_test}
    mid = _not_heldout(synthetic.generate("small_arithmetic", n_mid, seed=2, think=True, **ops), held)
    mid += synthetic.generate("word_problem", n_mid // 4, seed=2, think=True)
    mid += synthetic.generate("running_total", n_mid // 4, seed=2, think=True)
    _write_jsonl(chat / "mid.jsonl", mid)

    n = c.get("sft_math", 2000)  # think-mode examples; no_think ones: sft_math_no_think (default the same)
    system = c.get("system")
    sft = _not_heldout(synthetic.generate("small_arithmetic", n, seed=3, think=True, **ops), held)
    sft += _not_heldout(synthetic.generate("small_arithmetic", c.get("sft_math_no_think", n), seed=4, think=False,
                                           **ops), held)
    n_tools = c.get("sft_tools", 800)
    offered = c.get("tools_offered")  # a few tools per prompt: the template's tool section is long in a 2k vocabulary
    modes = c.get("tool_modes", ["no_think", "think"])
    for style in ("tool_xml", "tool_python"):
        for seed, mode in enumerate(modes, 5):
            sft += synthetic.generate(style, n_tools // len(modes), seed=seed, think=mode == "think", offered=offered)
    sft += synthetic.generate("memory_chat", c.get("sft_memory", 300), seed=7)
    sft += _retrieval_chats(data, spec, c.get("sft_retrieval", 0))
    sft = [with_system(ex, system) for ex in sft]
    random.Random(8).shuffle(sft)
    _write_jsonl(chat / "sft.jsonl", sft)

    n_pref, n_tool_pref = c.get("preference_pairs", 1500), c.get("preference_tools", 0)
    # held-out pairs ask the held-out math questions, which no training file holds
    every = synthetic.generate("preference", 4 * n_pref, seed=9, think=True, small=True, **ops)
    pairs = _not_heldout(every, held, key="prompt")[:n_pref]
    asked = {}
    for ex in every:
        asked.setdefault(ex["prompt"][0]["content"], ex)
    heldout = [asked[q] for q in sorted(held) if q in asked]
    if n_tool_pref:  # tool pairs: APO on math alone trades tool calling away
        for style in ("xml", "python"):
            tool_pairs = synthetic.generate("tool_preference", n_tool_pref // 2 + 20, seed=11, style=style,
                                            offered=offered)
            pairs, heldout = pairs + tool_pairs[:-20], heldout + tool_pairs[-20:]
    random.Random(12).shuffle(pairs)
    _write_jsonl(chat / "preference.jsonl", [with_system(ex, system) for ex in pairs])
    _write_jsonl(chat / "preference_heldout.jsonl", [with_system(ex, system) for ex in heldout])

    _write_jsonl(chat / "math_heldout.jsonl", [with_system(ex, system) for ex in math_test])
    (chat / "done").write_text("ok\n")


def build_data(out: Path, spec: dict, log=print) -> Path:
    """Run every build step (each skipped when done); returns OUT/data."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    log("build: corpus and text splits")
    build_text(data, spec)
    log("build: tokenizer")
    tok = build_tokenizer(data, spec)
    log("build: token shards")
    build_shards(data, tok)
    build_retrieval(data, tok, spec)
    log("build: chat, reasoning and preference data")
    build_chat(data, spec)
    return data
