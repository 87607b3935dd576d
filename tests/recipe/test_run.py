"""`smollm3 recipe run`: recipe files, placeholders, and a shortened tiny recipe end to end (every stage, the
evaluation, the report, a resumed rerun)."""

import json
import sysconfig
from pathlib import Path

import pytest
import torch
import yaml

from smollm3.cli import main
from smollm3.recipe.spec import RecipeError, available, find_recipe, load_recipe, resolve

SENTENCES = {
    "en": "The committee met on Tuesday to review the budget and agreed to publish the report next month.",
    "fr": "Le comité s'est réuni mardi pour examiner le budget et a convenu de publier le rapport le mois prochain.",
    "es": "El comité se reunió el martes para revisar el presupuesto y acordó publicar el informe el mes próximo.",
    "de": "Der Ausschuss traf sich am Dienstag, um den Haushalt zu prüfen, und will den Bericht nächsten Monat zeigen.",
    "it": "Il comitato si è riunito martedì per esaminare il bilancio e ha deciso di pubblicare la relazione.",
    "pt": "O comitê reuniu-se na terça-feira para rever o orçamento e decidiu publicar o relatório no próximo mês.",
}


def test_shipped_recipes_load():
    assert {"tiny", "smollm3-3b"} <= set(available())
    for name in available():
        recipe = load_recipe(find_recipe(name))
        assert [s["name"] for s in recipe["stages"]][-1] == "merge"


def test_bad_recipes_are_named(tmp_path):
    with pytest.raises(RecipeError, match="no recipe 'nope'.*tiny"):
        find_recipe("nope")
    cases = [({"stages": []}, "non-empty `stages:`"),
             ({"stages": [{"name": "a", "train": {}}], "stagez": 1}, "unknown key.*stagez"),
             ({"stages": [{"name": "a", "train": {}, "merge": {}}]}, "exactly one of `train:` and `merge:`"),
             ({"stages": [{"name": "a", "train": {}, "from": "b"}, {"name": "b", "train": {}}]}, "names no earlier"),
             ({"stages": [{"name": "a", "train": {}, "evals": "base"}]}, "unknown key.*evals"),
             ({"stages": [{"name": "a", "train": {}}], "date": "2025-7-8x"}, "date '2025-7-8x' is not a date; "
              "write it as YYYY-MM-DD")]
    for i, (body, message) in enumerate(cases):
        path = tmp_path / f"r{i}.yaml"
        path.write_text(yaml.safe_dump(body))
        with pytest.raises(RecipeError, match=message):
            load_recipe(path)


def test_placeholders_resolve(tmp_path):
    (tmp_path / "m" ).mkdir()
    stages = {"m": {"name": "m", "merge": {}}}
    got = resolve({"a": ["{out}/x", "{data}/y"], "b": "{stage:m}", "c": 3}, tmp_path, stages)
    assert got == {"a": [f"{tmp_path}/x", f"{tmp_path}/data/y"], "b": f"{tmp_path}/m/model", "c": 3}
    with pytest.raises(RecipeError, match="no stage of that name"):
        resolve("{stage:zz}", tmp_path, stages)


# ---- the shortened tiny recipe


def _corpus(root: Path) -> Path:
    """Text in the layout `smollm3 corpus build` writes: six languages (varied sentences) and real Python code."""
    for lang, sentence in SENTENCES.items():
        words = sentence.split()
        docs = []
        for d in range(30):
            paras = [" ".join(words[(d + p) % len(words):] + words[:(d + p) % len(words)]) for p in range(6)]
            docs.append({"text": "\n\n".join(f"{p} ({d}.{i})" for i, p in enumerate(paras))})
        (root / lang).mkdir(parents=True)
        (root / lang / "doc.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in docs))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [{"text": (stdlib / name).read_text()} for name in ("bisect.py", "colorsys.py", "keyword.py", "heapq.py")]
    (root / "code").mkdir()
    (root / "code" / "python.jsonl").write_text("".join(json.dumps(x) + "\n" for x in code))
    return root


def shortened_tiny(tmp_path: Path) -> Path:
    """recipes/tiny with every count and step cut to seconds: the same stages, data kinds and objectives."""
    r = yaml.safe_load(find_recipe("tiny").read_text())
    b = r["build"]
    b["corpus"] = {"dir": str(_corpus(tmp_path / "corpus")), "piece_chars": 400, "heldout_chars": 1200,
                   "code_chars": 20000}
    b["tokenizer"] = {"vocab_size": 768}
    b["math"] = {"documents": 300, "ops": 2}
    b["retrieval"]["documents"] = [16, 8, 4]
    b["chat"] = {"mid_examples": 60, "sft_math": 40, "sft_tools": 20, "sft_memory": 10, "preference_pairs": 24,
                 "preference_tools": 4, "math_heldout": 4, "sft_retrieval": 4, "system": "Be brief."}
    stages = {s["name"]: s for s in r["stages"]}
    pre = stages["pretrain"]["train"]
    # this test's tokenizer (768 ids, a few pages of text) spends ~1,500 tokens on a tool prompt: room for it
    pre["model"]["overrides"] |= {"vocab_size": 768, "bos_token_id": 512, "eos_token_id": 524, "pad_token_id": 516,
                                  "max_position_embeddings": 2048}
    pre["train"] |= {"steps": 12, "micro_batch": 4}
    pre["data"]["stages"][1]["start_tokens"] = 6 * 4 * 256
    pre["data"]["stages"][2]["start_tokens"] = 9 * 4 * 256
    pre["optim"]["warmup_steps"] = 2
    pre["checkpoint"] = {"every": 3, "keep": 10}
    stages["pretrain"]["evaluate"] = {"stage1": 6, "stage2": 9}
    for name, steps in (("long_context_1", 2), ("long_context_2", 2), ("mid_training", 2), ("sft", 3), ("apo", 2)):
        t = stages[name]["train"]
        t["train"] |= {"steps": steps, "micro_batch": min(t["train"]["micro_batch"], 2)}
        t["optim"]["warmup_steps"] = 1
        t["checkpoint"] = {"every": steps, "keep": 1}
    ev = r["evaluation"]
    ev["base"]["max_docs"] = 1
    ev["base"]["retrieval"]["n"] = 2
    ev["chat"]["math"]["max_tokens"] = 12
    ev["chat"]["tools"] = {"n": 2, "max_tokens": 12}
    ev["chat"]["retrieval"] = {"kinds": ["niah_single"], "lengths": [1024], "n": 2, "system": "Be brief."}
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(r, sort_keys=False))
    return path


def test_shortened_tiny_recipe_end_to_end(tmp_path, capsys):
    recipe, out = shortened_tiny(tmp_path), tmp_path / "run"
    assert main(["recipe", "run", str(recipe), "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    results = report["results"]
    labels = ["pretrain/stage1", "pretrain/stage2", "pretrain", "long_context_1", "long_context_2", "mid_training",
              "sft", "apo", "merge"]
    assert list(results) == labels
    # per-language and per-domain validation loss on every checkpoint; training lowers it
    heldout = results["pretrain"]["heldout"]
    assert set(heldout) == {"en/web", "fr/web", "es/web", "de/web", "it/web", "pt/web", "code/python", "math/math"}
    def mean_loss(label):
        return sum(v["loss"] for v in results[label]["heldout"].values()) / len(heldout)

    assert mean_loss("pretrain") < mean_loss("pretrain/stage1")
    assert set(results["long_context_2"]["retrieval"]) == {"niah_single@256", "niah_single@512",
                                                           "niah_single@1024", "niah_single@2048+yarn2"}
    for label in ("sft", "apo", "merge"):
        r = results[label]
        assert set(r["math"]) == {"think", "no_think", "n"} and set(r["tools"]) == {"tool_xml", "tool_python"}
        assert set(r["plain_text"]) == {"entropy", "template_mass"}  # explains raw-text loss above uniform
        assert set(r["retrieval"]) == {"niah_single@1024"}  # asked as a chat turn (evaluation.chat.retrieval)
        assert {"margin", "chosen_wins"} <= set(r["preference"])
    # the merged model is 0.9 APO + 0.1 long-context, tensor for tensor
    from safetensors.torch import load_file

    def tensors(d):
        return {k: v for f in sorted(Path(d).glob("*.safetensors")) for k, v in load_file(f).items()}

    apo = next((out / "apo" / "checkpoints").glob("step_*")) / "hf"
    lc = next((out / "long_context_2" / "checkpoints").glob("step_*")) / "hf"
    merged, a, b = tensors(out / "merge" / "model"), tensors(apo), tensors(lc)
    for k in merged:  # fp32 sums in another order: equal to rounding
        assert torch.allclose(merged[k], 0.9 * a[k].float() + 0.1 * b[k].float(), rtol=1e-5, atol=1e-6), k
    # the report: a table per battery, the claims checked, plots
    md = (out / "report.md").read_text()
    assert "## The recipe's claims, measured" in md and "## Validation loss" in md and "## Retrieval accuracy" in md
    assert md.split("\n")[2].startswith("This run trained a ") and "the `tiny` recipe" in md  # the opening paragraph
    assert [c["number"] for c in report["claims"]] == [1, 2, 3, 4, 5, 6]
    for c in report["claims"]:  # three states; only "holds" says yes
        assert c["holds"] is {"holds": True, "does not hold": False}.get(c["status"], None), c
    assert report["model"]["vocab_size"] == 768 and report["model"]["params"] > 0
    assert json.loads((out / "machine.json").read_text()).keys() >= {"build", "pretrain", "merge"}
    for png in ("training_loss", "validation_loss", "retrieval", "math_modes"):
        assert (out / "plots" / f"{png}.png").stat().st_size > 1000
    assert "recipe tiny finished" in printed
    # the recipe's date is every chat stage's data.date: a rerun on another day trains on the same tokens
    for stage in ("mid_training", "sft", "apo"):
        assert yaml.safe_load((out / stage / "config.yaml").read_text())["data"]["date"] == "2025-07-08"

    # a rerun finds every stage done and every evaluation cached
    before = {p: p.stat().st_mtime_ns for p in (out / "eval").glob("*.json")}
    assert main(["recipe", "run", str(recipe), "--out", str(out)]) == 0
    assert printed.count("done already") == 0 and capsys.readouterr().out.count("done already") == 7
    assert {p: p.stat().st_mtime_ns for p in (out / "eval").glob("*.json")} == before

    # an HF export that changed on disk is refused, naming the checkpoint, before a stage or evaluation reads it
    from smollm3.recipe.spec import final_checkpoint

    shard = next(lc.glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(RecipeError, match=r"long_context_2: checkpoint .* is damaged \(.* does not match its checksum"):
        final_checkpoint(out, {"name": "long_context_2", "train": {}})
    assert main(["recipe", "run", str(recipe), "--out", str(out)]) == 1
    assert "is damaged" in capsys.readouterr().err


def test_seed_offsets_every_stage_and_owns_the_run_directory(tmp_path, monkeypatch):
    """--seed N adds N to each training stage's train.seed and data.seed; a directory keeps the seed it began with."""
    import smollm3.recipe.run as run

    seen = []
    monkeypatch.setattr(run, "train", lambda cfg: seen.append((cfg.train.seed, cfg.data.seed)))
    stage = {"model": {"preset": "tiny"}, "data": {"paths": ["{data}/x"], "seed": 5},
             "train": {"steps": 1, "seed": 2}}
    recipe = {"name": "seeded", "stages": [{"name": "a", "train": stage},
                                          {"name": "b", "train": {**stage, "data": {"paths": ["{data}/x"]}}}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    report = run.run_recipe(str(path), tmp_path / "run", seed=10, log=lambda m: None)
    assert seen == [(12, 15), (12, 10)] and report["seed"] == 10
    with pytest.raises(RecipeError, match=r"started with --seed 10; resume it with --seed 10"):
        run.run_recipe(str(path), tmp_path / "run", log=lambda m: None)
    old = tmp_path / "old"  # a directory begun before runs recorded their seed began with the recipe's own
    old.mkdir()
    (old / "timings.json").write_text("{}")
    with pytest.raises(RecipeError, match=r"started with --seed 0"):
        run.run_recipe(str(path), old, seed=1, log=lambda m: None)
