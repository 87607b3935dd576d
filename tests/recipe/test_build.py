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
