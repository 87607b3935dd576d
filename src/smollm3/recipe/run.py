"""`smollm3 recipe run NAME|FILE.yaml --out DIR`: every stage of a recipe in order, each resumable, then an
evaluation of every stage's checkpoint and a report.

A recipe YAML (see recipes/tiny/recipe.yaml, recipes/smollm3-3b/recipe.yaml):

    name: tiny
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
started again skips finished stages, and the trainer resumes an unfinished one from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import yaml

from smollm3.config import ConfigError

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
STAGE_KEYS = {"name", "train", "merge", "config", "from", "evaluate", "eval"}
TOP_KEYS = {"name", "description", "build", "stages", "evaluation", "report"}


class RecipeError(ConfigError):
    pass


def available() -> list[str]:
    return sorted(p.parent.name for p in RECIPES.glob("*/recipe.yaml"))


def find_recipe(name: str) -> Path:
    """A recipe by name (a folder of smollm3/recipes with a recipe.yaml) or by path (a YAML file or its folder)."""
    p = Path(name)
    if p.is_dir() and (p / "recipe.yaml").is_file():
        return p / "recipe.yaml"
    if p.is_file():
        return p
    if (RECIPES / name / "recipe.yaml").is_file():
        return RECIPES / name / "recipe.yaml"
    raise RecipeError(f"no recipe {name!r}: give a recipe YAML file, or one of {', '.join(available())}")


def load_recipe(path: Path) -> dict:
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("stages"), list) or not recipe["stages"]:
        raise RecipeError(f"{path}: a recipe is a mapping with a non-empty `stages:` list")
    unknown = set(recipe) - TOP_KEYS
    if unknown:
        raise RecipeError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(TOP_KEYS))}")
    names = set()
    for i, stage in enumerate(recipe["stages"]):
        where = f"{path}: stage {i} ({stage.get('name', '?') if isinstance(stage, dict) else stage!r})"
        if not isinstance(stage, dict) or "name" not in stage:
            raise RecipeError(f"{where}: each stage is a mapping with a `name`")
        unknown = set(stage) - STAGE_KEYS
        if unknown:
            raise RecipeError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(STAGE_KEYS))}")
        if ("train" in stage) + ("merge" in stage) != 1:
            raise RecipeError(f"{where}: give exactly one of `train:` and `merge:`")
        if stage.get("from") and stage["from"] not in names:
            raise RecipeError(f"{where}: `from: {stage['from']}` names no earlier stage")
        names.add(stage["name"])
    return recipe


# ------------------------------------------------------------------------------------------------------------------
# {out} / {data} / {stage:NAME} substitution, and where a stage's checkpoints are


def final_checkpoint(out: Path, stage: dict) -> Path:
    """The HF directory a finished stage leaves: the last checkpoint's export, or the merged model."""
    d = out / stage["name"]
    if "merge" in stage:
        return d / "model"
    from smollm3.train.checkpointing import list_checkpoints

    ckpts = list_checkpoints(d)
    if not ckpts:
        raise RecipeError(f"stage {stage['name']} has no checkpoint under {d}/checkpoints; has it run?")
    return ckpts[-1][1] / "hf"


def step_checkpoint(out: Path, stage: dict, step: int) -> Path:
    from smollm3.train.checkpointing import checkpoint_dir

    path = checkpoint_dir(out / stage["name"], step) / "hf"
    if not path.is_dir():
        raise RecipeError(f"stage {stage['name']}: no checkpoint at step {step} ({path}); its `evaluate:` steps must "
                          "be multiples of checkpoint.every, and checkpoint.keep must keep them")
    return path


def resolve(value, out: Path, stages: dict):
    """Substitute {out}, {data} and {stage:NAME} in every string of a nested structure."""
    if isinstance(value, dict):
        return {resolve(k, out, stages): resolve(v, out, stages) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, out, stages) for v in value]
    if not isinstance(value, str):
        return value

    def stage_path(m):
        if m.group(1) not in stages:
            raise RecipeError(f"{{stage:{m.group(1)}}}: no stage of that name")
        return str(final_checkpoint(out, stages[m.group(1)]))

    value = re.sub(r"\{stage:([^}]+)\}", stage_path, value)
    return value.replace("{out}", str(out)).replace("{data}", str(out / "data"))


def _section(stage: dict, key: str, base: Path) -> dict:
    body = stage[key]
    if isinstance(body, dict) and "config" in body:
        path = base / body["config"]
        extra = {k: v for k, v in body.items() if k != "config"}
        loaded = yaml.safe_load(path.read_text()) if path.is_file() else None
        if not isinstance(loaded, dict):
            raise RecipeError(f"stage {stage['name']}: {key}.config {path} is missing or not a YAML mapping")
        return _merge_dicts(loaded, extra)
    if not isinstance(body, dict):
        raise RecipeError(f"stage {stage['name']}: `{key}:` must be a mapping (inline) or {{config: FILE}}")
    return body


def _merge_dicts(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ------------------------------------------------------------------------------------------------------------------
# stages


def run_train_stage(stage: dict, out: Path, stages: dict, base: Path) -> None:
    from smollm3.train.config import _build, TrainConfig
    from smollm3.train.trainer import train

    raw = resolve(_section(stage, "train", base), out, stages)
    raw["out_dir"] = str(out / stage["name"])
    if stage.get("from"):
        model = raw.setdefault("model", {})
        model.pop("preset", None)
        model["init_from"] = str(final_checkpoint(out, stages[stage["from"]]))
    cfg = _build(TrainConfig, raw, f"stage {stage['name']}")
    train(cfg)


def run_merge_stage(stage: dict, out: Path, stages: dict, base: Path) -> None:
    from smollm3.merge import merge

    body = resolve(_section(stage, "merge", base), out, stages)
    d = out / stage["name"]
    d.mkdir(parents=True, exist_ok=True)
    (d / "merge.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    merge(d / "merge.yaml", d / "model")


def describe_machine() -> str:
    """"NVIDIA H200", "2 x NVIDIA H200" (under torchrun) or "a 2-core CPU"."""
    import torch

    if torch.cuda.is_available():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return (f"{world} × " if world > 1 else "") + torch.cuda.get_device_name(0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"a {cores}-core CPU"


def run_recipe(name: str, out: str | Path, *, evaluate: bool = True, log=print) -> dict:
    """Run recipe `name` (see find_recipe) into `out`; returns the report's data (also OUT/report.json)."""
    path = find_recipe(name)
    recipe = load_recipe(path)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
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
        from smollm3.recipe.build import build_data

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
        runner = run_train_stage if "train" in stage else run_merge_stage
        timed(stage["name"], runner, stage, out, stages, path.parent)
        if rank == 0:
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text("ok\n")
    report = {"recipe": recipe.get("name", path.stem), "out": str(out), "timings": timings, "machine": machine}
    if evaluate and recipe.get("evaluation") and rank == 0:
        from smollm3.recipe.evaluate import evaluate_stages
        from smollm3.recipe.report import write_report

        t0 = time.perf_counter()
        results = evaluate_stages(recipe, out, log)
        timings["evaluation"] = time.perf_counter() - t0
        machine["evaluation"] = describe_machine()
        (out / "machine.json").write_text(json.dumps(machine, indent=1))
        report |= {"results": results, "timings": timings}
        report["claims"] = write_report(recipe, out, report)
        log(f"report: {out / 'report.md'}")
    return report
