"""Linear merge / model soup: exact arithmetic, the output directory, transformers loading, and every bad input."""

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import smollm3
from smollm3.cli import main
from smollm3.merge import MergeError, linear_merge, merge, read_merge_config

TINY = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "rope_theta": 10000.0,
        "dtype": "float32", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def _tokenizer_files(d, tag):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({f"{tag}{i}": i for i in range(8)}, unk_token=f"{tag}0")).save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    (d / "chat_template.jinja").write_text(f"{{{{ messages }}}} {tag}")
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "temperature": 0.6, "note": tag}))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three tiny random SmolLM3 checkpoints (seeds 0, 1, 2), each with its own tokenizer files."""
    root = tmp_path_factory.mktemp("merge")
    dirs = []
    for seed in range(3):
        torch.manual_seed(seed)
        d = smollm3.save_pretrained(smollm3.build_model(smollm3.ModelConfig(**TINY)), root / f"m{seed}")
        _tokenizer_files(d, f"tok{seed}_")
        dirs.append(d)
    return dirs


def _state(d):
    index = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    out = {}
    for f in files:
        out.update(load_file(d / f))
    return out


def _config(tmp_path, models, weights=None, **top):
    entries = [{"model": str(m)} if w is None else {"model": str(m), "parameters": {"weight": w}}
               for m, w in zip(models, weights or [None] * len(models))]
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump({"models": entries, "merge_method": "linear", **top}, sort_keys=False))
    return path


def test_half_half_is_the_exact_average(models, tmp_path):
    out = merge(_config(tmp_path, models[:2], [0.5, 0.5]), tmp_path / "out", progress=False)
    a, b, merged = _state(models[0]), _state(models[1]), _state(out)
    assert merged.keys() == a.keys()
    for name in a:
        assert torch.equal(merged[name], (a[name] + b[name]) / 2), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg == json.loads((models[0] / "config.json").read_text())  # same architecture, same dtype
    # tokenizer, chat template and sampling defaults come from the first model, byte for byte
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / f).read_bytes() == (models[0] / f).read_bytes(), f
    record = yaml.safe_load((out / "merge_config.yaml").read_text())
    assert [m["parameters"]["weight"] for m in record["models"]] == [0.5, 0.5]


@pytest.mark.parametrize("weights,normalize,expected", [([0.9, 0.1], True, (0.9, 0.1)), ([3, 1], True, (0.75, 0.25)),
                                                        ([1.0, 1.0], False, (1.0, 1.0))])
def test_weights_and_normalize(models, tmp_path, weights, normalize, expected):
    out = merge(_config(tmp_path, models[:2], weights, normalize=normalize), tmp_path / "out", progress=False)
    a, b, merged = _state(models[0]), _state(models[1]), _state(out)
    for name in a:
        want = expected[0] * a[name].double() + expected[1] * b[name].double()
        torch.testing.assert_close(merged[name].double(), want, atol=1e-6, rtol=1e-6)


def test_soup_of_three_loads_in_transformers_with_equal_logits(models, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = merge(_config(tmp_path, models), tmp_path / "soup", max_shard_bytes=60_000, progress=False)
    states = [_state(m) for m in models]
    merged = _state(out)
    for name in merged:
        torch.testing.assert_close(merged[name], sum(s[name] for s in states) / 3, atol=1e-7, rtol=1e-6)
    # sharded exactly as save_pretrained shards the same model
    ours = smollm3.load_pretrained(out)
    resaved = smollm3.save_pretrained(ours, tmp_path / "resaved", max_shard_bytes=60_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert index == json.loads((resaved / "model.safetensors.index.json").read_text())
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.arange(40)[None] % 256
    with torch.no_grad():
        assert (theirs(ids).logits - ours(ids)).abs().max() <= 1e-4


def test_bfloat16_output_and_tokenizer_source(models, tmp_path):
    out = merge(_config(tmp_path, models[:2], [1, 1], dtype="bfloat16", tokenizer_source=str(models[1])),
                tmp_path / "out", progress=False)
    a, b, merged = _state(models[0]), _state(models[1]), _state(out)
    for name in a:
        assert merged[name].dtype == torch.bfloat16
        assert torch.equal(merged[name], ((a[name] + b[name]) / 2).bfloat16()), name
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert (out / "tokenizer.json").read_bytes() == (models[1] / "tokenizer.json").read_bytes()
    assert smollm3.load_pretrained(out).model.embed_tokens.weight.dtype == torch.bfloat16


def test_relative_paths_resolve_against_the_config(models, tmp_path):
    cfg = models[0].parent / "rel.yaml"
    cfg.write_text("models:\n  - model: m0\n  - model: m1\nmerge_method: linear\n")
    plan = read_merge_config(cfg)
    assert plan.models == [models[0].resolve(), models[1].resolve()] and plan.weights == [0.5, 0.5]


def test_cli_merge_writes_the_directory(models, tmp_path, capsys):
    cfg = _config(tmp_path, models[:2], [0.9, 0.1])
    assert main(["merge", str(cfg), "--out", str(tmp_path / "cli-out"), "--max-shard-size", "100KB"]) == 0
    assert "linear merge of 2 models: m0 0.9, m1 0.1" in capsys.readouterr().out
    assert (tmp_path / "cli-out" / "model.safetensors.index.json").exists()
    smollm3.load_pretrained(tmp_path / "cli-out")
    # a bad config is one line on stderr and exit status 1, not a traceback
    bad = _config(tmp_path, models[:2], merge_method="slerp")
    assert main(["merge", str(bad), "--out", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("smollm3 merge: error:") and "supported: linear" in err
    assert not (tmp_path / "nope").exists()


# ------------------------------------------------------------------------------------------------------------------
# bad inputs: each is refused before any arithmetic, with a message naming the input and the fix


def _refused(tmp_path, cfg, match):
    with pytest.raises(MergeError, match=match):
        merge(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("top,match", [
    ({"merge_metod": "linear"}, r"unknown top-level key 'merge_metod' \(did you mean 'merge_method'\?\)"),
    ({"merge_method": "ties"}, r"merge_method 'ties' is not supported; supported: linear"),
    ({"dtype": "float64"}, r"dtype 'float64' is not supported; use one of float32, bfloat16, float16"),
    ({"slices": []}, r"`slices`: layer-range \(slice\) merges are not supported"),
    ({"tokenizer_source": "union"}, r"tokenizer_source 'union' is not supported"),
    ({"normalize": True, "parameters": {"normalize": False}}, r"normalize is True at the top level but False"),
    ({"parameters": {"normalise": True}}, r"unknown top-level parameters key 'normalise' \(did you mean 'normalize'"),
])
def test_bad_top_level_config(models, tmp_path, top, match):
    _refused(tmp_path, _config(tmp_path, models[:2], [1, 1], **top), match)


def test_bad_model_entries(models, tmp_path):
    cfg = tmp_path / "c.yaml"
    for entries, match in [
        ([{"model": str(models[0]), "parameters": {"weigth": 1}}, {"model": str(models[1])}],
         r"models\[0\]: unknown per-model parameters key 'weigth' \(did you mean 'weight'\?\)"),
        ([{"model": str(models[0]), "paramters": {"weight": 1}}], r"unknown per-model key 'paramters' \(did you mean"),
        ([{"model": str(models[0]), "parameters": {"weight": 1}}, {"model": str(models[1])}],
         r"models \[1\] have no weight while others do"),
        ([{"model": str(models[0]), "parameters": {"weight": [0, 1]}}], r"weight must be a number"),
        ([{"model": str(models[0]), "parameters": {"weight": 1}}, {"model": str(models[1]), "parameters": {"weight": -1}}],
         r"the weights sum to 0.0"),
        ([{"model": str(tmp_path / "missing")}], r"missing is not a directory"),
        ([{"model": "HuggingFaceTB/SmolLM3-3B"}], r"if it is a Hub id, download it first"),
        ([], r"`models` must be a non-empty list"),
    ]:
        cfg.write_text(yaml.safe_dump({"models": entries, "merge_method": "linear"}))
        _refused(tmp_path, cfg, match)


def test_different_architectures_are_named(models, tmp_path):
    torch.manual_seed(5)
    wide = smollm3.save_pretrained(smollm3.build_model(smollm3.ModelConfig(**{**TINY, "intermediate_size": 128})),
                                   tmp_path / "wide")
    _refused(tmp_path, _config(tmp_path, [models[0], wide]), r"different architecture.*intermediate_size: 96 vs 128")


def test_missing_extra_and_misshapen_tensors_are_named(models, tmp_path):
    state = load_file(models[1] / "model.safetensors")
    broken = tmp_path / "broken"
    shutil.copytree(models[1], broken)
    del state["model.layers.2.mlp.up_proj.weight"]
    state["model.layers.9.extra.weight"] = torch.zeros(2)
    state["model.norm.weight"] = torch.zeros(32)
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MergeError) as e:
        merge(_config(tmp_path, [models[0], broken]), tmp_path / "out", progress=False)
    msg = str(e.value)
    assert "missing 1 tensor(s): model.layers.2.mlp.up_proj.weight" in msg
    assert "unexpected 1 tensor(s): model.layers.9.extra.weight" in msg
    assert "model.norm.weight: (32,) vs (64,)" in msg
    assert not (tmp_path / "out").exists()


def test_output_may_not_be_an_input(models, tmp_path):
    with pytest.raises(MergeError, match="is also an input"):
        linear_merge(models[:2], models[0], progress=False)
    assert (models[0] / "model.safetensors").exists()


def test_recipe_example_runs_once_its_placeholders_are_filled(models, tmp_path):
    from importlib.resources import files

    text = (files("smollm3") / "recipes" / "smollm3-3b" / "merge.yaml").read_text()
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(text.replace("/path/to/apo-soup", str(models[0])).replace("/path/to/mid-training", str(models[1])))
    plan = read_merge_config(cfg)
    assert plan.weights == [0.9, 0.1] and plan.dtype == "bfloat16" and plan.tokenizer_source == models[0].resolve()
