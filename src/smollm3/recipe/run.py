"""`smollm3 recipe run NAME|FILE.yaml --out DIR`: every stage of a recipe in order, each resumable, then an
evaluation of every stage's checkpoint and a report.

A recipe YAML (see recipes/tiny/recipe.yaml, recipes/smollm3-3b/recipe.yaml):

    name: tiny
    date: 2025-07-08          # optional: the "Today Date" the SmolLM3 template prints, for every chat stage's data
                              # (data.date, where a stage sets none) and every chat evaluation; default: the day
                              # each stage starts, so a run started on another day trains on other tokens
    build: {...}              # optional: data the recipe makes for itself (recipe/build.py); the 3B recipe omits it
    stages:                   # in order
      - name: pretrain
        train: {...}          # a `smollm3 train` config inline, or `config: pretrain.yaml` (relative to the recipe)
        from: STAGE           # optional: start from that stage's final checkpoint (sets model.init_from)
        evaluate: {stage1: 120, stage2: 180}   # optional: also evaluate these intermediate steps, by name
        eval: base | chat     # which evaluation battery its checkpoints get (default: none)
      - name: merge
        merge: {...}          # a mergekit-style linear merge (inline or `config: merge.yaml`)
        eval: chat
    evaluation: {...}         # settings of the batteries (recipe/evaluate.py)

Strings may contain `{out}` (the run directory), `{data}` (OUT/data) and `{stage:NAME}` (that stage's final
checkpoint), resolved before the stage runs. Each finished stage leaves OUT/<stage>/DONE; an interrupted run
started again skips finished stages, and the trainer resumes an unfinished one from its last checkpoint. Finding,
loading and checking a recipe, the placeholders and the checkpoint paths are in spec.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import yaml

from smollm3.merge import merge
from smollm3.recipe.build import build_data
from smollm3.recipe.evaluate import evaluate_stages
from smollm3.recipe.report import write_report
from smollm3.recipe.spec import RecipeError, final_checkpoint, find_recipe, load_recipe, resolve, section
from smollm3.train.config import train_config_from_dict
from smollm3.train.trainer import train


# ------------------------------------------------------------------------------------------------------------------
# stages


def run_train_stage(stage: dict, out: Path, stages: dict, base: Path, seed: int = 0, date: str | None = None) -> None:
    raw = resolve(section(stage, "train", base), out, stages)
    raw["out_dir"] = str(out / stage["name"])
    if date and isinstance(raw.get("data"), dict) and raw["data"].get("kind") in ("sft", "preference"):
        raw["data"].setdefault("date", date)
    if seed:  # another run: its own initialisation (train.seed) and data order (data.seed)
        for part in ("train", "data"):
            sub = raw.setdefault(part, {})
            sub["seed"] = sub.get("seed", 0) + seed
    if stage.get("from"):
        model = raw.setdefault("model", {})
        model.pop("preset", None)
        model["init_from"] = str(final_checkpoint(out, stages[stage["from"]]))
    train(train_config_from_dict(raw, f"stage {stage['name']}"))


def run_merge_stage(stage: dict, out: Path, stages: dict, base: Path) -> None:
    body = resolve(section(stage, "merge", base), out, stages)
    d = out / stage["name"]
    d.mkdir(parents=True, exist_ok=True)
    (d / "merge.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    merge(d / "merge.yaml", d / "model")


def check_seed(out: Path, seed: int) -> None:
    """A run directory holds one run: resuming it with another --seed would mix two runs' checkpoints."""
    f = out / "seed.json"
    if f.exists():
        before = json.loads(f.read_text())["seed"]
    elif (out / "timings.json").exists():  # begun before runs recorded a seed: the recipe's own
        before = 0
    else:
        before = seed
    if before != seed:
        raise RecipeError(f"{out} holds a run started with --seed {before}; resume it with --seed {before}, "
                          f"or give --seed {seed} its own --out")
    f.write_text(json.dumps({"seed": seed}) + "\n")


def describe_machine() -> str:
    """"NVIDIA H200", "2 x NVIDIA H200" (under torchrun) or "a 2-core CPU"."""
    if torch.cuda.is_available():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return (f"{world} × " if world > 1 else "") + torch.cuda.get_device_name(0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"a {cores}-core CPU"


def run_recipe(name: str, out: str | Path, *, evaluate: bool = True, seed: int = 0, log=print) -> dict:
    """Run recipe `name` (see find_recipe) into `out`; returns the report's data (also OUT/report.json).
    `seed` is added to the data build's seed and to every training stage's: another run of the same recipe with
    its own initialisation, data order and held-out text split (the synthetic generators keep their seeds)."""
    path = find_recipe(name)
    recipe = load_recipe(path)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    check_seed(out, seed)
    if seed and recipe.get("build"):
        recipe["build"] = {**recipe["build"], "seed": recipe["build"].get("seed", 0) + seed}
    (out / "recipe.yaml").write_text(path.read_text())  # what ran, beside what it made
    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    machine = json.loads((out / "machine.json").read_text()) if (out / "machine.json").exists() else {}

    def timed(key, fn, *args):
        t0 = time.perf_counter()
        fn(*args)
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
        (out / "timings.json").write_text(json.dumps(timings, indent=1))
        machine[key] = describe_machine()  # where each step ran: the report says so
        (out / "machine.json").write_text(json.dumps(machine, indent=1))

    # under torchrun every rank runs this function: the training stages are collective, the rest is rank 0's
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if recipe.get("build"):
        if world > 1 and not (out / "data" / "chat" / "done").exists():
            raise RecipeError(f"{path}: the `build:` step runs in one process; run `smollm3 recipe run {name} --out "
                              f"{out} --no-eval` without torchrun until the first training stage starts, then resume")
        if rank == 0:
            timed("build", build_data, out, recipe["build"], log)
    stages = {s["name"]: s for s in recipe["stages"]}
    for stage in recipe["stages"]:
        done = out / stage["name"] / "DONE"
        if done.exists():
            log(f"stage {stage['name']}: done already")
            continue
        if "merge" in stage and rank != 0:
            continue
        log(f"stage {stage['name']}")
        if "train" in stage:
            timed(stage["name"], run_train_stage, stage, out, stages, path.parent, seed, recipe.get("date"))
        else:
            timed(stage["name"], run_merge_stage, stage, out, stages, path.parent)
        if rank == 0:
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text("ok\n")
    report = {"recipe": recipe.get("name", path.stem), "out": str(out), "seed": seed, "timings": timings,
              "machine": machine}
    if evaluate and recipe.get("evaluation") and rank == 0:
        t0 = time.perf_counter()
        results = evaluate_stages(recipe, out, log)
        timings["evaluation"] = time.perf_counter() - t0
        machine["evaluation"] = describe_machine()
        (out / "machine.json").write_text(json.dumps(machine, indent=1))
        report |= {"results": results, "timings": timings}
        report["claims"] = write_report(recipe, out, report)
        log(f"report: {out / 'report.md'}")
    return report
