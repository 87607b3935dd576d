"""Evaluation tasks: cloze log-likelihoods equal transformers' on real weights; bad input names its file and line."""

import json

import pytest
import torch

from smollm3.eval.runner import _split, loglikelihoods, run_mc
from smollm3.eval.tasks import EvalError, Task, extract_answer, get_task, load_mc, parse_tasks

ITEMS = [
    {"query": "The capital of France is", "choices": [" Paris", " Berlin", " Madrid", " Rome"], "gold": 0},
    {"query": "Water freezes at a temperature of", "choices": [" 0 degrees Celsius", " 100 degrees Celsius",
                                                                " 50 degrees Celsius"], "gold": 0},
    {"query": "Question: What color is the sky on a clear day?\nAnswer:", "choices": [" blue", " green", " red"],
     "gold": 0},
    {"query": "2 + 2 =", "choices": [" 4", " 5", " 22"], "gold": 0},
    {"query": "The opposite of hot is", "choices": [" cold", " warm", " spicy food from Mexico"], "gold": 0},
    {"query": "Cats are animals that", "choices": [" meow", " bark loudly at the mailman", " fly"], "gold": 0},
]


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.real_weights
def test_mc_loglikelihoods_equal_transformers(smollm2_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    import smollm3

    model = smollm3.load_pretrained(smollm2_dir, dtype=torch.float32)
    tok = smollm3.load_tokenizer(smollm2_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ours, theirs = [], []
    for item in ITEMS:
        ours += loglikelihoods(model, tok, item["query"], item["choices"])
        for choice in item["choices"]:  # one unpadded sequence at a time: no batching in the reference
            ctx, cont = _split(tok, item["query"], choice)
            with torch.no_grad():
                logp = hf(torch.tensor([ctx + cont])).logits[0].double().log_softmax(-1)
            theirs.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1e-4, list(zip(ours, theirs))

    # so the accuracies are identical; and the model gets these easy ones mostly right
    path = _write(tmp_path / "items.jsonl", [json.dumps(i) for i in ITEMS])
    scores, samples = run_mc(model, tok, get_task(f"mc:{path}"), None)
    k = 0
    for item, s in zip(ITEMS, samples):
        ref = theirs[k:k + len(item["choices"])]
        k += len(item["choices"])
        assert s["pred"] == max(range(len(ref)), key=ref.__getitem__)
        norm = [x / len(c) for x, c in zip(ref, item["choices"])]
        assert s["pred_norm"] == max(range(len(norm)), key=norm.__getitem__)
    assert scores["n"] == len(ITEMS) and scores["acc"] >= 0.5 and 0 <= scores["acc_norm"] <= 1


def test_mc_split_keeps_the_query_tokens(trained_tokenizer_dir):
    import smollm3

    tok = smollm3.load_tokenizer(trained_tokenizer_dir)
    ctx, cont = _split(tok, "The quick brown fox", " jumps over")
    assert ctx == tok.encode("The quick brown fox", add_special_tokens=True) and cont
    assert tok.decode(cont) == " jumps over"


@pytest.mark.parametrize("line, why", [
    ('{"query": "q", "choices": ["a", "b"], "gold": 0', "not valid JSON"),
    ('{"query": "q", "gold": 0}', "missing key 'choices'"),
    ('{"query": "q", "choices": ["a", "b"], "gold": 2}', "'gold' must be an index"),
    ('{"query": "q", "choices": ["a", "b"], "gold": true}', "'gold' must be an index"),
    ('{"query": "q", "choices": ["a"], "gold": 0}', "at least 2"),
    ('["q", ["a", "b"], 0]', "expected a JSON object"),
])
def test_malformed_mc_item_names_file_and_line(tmp_path, line, why):
    good = json.dumps(ITEMS[0])
    path = _write(tmp_path / "bad.jsonl", [good, "", good, line])
    with pytest.raises(EvalError, match=why) as e:
        load_mc(path)
    assert f"{path}:4:" in str(e.value)


def test_unknown_task_lists_the_available_ones(tmp_path):
    with pytest.raises(EvalError, match="unknown task 'gsm9k'") as e:
        parse_tasks("arithmetic,gsm9k")
    assert "arithmetic" in str(e.value) and "mc:FILE.jsonl" in str(e.value) and "ppl:FILE.jsonl" in str(e.value)
    with pytest.raises(EvalError, match="no such file"):
        get_task(f"mc:{tmp_path / 'missing.jsonl'}")
    assert parse_tasks("arithmetic, word_problem") == [Task("arithmetic", "gen", generator="arithmetic"),
                                                         Task("word_problem", "gen", generator="word_problem")]


def test_answer_is_taken_after_the_last_think():
    assert extract_answer("<think>\n3 + 4 = 7, no wait: 12\n</think>\nThe answer is 8.") == "8"
    assert extract_answer("<think>1</think> <think>2</think>so 1,234 in total") == "1234"
    assert extract_answer("It is 5 then 6.") == "6"
    assert extract_answer("<think>\n7 is the answer but I ran out of tokens") is None
