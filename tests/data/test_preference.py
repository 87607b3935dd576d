"""Preference data: TRL's formats in, padding-free DPO/APO rows out with completion-only labels and segments."""

import itertools
import json
from datetime import date

import pytest
import torch

from smollm3.chat import render_chat
from smollm3.data.packing import IGNORE_INDEX
from smollm3.data.preference import PreferenceLoader, collate_pairs, load_preferences, tokenize_pair
from smollm3.data.sft import DataFormatError
from smollm3.data.synthetic import generate
from smollm3.tokenizer import load_tokenizer

DAY = date(2025, 7, 10)


@pytest.fixture(scope="module")
def tok(trained_tokenizer_dir):
    return load_tokenizer(trained_tokenizer_dir)


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_rows_hold_prompt_plus_each_completion_with_completion_only_labels(tok, tmp_path):
    pairs = generate("preference", 6, seed=0) + generate("preference", 4, seed=1, think=True)
    path = _write(tmp_path / "p.jsonl", pairs)
    loader = PreferenceLoader([path], tok, batch_size=4, seed=0, date=DAY, max_prompt_length=None)
    batch = next(loader)
    assert batch["num_pairs"] == 4
    ids, pos, labels, seg = (batch[k][0] for k in ("input_ids", "position_ids", "labels", "segments"))
    assert ids.shape == pos.shape == labels.shape == seg.shape
    assert ((seg >= 0) == (labels != IGNORE_INDEX)).all()
    starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
    assert len(starts) - 1 == 8  # chosen and rejected of 4 pairs, each its own sequence
    order = loader.stream._order[1][:4]
    for k, (a, b) in enumerate(itertools.pairwise(starts)):
        pair = pairs[int(order[k // 2])]
        side = pair["chosen" if k % 2 == 0 else "rejected"]
        kwargs = pair["chat_template_kwargs"]
        prompt_text = render_chat(pair["prompt"], add_generation_prompt=True, date=DAY, **kwargs)
        full_text = render_chat(pair["prompt"] + side, date=DAY, **kwargs)
        assert tok.decode(ids[a:b].tolist()) == full_text
        trained = labels[a:b][labels[a:b] != IGNORE_INDEX].tolist()
        assert tok.decode(trained) == full_text[len(prompt_text):]  # exactly the completion
        assert set(seg[a:b][seg[a:b] >= 0].tolist()) == {k}  # 2*pair (chosen), 2*pair+1 (rejected)


def test_formats_explicit_string_and_implicit_prompt_agree(tok, tmp_path):
    q, good, bad = "What is 2 + 2?", "The answer is 4.", "The answer is 5."
    records = [
        {"prompt": q, "chosen": good, "rejected": bad},
        {"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": good}],
         "rejected": [{"role": "assistant", "content": bad}]},
        {"chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": good}],
         "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": bad}]},
    ]
    examples = load_preferences([_write(tmp_path / "f.jsonl", records)])
    tokenized = [tokenize_pair(tok, ex, date=DAY) for ex in examples]
    assert tokenized[0] == tokenized[1] == tokenized[2]
    assert tok.decode(tokenized[0].chosen) == "The answer is 4.<|im_end|>\n"


def test_truncation_follows_trl_defaults(tok):
    pair = tokenize_pair(tok, {"prompt": [{"role": "user", "content": "word " * 400}],
                               "chosen": [{"role": "assistant", "content": "yes"}],
                               "rejected": [{"role": "assistant", "content": "no"}]}, date=DAY,
                         max_prompt_length=64)
    assert len(pair.prompt) == 64  # the prompt keeps its last tokens
    row = collate_pairs([pair], max_length=40)
    starts = (row["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert starts == [0, min(40, len(pair.chosen) + 64)]
    # keep_end: the completion survives, the prompt's start is cut
    labels = row["labels"][0][:40]
    assert tok.decode(labels[labels != IGNORE_INDEX].tolist()) == tok.decode(pair.chosen)


def test_resume_and_bad_lines(tok, tmp_path):
    path = _write(tmp_path / "p.jsonl", generate("preference", 9, seed=2))
    a = PreferenceLoader([path], tok, batch_size=2, seed=1, date=DAY)
    next(a)
    state = a.state_dict()
    want = [next(a) for _ in range(6)]
    b = PreferenceLoader([path], tok, batch_size=2, seed=1, date=DAY)
    b.load_state_dict(state)
    for w in want:
        g = next(b)
        assert all(torch.equal(w[k], g[k]) if torch.is_tensor(w[k]) else w[k] == g[k] for k in w)
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"}])
    with pytest.raises(DataFormatError, match=rf"{bad}:2: no 'rejected' field"):
        load_preferences([bad])
    bad = _write(tmp_path / "bad2.jsonl", [{"prompt": "q", "chosen": [{"role": "user", "content": "a"}],
                                            "rejected": "b"}])
    with pytest.raises(DataFormatError, match=rf"{bad}:1: 'chosen' must start with an assistant message"):
        load_preferences([bad])


def test_trl_tools_column_is_rendered(tok, tmp_path):
    """TRL's `tools` column reaches the template of the prompt and of both completions."""
    tool = {"name": "get_weather", "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    record = {"prompt": [{"role": "user", "content": "Weather in Paris?"}],
              "chosen": [{"role": "assistant", "content": '<tool_call>{"name": "get_weather"}</tool_call>'}],
              "rejected": [{"role": "assistant", "content": "I cannot know."}]}
    p = _write(tmp_path / "tools.jsonl", [{**record, "tools": [tool]}, record])
    with_tools, without = [tokenize_pair(tok, ex, date=DAY, max_prompt_length=None) for ex in load_preferences([p])]
    assert tok.decode(with_tools.prompt) == render_chat(record["prompt"], tools=[tool], date=DAY,
                                                        add_generation_prompt=True)
    assert with_tools.prompt != without.prompt and with_tools.chosen == without.chosen
