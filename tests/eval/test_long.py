"""RULER-style long-context tasks, the base prompt format and YaRN in `smollm3 eval`, on a tiny random model."""

import json
import shutil

import pytest
import torch

import smollm3
from smollm3.cli import main
from smollm3.data.synthetic_long import KINDS, check_retrieval, retrieval_prompt
from smollm3.eval import ruler
from smollm3.eval.runner import gen_prompts, load_model, run_eval, yarn_overrides
from smollm3.eval.tasks import EvalError, get_task, parse_length, parse_tasks

POSITIONS = 256  # tiny_eval_dir's (conftest.py); yarn_dir checks it
pytestmark = pytest.mark.usefixtures("one_thread")


def test_ruler_task_names_and_lengths():
    assert [parse_length(s) for s in ("1024", "4k", "128k", "64K")] == [1024, 4096, 131072, 65536]
    t = get_task("ruler:niah_multikey:4k")
    assert (t.kind, t.generator, t.length) == ("ruler", "niah_multikey", 4096)
    for name, why in (("ruler:niah_nope:4k", "unknown kind 'niah_nope'"), ("ruler:niah_single", "expected ruler:KIND"),
                      ("ruler:niah_single:4k:x", "expected ruler:KIND:LENGTH")):
        with pytest.raises(EvalError, match=why) as e:
            parse_tasks(f"arithmetic,{name}")
        assert all(k in str(e.value) for k in KINDS)  # the choices are listed
    for length in ("4m", "0", "k", "-1"):
        with pytest.raises(EvalError, match=f"'{length}' is not a token count; write it as 1024, 4k or 128k"):
            get_task(f"ruler:niah_single:{length}")


def test_eval_help_lists_kinds_modes_and_yarn(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(k in text for k in KINDS) and "ruler:KIND:LENGTH" in text and "ppl:DIR" in text
    assert "--yarn FACTOR" in text and "think,no_think,base" in text and "lm_eval_adapter" in text


@pytest.mark.parametrize("mode", ["base", "no_think"])
def test_ruler_prompts_fill_the_length(tiny_eval_dir, mode):
    tok = smollm3.load_tokenizer(tiny_eval_dir)
    task = get_task("ruler:niah_multiquery:600")
    items, prompts = ruler.make_items(task, 4, mode, tok.chat_template, tok, max_tokens=512)
    assert len(items) == 4 and {it["task"] for it in items} == {"niah_multiquery"}
    answer = ruler.answer_budget(mode, 512)
    assert answer == 64
    for item, prompt in zip(items, prompts):
        n = len(ruler.encode(tok, prompt, mode))
        assert 600 - 64 - answer < n + answer <= 600  # filled to just under LENGTH, answer included
        assert item["messages"][0]["content"] in prompt
        if mode == "base":
            assert prompt == retrieval_prompt(item)
        else:
            assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n") and "/no_think" in prompt
    # same seed, same items: a task is the same set every run
    assert ruler.make_items(task, 4, mode, tok.chat_template, tok, 512)[1] == prompts
    # think mode lets the answer use --max-tokens, so less haystack
    assert ruler.answer_budget("think", 100) == 100
    with pytest.raises(EvalError, match="no room for the haystack"):
        ruler.make_items(get_task("ruler:niah_multiquery:128"), 1, mode, tok.chat_template, tok, 512)


def test_ruler_base_mode_end_to_end(tiny_eval_dir, tmp_path, capsys):
    out, samples = tmp_path / "r.json", tmp_path / "s.jsonl"
    rc = main(["eval", "--model", str(tiny_eval_dir), "--tasks", "ruler:niah_single:256,ruler:niah_single:200",
               "--mode", "base", "--limit", "3", "--max-tokens", "8", "--out", str(out), "--samples", str(samples)])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    r = res["results"]["ruler:niah_single:256"]
    assert r["kind"] == "ruler" and r["n"] == 3 and r["length"] == 256 and 0 <= r["accuracy"] <= 1
    assert res["results"]["ruler:niah_single:200"]["length"] == 200
    assert res["config"]["mode"] == "base" and res["config"]["chat_template"] is None and res["config"]["yarn"] is None
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        assert row["prompt_tail"].endswith(" is:") and "\n" not in row["response"]  # stopped at the newline
        # filled to just under LENGTH with the answer's 8 tokens (--max-tokens) included; the haystack grows by whole
        # noise paragraphs (~50 tokens with this small test tokenizer)
        assert int(row["task"].rsplit(":", 1)[1]) - 64 < row["prompt_tokens"] + 8 <= int(row["task"].rsplit(":", 1)[1])
        assert row["correct"] == check_retrieval({"answer": row["answer"]}, row["response"])
    assert r["accuracy"] == sum(x["correct"] for x in rows[:3]) / 3
    assert "length" not in capsys.readouterr().out  # a setting, not a metric in the table


def test_base_mode_prompts_for_generative_tasks():
    items, prompts = gen_prompts(get_task("arithmetic"), 2, "base", "smollm3")
    assert prompts == [it["messages"][0]["content"] + "\nAnswer:" for it in items]
    with pytest.raises(EvalError, match="tool tasks need a chat template"):
        run_eval("unused", parse_tasks("tool_xml"), mode="base")


def test_lengths_beyond_the_model_name_the_option(tiny_eval_dir, tmp_path, capsys):
    def err(*args):
        assert main(["eval", "--model", str(tiny_eval_dir), "--out", str(tmp_path / "r.json"), *args]) == 1
        return capsys.readouterr().err

    assert f"needs 512 tokens but the model has {POSITIONS} positions; pass --yarn 2" in \
        err("--tasks", "ruler:niah_single:512", "--mode", "base")
    assert f"needs 1024 tokens but the model has {2 * POSITIONS} positions; pass a larger --yarn FACTOR" in \
        err("--tasks", "ruler:niah_single:1k", "--yarn", "2")
    assert "but --max-model-len is 200; raise --max-model-len to 256" in \
        err("--tasks", "ruler:niah_single:256", "--max-model-len", "200")
    assert f"--max-model-len 1024 exceeds the model's {POSITIONS} positions; lower it or pass --yarn 4" in \
        err("--tasks", "arithmetic", "--max-model-len", "1024")
    assert "--yarn FACTOR must be a number > 1" in err("--tasks", "arithmetic", "--yarn", "0.5")


@pytest.fixture(scope="module")
def yarn_dir(tiny_eval_dir, tmp_path_factory):
    """The tiny model with YaRN x2 written into its config.json, as the SmolLM3 model card says to reach 128k."""
    d = tmp_path_factory.mktemp("yarn") / "tiny-yarn"
    shutil.copytree(tiny_eval_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["max_position_embeddings"] == POSITIONS
    cfg["rope_scaling"] = {"factor": 2.0, "original_max_position_embeddings": POSITIONS, "type": "yarn"}
    cfg["max_position_embeddings"] = 2 * POSITIONS
    del cfg["rope_parameters"]  # the v5 spelling would win over the v4 one written above
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_yarn_equals_a_config_with_yarn_written_in(tiny_eval_dir, yarn_dir, tmp_path):
    ids = torch.randint(0, 500, (1, 2 * POSITIONS - 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = load_model(tiny_eval_dir, yarn=2)(ids)
        written = smollm3.load_pretrained(yarn_dir, dtype=torch.float32)(ids)
        plain = smollm3.load_pretrained(tiny_eval_dir, dtype=torch.float32)(ids)
    assert torch.equal(ours, written)
    assert (ours[0, POSITIONS:] - plain[0, POSITIONS:]).abs().max() > 1e-3  # beyond the original length it differs
    with pytest.raises(EvalError, match="already uses YaRN"):
        yarn_overrides(smollm3.checkpoint.load_config(yarn_dir), 2)
    from smollm3.model import change_config

    with pytest.raises(ValueError, match="hidden_size cannot change after loading"):  # it shapes weights
        change_config(smollm3.load_pretrained(tiny_eval_dir), hidden_size=32)

    # the engine path: same config, same greedy tokens for a prompt past the original positions
    from smollm3.infer.llm import LLM
    from smollm3.infer.sampling import SamplingParams

    over = yarn_overrides(smollm3.checkpoint.load_config(tiny_eval_dir), 2)
    a = LLM(tiny_eval_dir, device="cpu", dtype=torch.float32, max_model_len=400, max_num_seqs=1, config_overrides=over)
    b = LLM(yarn_dir, device="cpu", dtype=torch.float32, max_model_len=400, max_num_seqs=1)
    assert a.model.config == b.model.config
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    prompt = ids[0, :POSITIONS + 40].tolist()
    assert a.generate([prompt], params)[0].output_ids == b.generate([prompt], params)[0].output_ids


def test_yarn_in_eval_scores_like_the_written_config(tiny_eval_dir, yarn_dir, tmp_path):
    text = " ".join(["The quick brown fox jumps over the lazy dog while the children watch."] * 30)
    ppl = tmp_path / "long.jsonl"
    ppl.write_text(json.dumps({"text": text}) + "\n")
    assert len(smollm3.load_tokenizer(tiny_eval_dir).encode(text)) > POSITIONS
    task = parse_tasks(f"ppl:{ppl}")
    with_yarn = run_eval(tiny_eval_dir, task, yarn=2)
    written = run_eval(yarn_dir, task)
    plain = run_eval(tiny_eval_dir, task)
    name = f"ppl:{ppl}"
    assert with_yarn["results"][name]["bits_per_byte"] == written["results"][name]["bits_per_byte"]
    assert with_yarn["results"][name]["bits_per_byte"] != plain["results"][name]["bits_per_byte"]
    assert with_yarn["config"]["yarn"] == {"rope_type": "yarn", "factor": 2.0,
                                           "original_max_position_embeddings": POSITIONS}

    # and the CLI: a RULER length past the model's positions runs with --yarn 2
    out = tmp_path / "r.json"
    assert main(["eval", "--model", str(tiny_eval_dir), "--tasks", "ruler:niah_single:400", "--mode", "base",
                 "--limit", "2", "--max-tokens", "4", "--yarn", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["results"]["ruler:niah_single:400"]["n"] == 2 and res["config"]["yarn"]["factor"] == 2.0
