"""The console script: convert and generate on real weights, clear errors on bad input."""

import json

import pytest

from smollm3.cli import main


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
    assert "no such tokenizer directory" in err and "Traceback" not in err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "smollm3", "hidden_sise": 8}))
    assert main(["convert", str(tmp_path / "m"), "--out", str(tmp_path / "o")]) == 1
    assert "'hidden_sise' (did you mean 'hidden_size'?)" in capsys.readouterr().err
