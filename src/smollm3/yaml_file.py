"""Reading a YAML config file (training configs, recipes, merge configs): its top-level mapping, or one line that
names the file and what to fix."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import yaml

from smollm3.config import ConfigError


def read_yaml_mapping(path: str | os.PathLike, what: str, expected: str,
                      error: type[ValueError] = ConfigError) -> dict:
    """The top-level mapping of the YAML file at `path` ({} for an empty file). `what` names the file in messages
    ("config file", "recipe"), `expected` says what its top level holds ("sections such as model:, data:, train:").
    A missing file is FileNotFoundError; bad YAML or a top level that is not a mapping is `error` (the caller's own
    ValueError class)."""
    path = Path(path)
    if not path.is_file():
        hint = " (that is a directory; give the YAML file in it)" if path.is_dir() else ""
        raise FileNotFoundError(f"{path}: no such {what}{hint}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text; a {what} is a YAML file") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({_first_problem(e)}); fix the syntax there") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{path}: the top level must be a mapping ({expected}), got a {type(raw).__name__}")
    return raw


def iso_date(value, key: str) -> str | None:
    """A config's date as YYYY-MM-DD (None stays None): YAML reads an unquoted 2025-07-08 as a date, a quoted one as
    a string; anything else is ValueError naming `key`."""
    if isinstance(value, date):
        value = value.isoformat()
    try:
        return None if value is None else date.fromisoformat(value).isoformat()
    except (TypeError, ValueError):
        raise ValueError(f"{key} {value!r} is not a date; write it as YYYY-MM-DD") from None


def _first_problem(e: yaml.YAMLError) -> str:
    # PyYAML's own message spans several lines (context, problem, a caret under the text); keep the problem and where
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem
