"""Perplexity and bits-per-byte per language and domain: `ppl:DIR` scores every *.jsonl under DIR on its own."""

import json
import math

import pytest
import torch

import smollm3
from smollm3.cli import main
from smollm3.eval.runner import run_ppl
from smollm3.eval.tasks import EvalError, get_task, parse_tasks

pytestmark = pytest.mark.usefixtures("one_thread")

# laid out as `smollm3 corpus build` writes its output: OUT/<lang>/<source>.jsonl, OUT/code/python-stdlib.jsonl
FILES = {
    "en/web.jsonl": ["The quick brown fox jumps over the lazy dog.", "Children watch from the window."],
    "fr/web.jsonl": ["Le renard brun rapide saute par-dessus le chien paresseux. Ça va ? 🙂"],
    "code/python-stdlib.jsonl": ["def fibonacci(n: int) -> int:\n    return n if n < 2 else fibonacci(n - 1)\n"],
}


@pytest.fixture
def heldout(tmp_path):
    root = tmp_path / "heldout"
    for rel, texts in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("".join(json.dumps({"text": t, "lang": "x"}, ensure_ascii=False) + "\n"
                                        for t in texts), encoding="utf-8")
    (root / "manifest.json").write_text("{}")  # not a .jsonl: ignored
    (root / ".partial").mkdir()
    (root / ".partial" / "en.jsonl").write_text("not json\n")  # hidden (an interrupted write): ignored
    return root


def test_directory_expands_to_one_task_per_file(heldout):
    tasks = parse_tasks(f"ppl:{heldout}/")  # a trailing slash does not end up in the names
    assert [t.name for t in tasks] == [f"ppl:{heldout}/code/python-stdlib", f"ppl:{heldout}/en/web",
                                       f"ppl:{heldout}/fr/web"]
    assert [t.path for t in tasks] == [heldout / "code/python-stdlib.jsonl", heldout / "en/web.jsonl",
                                       heldout / "fr/web.jsonl"]
    (heldout / "empty").mkdir()
    with pytest.raises(EvalError, match="no \\*.jsonl files under"):
        parse_tasks(f"ppl:{heldout / 'empty'}")
    with pytest.raises(EvalError, match="no such file .* or directory"):
        get_task(f"ppl:{heldout / 'missing'}")


def test_bits_per_byte_per_language_and_domain(tiny_eval_dir, heldout, tmp_path, capsys, bits_per_byte):
    out = tmp_path / "r.json"
    assert main(["eval", "--model", str(tiny_eval_dir), "--tasks", f"ppl:{heldout}", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["config"]["tasks"] == [f"ppl:{heldout}/{n}" for n in ("code/python-stdlib", "en/web", "fr/web")]
    model, tok = smollm3.load_pretrained(tiny_eval_dir), smollm3.load_tokenizer(tiny_eval_dir)
    for rel, texts in FILES.items():
        r = res["results"][f"ppl:{heldout}/{rel.removesuffix('.jsonl')}"]
        assert r["kind"] == "ppl" and r["n"] == len(texts)
        assert math.isclose(r["bits_per_byte"], bits_per_byte(model, tok, texts), rel_tol=1e-6)
        tokens = sum(len(tok.encode(t)) - 1 for t in texts)
        assert math.isclose(r["perplexity"], 2 ** (r["bits_per_byte"] * sum(len(t.encode()) for t in texts) / tokens),
                            rel_tol=1e-9)
    assert f"ppl:{heldout}/fr/web" in capsys.readouterr().out


def test_windows_predict_every_token_once(tiny_eval_dir, tmp_path, bits_per_byte):
    """A text longer than the window: each token after the first is predicted once, from the window it falls in."""
    model, tok = smollm3.load_pretrained(tiny_eval_dir), smollm3.load_tokenizer(tiny_eval_dir)
    text = "The quick brown fox jumps over the lazy dog while the children watch from the window. " * 2
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"text": text}) + "\n")
    ids = tok.encode(text, add_special_tokens=True)
    window = 16
    assert len(ids) > 2 * window
    scores, samples = run_ppl(model, tok, get_task(f"ppl:{path}"), None, window=window)
    # token t is predicted from the start of its window: windows start every window - 1 tokens (each one's last
    # token is the next one's first, as context only); one forward per token here, over exactly that context
    nll = 0.0
    for t in range(1, len(ids)):
        start = (t - 1) // (window - 1) * (window - 1)
        with torch.no_grad():
            logp = model(torch.tensor([ids[start:t]]))[0, -1].double().log_softmax(-1)
        nll -= float(logp[ids[t]])
    assert samples[0]["tokens"] == len(ids) - 1
    assert math.isclose(samples[0]["nll"], nll, rel_tol=1e-6)
    assert math.isclose(scores["bits_per_byte"], nll / math.log(2) / len(text.encode()), rel_tol=1e-6)
    whole = run_ppl(model, tok, get_task(f"ppl:{path}"), None)[0]["bits_per_byte"]  # one window: more context
    assert math.isclose(whole, bits_per_byte(model, tok, [text]), rel_tol=1e-6) and whole != scores["bits_per_byte"]
