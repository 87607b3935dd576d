"""The console script: convert and generate on real weights, clear errors on bad input."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from smollm3.cli import main

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "convert" in out and "generate" in out


@pytest.mark.real_weights
def test_convert_writes_an_hf_directory(smollm2_dir):
    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "chat_template.jinja"} <= names
    gen = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2  # <|im_end|>


@pytest.mark.real_weights
def test_generate_answers_paris(smollm2_dir, capsys):
    rc = main(["generate", "--model", str(smollm2_dir), "--chat", "--prompt", "What is the capital of France?",
               "--max-new-tokens", "16", "--temperature", "0"])
    assert rc == 0
    assert capsys.readouterr().out.strip() == "The capital of France is Paris."


@pytest.mark.real_weights
def test_hf_directory_loads_in_transformers_with_its_tokenizer(smollm2_dir):
    transformers = pytest.importorskip("transformers")
    import torch

    from smollm3 import load_pretrained

    tok = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ours = load_pretrained(smollm2_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    from smollm3.tokenizer import load_tokenizer

    ids = load_tokenizer(smollm2_dir).encode(text)
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (ours(x) - theirs(x).logits).abs().max() <= 1e-4


def test_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "hi"]) == 1
    err = capsys.readouterr().err
    assert "missing: no such file or directory" in err and "Traceback" not in err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "smollm3", "hidden_sise": 8}))
    assert main(["convert", str(tmp_path / "m"), "--out", str(tmp_path / "o")]) == 1
    assert "'hidden_sise' (did you mean 'hidden_size'?)" in capsys.readouterr().err


# ---- the first hour of a new user (issue 28): fast help, one-line argument errors, modes, training's ends


def test_help_does_not_import_torch():
    """`smollm3 --help` (and any argument error) answers before torch is imported: well under a second."""
    code = ("import sys\nfrom smollm3.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'smollm3 --help imported torch'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "generate" in proc.stdout and "train" in proc.stdout


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    version = re.search(r'^version = "(.+)"$', pyproject, re.M).group(1)  # tomllib is Python 3.11+
    assert exit_.value.code == 0 and capsys.readouterr().out == f"smollm3 {version}\n"


def test_data_commands_do_not_import_the_compiler():
    """`smollm3 data ...` and the loaders import torch but not torch._dynamo (~1 s of every command's start on 2
    cores): kernels compile at their first CUDA call, not at import."""
    code = "import sys, smollm3.data, smollm3.data.prepare\nprint('torch._dynamo' in sys.modules)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False", "importing smollm3.data imported torch._dynamo"


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "m", "--promt", "hi"], "unrecognized argument --promt (did you mean --prompt?)"),
    (["generate", "--model", "m", "--prompt", "hi", "--temperature", "-1"],
     "argument --temperature: must be in [0, 100] (0 = greedy), got -1"),
    (["generate", "--model", "m", "--prompt", "hi", "--top-p", "7"], "argument --top-p: must be in (0, 1], got 7"),
    (["generate", "--model", "m", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens: must be >= 1, got 0"),
    (["chat", "--model", "m", "--temperature", "-0.5"], "argument --temperature: must be in [0, 100]"),
    (["tokenizer", "train", "--corpus", "c", "--vocab-size", "9", "--out", "o", "--min-freq", "2", "--outt", "x"],
     "unrecognized argument --outt (did you mean --out?)"),
    (["generat", "--model", "m"], "unknown command 'generat' (did you mean 'generate'?)"),
    (["generate", "--model", "m", "--prompt", "hi", "--think", "--no-think"], "not allowed with argument"),
    (["serve", "--model", "m", "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization: must be in (0, 1]"),
    (["serve", "--model", "m", "--max-num-batched-tokens", "0"], "--max-num-batched-tokens: must be >= 1"),
])
def test_bad_arguments_get_one_line_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err


def test_abbreviated_flags_still_work(capsys):
    with pytest.raises(SystemExit) as e:  # --max-new (an abbreviation argparse accepts) is not a typo
        main(["generate", "--model", "m", "--prompt", "hi", "--max-new", "0"])
    assert e.value.code == 2 and "--max-new-tokens: must be >= 1" in capsys.readouterr().err


def test_eval_usage_shows_compare_as_the_alternative(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert usage.splitlines() == ["usage: smollm3 eval --model DIR --tasks NAME,... --out FILE.json [options]",
                                  "       smollm3 eval compare A.json B.json"]


def test_tokenizer_trains_on_a_corpus_build_folder(tmp_path, capsys):
    """`corpus build` writes manifest.json and LICENSES/ beside the JSONL; the tokenizer takes only the text files."""
    corpus = tmp_path / "corpus"
    (corpus / "en").mkdir(parents=True)
    (corpus / "LICENSES").mkdir()
    with open(corpus / "en" / "docs.jsonl", "w") as f:
        for i in range(200):
            f.write(json.dumps({"text": f"Document {i}: the quick brown fox jumps over the lazy dog."}) + "\n")
    (corpus / "manifest.json").write_text(json.dumps({"files": {"en/docs.jsonl": {"documents": 200}}}, indent=2))
    (corpus / "LICENSES" / "pkg.copyright").write_text("Format: https://www.debian.org/doc/packaging-manuals/\n")
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "600", "--out", str(tmp_path / "t"),
                 "--special-slots", "32"]) == 0
    assert (tmp_path / "t" / "tokenizer.json").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "manifest.json").write_text("{}")
    assert main(["tokenizer", "train", "--corpus", str(tmp_path / "empty"), "--vocab-size", "600", "--out",
                 str(tmp_path / "t2")]) == 1
    assert "has no .txt, .jsonl, .ndjson files" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_chat_dir(trained_tokenizer_dir, tmp_path_factory):
    """A tiny random SmolLM3 with the trained tokenizer and our chat template."""
    from smollm3 import build_model, load_tokenizer, preset, save_pretrained

    tok = load_tokenizer(trained_tokenizer_dir)
    cfg = preset("tiny")
    cfg.vocab_size, cfg.max_position_embeddings = tok.vocab_size, 512
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    out = tmp_path_factory.mktemp("tiny-chat") / "model"
    save_pretrained(build_model(cfg), out, tokenizer=tok)
    return out


@pytest.mark.parametrize("flag, system_line, prefilled", [
    ("--think", "Reasoning Mode: /think", False), ("--no-think", "Reasoning Mode: /no_think", True), (None, "/think", False)])
def test_generate_think_flags_set_enable_thinking(tiny_chat_dir, monkeypatch, flag, system_line, prefilled):
    import smollm3.generate
    from smollm3 import load_tokenizer

    seen = {}

    def fake_generate(model, prompt_ids, *args):
        seen["prompt"] = load_tokenizer(tiny_chat_dir).decode(prompt_ids)
        return []

    monkeypatch.setattr(smollm3.generate, "generate", fake_generate)
    argv = ["generate", "--model", str(tiny_chat_dir), "--chat", "--prompt", "What is 2 + 2?", "--temperature", "0"]
    assert main(argv + ([flag] if flag else [])) == 0
    prompt = seen["prompt"]
    assert system_line in prompt
    assert prompt.endswith("<|im_start|>assistant\n" + ("<think>\n\n</think>\n" if prefilled else ""))


def test_generate_mode_flags_need_chat(tiny_chat_dir, capsys):
    assert main(["generate", "--model", str(tiny_chat_dir), "--prompt", "hi", "--no-think"]) == 1
    assert "add --chat" in capsys.readouterr().err


def test_train_names_the_missing_key_says_it_resumes_and_where_the_model_went(tiny_chat_dir, tmp_path, capsys):
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                                                    {"role": "assistant", "content": f"{i + 1}."}]}) + "\n"
                           for i in range(8)))
    config = tmp_path / "sft.yaml"
    config.write_text(f"out_dir: {tmp_path / 'run'}\nmodel: {{init_from: {tmp_path / 'nope'}}}\n"
                      f"data: {{kind: sft, paths: [{sft}], seq_len: 128, template: chatml}}\n"
                      "train: {objective: sft, steps: 2, dtype: float32}\ncheckpoint: {every: 2}\nlog: {every: 1}\n")
    assert main(["train", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"model.init_from: {tmp_path / 'nope'} does not exist" in err and "tokenizer" not in err

    assert main(["train", str(config), f"model.init_from={tiny_chat_dir}"]) == 0
    out = capsys.readouterr().out
    hf = tmp_path / "run" / "checkpoints" / "step_00000002" / "hf"
    assert f"done: step 2; final model (HF) in {hf}; metrics in {tmp_path / 'run' / 'metrics.jsonl'}" in out
    assert "resuming" not in out and (hf / "config.json").exists()

    assert main(["train", str(config), f"model.init_from={tiny_chat_dir}", "train.steps=3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"resuming from {hf.parent} (checkpoint.resume: auto)")
    assert "done: step 3; final model (HF) in" in lines[-1]


@pytest.mark.parametrize("flags, no_think", [([], False), (["--think"], False), (["--no-think"], True)])
def test_chat_starts_in_think_mode_unless_told(flags, no_think):
    from smollm3.cli import build_parser

    args = build_parser(["chat"]).parse_args(["chat", "--model", "m", *flags])
    assert args.no_think is no_think  # ChatSession(enable_thinking=not args.no_think)


def test_engine_flags_reach_the_engine():
    """serve/chat flags -> Engine keywords (a paged engine: memory fraction, step budget, blocks, prefix caching)."""
    from smollm3.cli import engine as cli_engine
    from smollm3.cli import build_parser

    argv = ["serve", "--model", "m", "--device", "cpu", "--max-num-seqs", "64", "--gpu-memory-utilization", "0.5",
            "--max-num-batched-tokens", "4096", "--block-size", "16", "--no-prefix-caching", "--max-waiting", "9"]
    args = build_parser(argv).parse_args(argv)
    kw = cli_engine._engine_kwargs(args)
    assert {k: kw[k] for k in ("max_num_seqs", "gpu_memory_utilization", "max_num_batched_tokens", "block_size",
                               "prefix_caching", "kv_cache_memory")} == {
        "max_num_seqs": 64, "gpu_memory_utilization": 0.5, "max_num_batched_tokens": 4096, "block_size": 16,
        "prefix_caching": False, "kv_cache_memory": None}
    assert args.max_waiting == 9
    assert kw["invariant_prefill"] is False
    argv += ["--invariant-prefill"]
    assert cli_engine._engine_kwargs(build_parser(argv).parse_args(argv))["invariant_prefill"] is True


def test_invariant_prefill_refused_on_cpu_in_one_line(tiny_chat_dir, capsys):
    code = main(["chat", "--model", str(tiny_chat_dir), "--device", "cpu", "--invariant-prefill"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--invariant-prefill" in err[0] and "needs a CUDA device" in err[0], err
