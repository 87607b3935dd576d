"""`smollm3 eval` end to end on the real SmolLM2-135M: results JSON, samples, think/no_think prompts, bits-per-byte."""

import json
import math

import pytest
import torch

from smollm3.cli import main
from smollm3.eval.runner import gen_prompts
from smollm3.eval.tasks import render_prompt
from smollm3.eval.tasks import get_task

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris est la capitale de la France. Ça va ? 🙂"]


def test_think_and_no_think_render_different_prompts():
    task = get_task("arithmetic")
    items, think = gen_prompts(task, 3, "think", "smollm3")
    _, no_think = gen_prompts(task, 3, "no_think", "smollm3")
    assert len(items) == len(think) == 3
    question = items[0]["messages"][0]["content"]
    for t, n in zip(think, no_think):
        assert t != n
        assert n.endswith("<|im_start|>assistant\n<think>\n\n</think>\n") and "/no_think" in n
        assert t.endswith("<|im_start|>assistant\n") and "/think" in t
    assert question in think[0] and question.startswith("What is ")
    # a plain ChatML template ignores enable_thinking: same prompt in both modes
    chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" \
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    msgs = items[0]["messages"][:-1]
    assert render_prompt(msgs, chatml, "think") == render_prompt(msgs, chatml, "no_think")


@pytest.mark.real_weights
def test_eval_cli_writes_results_and_samples(smollm2_dir, tmp_path, capsys, bits_per_byte):
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"query": "The capital of France is", "choices": [" Paris", " Rome"], "gold": 0}) + "\n"
                  + json.dumps({"query": "2 + 2 =", "choices": [" 5", " 4"], "gold": 1}) + "\n")
    ppl = tmp_path / "ppl.jsonl"
    ppl.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS), encoding="utf-8")
    out, samples = tmp_path / "results.json", tmp_path / "samples.jsonl"
    rc = main(["eval", "--model", str(smollm2_dir), "--tasks", f"arithmetic,mc:{mc},ppl:{ppl}", "--limit", "8",
               "--max-tokens", "24", "--mode", "no_think", "--out", str(out), "--samples", str(samples)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "exact_match" in printed and "acc_norm" in printed and "bits_per_byte" in printed

    res = json.loads(out.read_text())
    assert set(res) == {"results", "config", "timings"}
    arith = res["results"]["arithmetic"]
    assert arith["kind"] == "gen" and arith["n"] == 8 and 0 <= arith["exact_match"] <= 1
    assert res["results"][f"mc:{mc}"]["n"] == 2 and res["results"][f"mc:{mc}"]["acc"] == 1.0
    p = res["results"][f"ppl:{ppl}"]
    assert p["n"] == 2 and 0 < p["bits_per_byte"] < 10 and p["perplexity"] > 1
    cfg = res["config"]
    assert cfg["mode"] == "no_think" and cfg["limit"] == 8 and cfg["max_tokens"] == 24 and cfg["temperature"] == 0
    assert {"load_s", "arithmetic", "total_s"} <= set(res["timings"])

    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    gen = [r for r in rows if r["task"] == "arithmetic"]
    assert len(gen) == 8 and len(rows) == 8 + 2 + 2
    assert all({"prompt", "response", "extracted", "answer", "correct", "finish_reason"} <= set(r) for r in gen)
    assert gen[0]["prompt"].endswith("<|im_start|>assistant\n") and "What is" in gen[0]["prompt"]
    assert sum(r["correct"] for r in gen) / 8 == arith["exact_match"]

    # bits-per-byte is the total NLL in nats / ln 2 / UTF-8 bytes: recompute it from our model's logits
    import smollm3

    model, tok = smollm3.load_pretrained(smollm2_dir, dtype=torch.float32), smollm3.load_tokenizer(smollm2_dir)
    assert math.isclose(p["bits_per_byte"], bits_per_byte(model, tok, TEXTS), rel_tol=1e-5)


def test_eval_cli_unknown_task_is_a_clear_error(tmp_path, capsys):
    rc = main(["eval", "--model", str(tmp_path), "--tasks", "gsm8k", "--out", str(tmp_path / "r.json")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "unknown task 'gsm8k'" in err and "available tasks: arithmetic, word_problem" in err
