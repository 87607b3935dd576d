"""A recipe YAML (the format is in run.py's docstring): found by name or path, loaded and checked; the `{out}`,
`{data}` and `{stage:NAME}` placeholders resolved; where each stage's checkpoints are.

Everything here reads files only: the stages run in run.py, the batteries in evaluate.py, the report in report.py.
train.checkpointing (torch.distributed) is imported inside the two functions that need it, so that finding and
checking a recipe (`smollm3 recipe list`) does not import torch.
"""

from __future__ import annotations

import re
from pathlib import Path

from smollm3.config import ConfigError
from smollm3.yaml_file import iso_date, read_yaml_mapping

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
STAGE_KEYS = {"name", "train", "merge", "config", "from", "evaluate", "eval"}
TOP_KEYS = {"name", "description", "date", "build", "stages", "evaluation", "report"}


class RecipeError(ConfigError):
    """A recipe that cannot run as written; the message names the file or stage and the fix."""


def available() -> list[str]:
    """The names of the recipes that ship with smollm3 (folders of smollm3/recipes with a recipe.yaml)."""
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
    """The recipe at `path`, checked: known keys, one of `train:` / `merge:` per stage, `from:` naming an earlier one."""
    recipe = read_yaml_mapping(path, "recipe", "with a non-empty `stages:` list", RecipeError)
    if not isinstance(recipe.get("stages"), list) or not recipe["stages"]:
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
    try:
        recipe["date"] = iso_date(recipe.get("date"), "date")
    except ValueError as e:
        raise RecipeError(f"{path}: {e}") from None
    return recipe


# ------------------------------------------------------------------------------------------------------------------
# {out} / {data} / {stage:NAME} substitution, and where a stage's checkpoints are


def final_checkpoint(out: Path, stage: dict) -> Path:
    """The HF directory a finished stage leaves: the last checkpoint's export (checked against its manifest), or
    the merged model."""
    d = out / stage["name"]
    if "merge" in stage:
        return d / "model"
    from smollm3.train.checkpointing import list_checkpoints

    ckpts = list_checkpoints(d)
    if not ckpts:
        raise RecipeError(f"stage {stage['name']} has no checkpoint under {d}/checkpoints; has it run?")
    return _verified_export(out, stage, ckpts[-1][1])


def step_checkpoint(out: Path, stage: dict, step: int) -> Path:
    """The HF export of a training stage's checkpoint at `step` (an `evaluate:` step of the recipe), checked."""
    from smollm3.train.checkpointing import checkpoint_dir

    path = checkpoint_dir(out / stage["name"], step)
    if not (path / "hf").is_dir():
        raise RecipeError(f"stage {stage['name']}: no checkpoint at step {step} ({path / 'hf'}); its `evaluate:` "
                          "steps must be multiples of checkpoint.every, and checkpoint.keep must keep them")
    return _verified_export(out, stage, path)


def _verified_export(out: Path, stage: dict, checkpoint: Path) -> Path:
    """checkpoint/hf, once its files match the checkpoint's manifest: a later stage never starts from, and no
    evaluation reads, weights that changed on disk."""
    from smollm3.train.checkpointing import verify_checkpoint

    why = verify_checkpoint(checkpoint, under="hf")
    if why is not None:
        raise RecipeError(f"stage {stage['name']}: checkpoint {checkpoint} is damaged ({why}); delete it and "
                          f"{out / stage['name'] / 'DONE'}, then rerun: the stage resumes from its newest intact "
                          "checkpoint")
    return checkpoint / "hf"


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


def section(stage: dict, key: str, base: Path) -> dict:
    """A stage's `train:` or `merge:` settings: inline, or `{config: FILE, ...}` read from FILE (relative to `base`,
    the recipe's folder) with the other keys merged over it."""
    body = stage[key]
    if isinstance(body, dict) and "config" in body:
        loaded = read_yaml_mapping(base / body["config"], f"{key} config (stage {stage['name']}: `{key}.config`)",
                                   f"the stage's {key} settings", RecipeError)
        return _merge_dicts(loaded, {k: v for k, v in body.items() if k != "config"})
    if not isinstance(body, dict):
        raise RecipeError(f"stage {stage['name']}: `{key}:` must be a mapping (inline) or {{config: FILE}}")
    return body


def _merge_dicts(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
