"""The lm-evaluation-harness adapter on a tiny random model: log-likelihoods equal our runner's, rolling and greedy
generation equal direct computations, and lm_eval's simple_evaluate runs a local YAML task through it."""

import json

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")  # the `lmeval` extra; CI installs only `dev`

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

import smollm3  # noqa: E402
from smollm3.eval import lm_eval_adapter  # noqa: E402
from smollm3.eval.runner import loglikelihoods  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ITEMS = [
    {"query": "The capital of France is", "choices": [" Paris", " Berlin", " Madrid"], "gold": 0},
    {"query": "Question: What color is the sky?\nAnswer:", "choices": [" blue", " green"], "gold": 0},
    {"query": "def fibonacci(n):", "choices": ["\n    return n", " pass", "\n    while True:"], "gold": 0},
]


def _req(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@pytest.fixture(scope="module")
def lm(tiny_eval_dir):
    return get_model("smollm3").create_from_arg_string(f"pretrained={tiny_eval_dir},batch_size=2",
                                                       {"device": "cpu"})


def test_registered_and_loglikelihoods_equal_the_runner(lm, tiny_eval_dir):
    assert get_model("smollm3") is lm_eval_adapter.SmolLM3LM
    model, tok = smollm3.load_pretrained(tiny_eval_dir), smollm3.load_tokenizer(tiny_eval_dir)
    reqs = [_req("loglikelihood", it["query"], c) for it in ITEMS for c in it["choices"]]
    got = lm.loglikelihood(reqs)
    want = [x for it in ITEMS for x in loglikelihoods(model, tok, it["query"], it["choices"])]
    assert max(abs(g - w) for (g, _), w in zip(got, want)) <= 1e-5, list(zip(got, want))

    # is_greedy: whether argmax decoding reproduces the continuation, checked on the full logits
    for req, (_, flag) in zip(reqs, got):
        ctx, cont = lm._pair(*req.args)
        with torch.no_grad():
            logits = model(torch.tensor([ctx + cont]))[0, len(ctx) - 1:-1]
        assert flag == (logits.argmax(-1).tolist() == cont)
    ctx = tok.encode("The capital of France is")
    with torch.no_grad():
        first = int(model(torch.tensor([ctx]))[0, -1].argmax())
        second = int(model(torch.tensor([ctx + [first]]))[0, -1].argmax())
    (ll, is_greedy), (_, not_greedy) = lm._score([(ctx, [first, second]), (ctx, [first, (second + 1) % 500])])
    assert is_greedy and not not_greedy and ll < 0
    # lm_eval conventions: a context's trailing space moves to the continuation; an empty context is BOS
    assert lm._pair("The capital of France is ", "Paris") == lm._pair("The capital of France is", " Paris")
    assert lm._pair("", "Paris")[0] == [tok.bos_token_id]


def test_rolling_loglikelihood_scores_every_token_once(lm, tiny_eval_dir):
    model, tok = smollm3.load_pretrained(tiny_eval_dir), smollm3.load_tokenizer(tiny_eval_dir)
    text = "The quick brown fox jumps over the lazy dog."
    ids = [tok.bos_token_id] + tok.encode(text)  # every token predicted, the first from BOS
    with torch.no_grad():
        logp = model(torch.tensor([ids]))[0, :-1].double().log_softmax(-1)
    want = float(logp.gather(-1, torch.tensor(ids[1:])[:, None]).sum())
    assert abs(lm.loglikelihood_rolling([_req("loglikelihood_rolling", text)])[0] - want) <= 1e-5
    # windows shorter than the text: every token still scored once, each with less context
    short = lm_eval_adapter.SmolLM3LM(str(tiny_eval_dir), device="cpu", max_length=8)
    windowed = short.loglikelihood_rolling([_req("loglikelihood_rolling", text)])[0]
    assert windowed != pytest.approx(want) and windowed < 0


def test_generate_until_is_greedy_and_stops(lm, tiny_eval_dir):
    model, tok = smollm3.load_pretrained(tiny_eval_dir), smollm3.load_tokenizer(tiny_eval_dir)
    context = "The quick brown fox"
    ids = tok.encode(context)
    with torch.no_grad():  # greedy by hand, one full forward per token
        for _ in range(12):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    full = tok.decode(ids[len(tok.encode(context)):])
    stop = full[3:5]  # a stop string the greedy text contains
    out = lm.generate_until([_req("generate_until", context, {"max_gen_toks": 12, "do_sample": False}),
                             _req("generate_until", context, {"until": [stop], "max_gen_toks": 12})])
    assert out[0] == full and out[1] == full[:full.index(stop)]


def test_simple_evaluate_runs_a_local_yaml_task(tiny_eval_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(it) + "\n" for it in ITEMS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_cloze.yaml").write_text(f"""task: tiny_cloze
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {tmp_path / "hf-cache"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(model="smollm3", model_args=f"pretrained={tiny_eval_dir}", tasks=["tiny_cloze"],
                                  task_manager=TaskManager(include_path=str(tmp_path / "tasks"),
                                                           include_defaults=False),
                                  device="cpu", log_samples=True)
    acc = res["results"]["tiny_cloze"]["acc,none"]
    model, tok = smollm3.load_pretrained(tiny_eval_dir), smollm3.load_tokenizer(tiny_eval_dir)
    picks = []
    for it, sample in zip(ITEMS, sorted(res["samples"]["tiny_cloze"], key=lambda s: s["doc_id"])):
        ours = loglikelihoods(model, tok, it["query"], it["choices"])
        theirs = [r[0][0] for r in sample["resps"]]
        assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1e-5
        picks.append(max(range(len(ours)), key=ours.__getitem__) == it["gold"])
    assert acc == pytest.approx(sum(picks) / len(ITEMS))


def test_module_wrapper_runs_the_lm_eval_cli(capsys):
    with pytest.raises(SystemExit) as e:
        lm_eval_adapter.main(["run", "--help"])
    assert e.value.code == 0 and "--model_args" in capsys.readouterr().out
