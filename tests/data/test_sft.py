"""SFT data: assistant-only labels checked token by token against the rendered text, BFD-packed batches, exact
resume, bad lines named."""

import itertools
import json
import re
from datetime import date

import pytest
import torch

from smollm3.chat import render_chat
from smollm3.data.packing import IGNORE_INDEX
from smollm3.data.sft import DataFormatError, SFTLoader, load_conversations, tokenize_conversation
from smollm3.data.synthetic import generate
from smollm3.tokenizer import load_tokenizer

DAY = date(2025, 7, 10)


@pytest.fixture(scope="module")
def tok(trained_tokenizer_dir):
    return load_tokenizer(trained_tokenizer_dir)


@pytest.fixture(scope="module")
def conversations(tmp_path_factory):
    examples = (generate("arithmetic", 12, seed=0, think=True) + generate("word_problem", 12, seed=0, think=False)
                + generate("running_total", 6, seed=0) + generate("memory_chat", 6, seed=0, think=True)
                + generate("tool_xml", 4, seed=0) + generate("tool_python", 4, seed=0, think=True))
    examples.append({"messages": [{"role": "system", "content": "Be terse. /no_think"},
                                  {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]})
    path = tmp_path_factory.mktemp("sft") / "train.jsonl"
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
    return path, examples


def _expected_labels(tok, example):
    """Labels derived independently of the loader: render the text, find every assistant turn in it, mark the
    tokens whose characters fall inside one, shift by one."""
    kwargs = dict(example.get("chat_template_kwargs") or {})
    text = render_chat(example["messages"], date=DAY, **kwargs)
    spans = [m.span() for m in re.finditer(r"<\|im_start\|>assistant\n.*?<\|im_end\|>\n", text, re.DOTALL)]
    enc = tok.tok.encode(text, add_special_tokens=False)
    inside = [any(a < e and s < b for a, b in spans) for s, e in enc.offsets]
    ids = enc.ids
    labels = [ids[t + 1] if inside[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)] + [IGNORE_INDEX]
    return ids, labels, [text[a:b] for a, b in spans]


def test_assistant_only_labels_token_by_token(tok, conversations):
    _, examples = conversations
    for ex in examples:
        ids, labels = tokenize_conversation(tok, {"messages": ex["messages"],
                                                  "chat_template_kwargs": ex.get("chat_template_kwargs", {})}, date=DAY)
        want_ids, want_labels, turns = _expected_labels(tok, ex)
        assert ids == want_ids
        assert labels == want_labels
        # and the trained tokens spell out exactly the assistant turns, nothing of the user's or the tools'
        runs, cur = [], []
        for lab in labels:
            if lab != IGNORE_INDEX:
                cur.append(lab)
            elif cur:
                runs.append(tok.decode(cur))
                cur = []
        assert runs == turns
        assert len(turns) == sum(m["role"] == "assistant" for m in ex["messages"])


def test_packed_batches_keep_conversations_whole(tok, conversations):
    path, examples = conversations
    loader = SFTLoader([path], tok, seq_len=4096, batch_size=1, seed=0, date=DAY)
    stats = loader.stats()
    assert stats["conversations"] == len(examples) and stats["truncated"] == 0
    assert 0.5 < stats["packing_efficiency"] <= 1.0
    singles = {tuple(tokenize_conversation(tok, ex, date=DAY)[0]) for ex in load_conversations([path])}
    seen = []
    for _ in range(len(loader.rows)):  # one epoch: every packed row once
        batch = next(loader)
        assert batch["input_ids"].shape[1] <= 4096
        for ids, pos, labels in zip(batch["input_ids"], batch["position_ids"], batch["labels"]):
            starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
            for a, b in itertools.pairwise(starts):
                seq = tuple(ids[a:b].tolist())
                if (labels[a:b] == IGNORE_INDEX).all() and seq not in singles:
                    continue  # row padding
                assert seq in singles
                seen.append(seq)
    assert len(seen) == len(singles) == len(examples)  # an epoch serves every conversation exactly once


def test_resume_replays_the_same_batches_across_epochs(tok, conversations):
    path, _ = conversations
    a = SFTLoader([path], tok, seq_len=1024, batch_size=3, seed=5, date=DAY)
    for _ in range(7):
        next(a)
    state = a.state_dict()
    want = [next(a) for _ in range(12)]  # runs into the next epoch
    b = SFTLoader([path], tok, seq_len=1024, batch_size=3, seed=5)  # a later day: the saved date is restored
    b.load_state_dict(state)
    assert b.date == DAY
    for w in want:
        g = next(b)
        assert all(torch.equal(w[k], g[k]) for k in w)


def test_a_pinned_date_is_kept_and_a_resume_saved_with_another_is_refused(tok, conversations):
    path, _ = conversations
    a = SFTLoader([path], tok, seq_len=1024, batch_size=3, seed=5, date=DAY)
    assert "Today Date: 10 July 2025" in tok.decode(next(a)["input_ids"][0].tolist())
    b = SFTLoader([path], tok, seq_len=1024, batch_size=3, seed=5, date=date(2025, 7, 11))  # data.date changed
    with pytest.raises(ValueError, match="saved with date 2025-07-10 and data.date is 2025-07-11"):
        b.load_state_dict(a.state_dict())


def test_bad_conversations_are_named_by_file_and_line(tok, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [}\n')
    with pytest.raises(DataFormatError, match=rf"{p}:2: not valid JSON"):
        load_conversations([p])
    p.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n\n{"text": "x"}\n')
    with pytest.raises(DataFormatError, match=rf"{p}:3: no 'messages' field"):
        load_conversations([p])
    p.write_text('{"messages": [{"role": "robot", "content": "hi"}]}\n')
    with pytest.raises(DataFormatError, match=rf"{p}:1: .*role 'robot'"):
        SFTLoader([p], tok, 128, 1)


def test_zero_trainable_tokens_is_refused_with_the_cause(tok, tmp_path):
    """Issue 26: every assistant turn cut by truncation trained on nothing at loss 0.0000, silently."""
    p = tmp_path / "long.jsonl"
    long_prompt = " ".join(["a long question about the weather"] * 5)
    p.write_text("".join(json.dumps({"messages": [{"role": "user", "content": long_prompt},
                                                  {"role": "assistant", "content": "Sunny."}]}) + "\n"
                         for _ in range(3)))
    with pytest.raises(DataFormatError, match=rf"{p}: no trainable tokens: every assistant turn starts beyond "
                                              r"data.seq_len 64 .*template 'smollm3' renders an empty user turn, its "
                                              r"default system prompt included, as \d+ tokens"):
        SFTLoader([p], tok, seq_len=64, batch_size=1, date=DAY)
    assert SFTLoader([p], tok, seq_len=4096, batch_size=1, date=DAY).trained_tokens > 0
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataFormatError, match="no conversation has an assistant turn"):
        SFTLoader([p], tok, seq_len=1024, batch_size=1, date=DAY)


TOOL = {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_trl_tools_column_is_rendered(tok, tmp_path):
    """TRL's `tools` column (a list, or that list as a JSON string) reaches the template as `tools=`."""
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
                                                 "</tool_call>"}]
    p = tmp_path / "tools.jsonl"
    p.write_text(json.dumps({"messages": messages, "tools": [TOOL]}) + "\n"
                 + json.dumps({"messages": messages, "tools": json.dumps([TOOL])}) + "\n"
                 + json.dumps({"messages": messages}) + "\n")
    loader = SFTLoader([p], tok, seq_len=4096, batch_size=1, date=DAY)
    with_tools, as_string, without = [tokenize_conversation(tok, ex, date=DAY)[0] for ex in loader.examples]
    assert tok.decode(with_tools) == render_chat(messages, tools=[TOOL], date=DAY)
    assert as_string == with_tools != without
    assert "get_weather" in tok.decode(with_tools).split("<|im_start|>user")[0]  # offered in the system turn
    p.write_text(json.dumps({"messages": messages, "tools": {"name": "x"}}) + "\n")
    with pytest.raises(DataFormatError, match=rf"{p}:1: 'tools' must be a list of tool schemas"):
        load_conversations([p])
