"""The miniature recipe's data: held-out text never trained on, retrieval documents exactly one window long,
answers the evaluation's format can read back."""

import random

import numpy as np
import pytest

import smollm3
from smollm3.data.mixture import TokenSource
from smollm3.data.synthetic import check
from smollm3.data.synthetic_long import make_retrieval, retrieval_prompt
from smollm3.recipe.build import _distractor_queries, _pieces, _split, build_retrieval, math_document
from smollm3.data.synthetic_long import retrieval_document


def test_pieces_and_split_keep_heldout_apart():
    texts = ["\n\n".join(f"para {d}.{p} " + "x" * 50 for p in range(10)) for d in range(20)]
    pieces = _pieces(texts, 120)
    assert "\n\n".join(pieces).count("para") == 200 and all(len(p) < 240 for p in pieces)
    train, held = _split(pieces, 10 ** 9, 1000, random.Random(0))
    assert not set(train) & set(held) and len(train) + len(held) == len(pieces)
    assert 1000 <= sum(map(len, held)) < 1000 + 240


def test_distractor_queries_ask_every_other_key():
    ex = make_retrieval(random.Random(3), "niah_multikey", length=400)
    lines = _distractor_queries(ex)
    needles = ex["messages"][0]["content"].count("One of the special magic numbers for ")
    assert len(lines) == needles - 1 and not any(ex["answer"][0] in line for line in lines)
    for line in lines:  # each distractor's value, after its own key, as its needle states it
        key, value = line.removeprefix("The special magic number for ").split(" is: ")
        assert f"numbers for {key} is: {value}." in ex["messages"][0]["content"]
    doc = retrieval_document(ex)
    assert check(ex, doc[len(retrieval_prompt(ex)):])


def test_math_document_is_the_worked_solution():
    ex = {"messages": [{"role": "user", "content": "What is 2 + 3?"},
                       {"role": "assistant", "content": "<think>\n2 + 3 = 5\n</think>\nThe answer is 5."}]}
    assert math_document(ex) == "Question: What is 2 + 3?\nSolution: 2 + 3 = 5\nThe answer is 5."


@pytest.mark.parametrize("length", [256, 512])
def test_retrieval_documents_fill_one_window_each(tmp_path, trained_tokenizer_dir, length):
    data = tmp_path / "data"
    build_retrieval(data, trained_tokenizer_dir, {"retrieval": {"lengths": [length], "documents": [5]}})
    source = TokenSource(data / "shards" / f"retrieval-{length}", seq_len=length)
    assert source.n_windows == 5 and source.n_tokens == 5 * (length + 1)  # each document + its eos
    tok = smollm3.load_tokenizer(trained_tokenizer_dir)
    for w in range(5):
        ids, positions, labels = source.window(w)
        assert np.array_equal(positions, np.arange(length))  # one document, start to end
        text = tok.decode(ids.tolist())
        assert "\nAnswer: The special magic number for " in text and text.count("special magic numbers for ") >= 3
        prompt_end = text.index("\nAnswer: ")
        assert text[prompt_end:].count(" is: ") >= (2 if length >= 512 else 1)  # distractor queries where they fit


def test_retrieval_too_short_for_its_needles_says_so(tmp_path, trained_tokenizer_dir):
    with pytest.raises(ValueError, match="64 tokens cannot hold the needles"):
        build_retrieval(tmp_path, trained_tokenizer_dir, {"retrieval": {"lengths": [64], "documents": [1]}})


def test_chat_data_holds_no_heldout_math_question_and_pairs_teach_tool_calls(tmp_path):
    """Held-out math questions appear in no chat training file (mid-training, SFT, preference pairs; build_text filters
    the pretraining math documents the same way); held-out pairs ask them; the tool pairs' chosen call parses and
    names the right function, the rejected one does neither."""
    import json

    from smollm3.data.synthetic_tools import parse_call
    from smollm3.recipe.build import build_chat, math_heldout

    spec = {"math": {"ops": 2}, "chat": {"mid_examples": 200, "sft_math": 300, "sft_math_no_think": 60,
                                         "sft_tools": 20, "sft_memory": 10, "tools_offered": 2,
                                         "preference_pairs": 200, "preference_tools": 60, "math_heldout": 20}}
    build_chat(tmp_path, spec)
    rows = {p.stem: [json.loads(line) for line in open(p)] for p in (tmp_path / "chat").glob("*.jsonl")}
    held = {ex["messages"][-2]["content"] for ex in rows["math_heldout"]}
    assert len(held) == 20 and held == {ex["messages"][0]["content"] for ex in math_heldout(spec)}
    asked = {m["content"] for name in ("mid", "sft") for ex in rows[name] for m in ex["messages"]
             if m["role"] == "user"}
    asked |= {m["content"] for ex in rows["preference"] for m in ex["prompt"] if m["role"] == "user"}
    assert not held & asked
    assert all(q.count(" + ") + q.count(" - ") == 2 for q in held)  # ops: 2
    modes = [ex["chat_template_kwargs"]["enable_thinking"] for ex in rows["sft"]
             if ex.get("task") == "small_arithmetic"]
    assert 280 <= modes.count(True) <= 300 and 55 <= modes.count(False) <= 60  # minus the held-out questions
    heldout_pairs = rows["preference_heldout"]
    assert {ex["prompt"][-1]["content"] for ex in heldout_pairs if ex["task"] == "preference"} <= held
    tool_pairs = [ex for ex in rows["preference"] + heldout_pairs if ex["task"] == "preference_tool"]
    assert len(tool_pairs) == 60 + 40
    for ex in tool_pairs:
        style = "xml" if "xml_tools" in ex["chat_template_kwargs"] else "python"
        want = ex["call"]["name"]
        assert parse_call(ex["chosen"][0]["content"], style) == (want, ex["call"]["arguments"])
        bad = parse_call(ex["rejected"][0]["content"], style)
        assert bad is None or bad[0] != want
