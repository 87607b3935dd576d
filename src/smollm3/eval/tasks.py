"""Evaluation task definitions: which tasks exist, how their items are read, prompted and checked.

Kinds:
  mc   multiple-choice log-likelihood in cloze form (lighteval's `_cf` tasks) over a JSONL file of
       {"query": str, "choices": [str, ...], "gold": int}; named `mc:PATH.jsonl`.
  gen  generative exact match on the project's synthetic generators (arithmetic, word_problem): the answer is the
       final number after the last </think> (GSM8K-style).
  ppl  perplexity and bits-per-byte over a JSONL file of {"text": str}; named `ppl:PATH.jsonl`, or `ppl:DIR`: every
       *.jsonl under DIR is its own task `ppl:DIR/<relative path without .jsonl>` (per language and domain).
  ruler  RULER-style long-context retrieval (ruler.py, smollm3.data.synthetic_long); named `ruler:KIND:LENGTH`.
  humaneval  HumanEval pass@1, completions run in a sandbox (humaneval.py, sandbox.py); named `humaneval`.
  tool  tool-call correctness on the synthetic tool conversations (toolcall.py); named `tool_xml`, `tool_python`.
See docs/eval.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from smollm3.chat import render_chat
from smollm3.data import synthetic
from smollm3.data.synthetic_long import KINDS as RULER_KINDS  # the kinds live with their generator


class EvalError(ValueError):
    """Bad evaluation input: an unknown task, a malformed item, an unusable option."""


@dataclass
class Task:
    name: str  # as given on the command line
    kind: str  # "mc" | "gen" | "ppl" | "humaneval" | "tool" | "ruler"
    path: Path | None = None  # the JSONL file of mc and ppl tasks (a directory for ppl before expand())
    generator: str | None = None  # the synthetic generator of gen, tool and ruler tasks
    length: int | None = None  # ruler: tokens of the whole sequence (prompt + answer)


# generative tasks: task name -> smollm3.data.synthetic generator (both check answers by their final number)
GENERATIVE = {"arithmetic": "arithmetic", "word_problem": "word_problem"}
TOOL_TASKS = ("tool_xml", "tool_python")  # also the names of their synthetic generators
GENERATING_KINDS = ("gen", "humaneval", "tool", "ruler")  # the kinds that run on the batched engine
FILE_KINDS = {"mc": "multiple-choice cloze over a JSONL of {query, choices, gold}",
              "ppl": "perplexity / bits-per-byte over a JSONL of {text}, or every *.jsonl under a directory"}
RULER_USAGE = "ruler:KIND:LENGTH (e.g. ruler:niah_single:4k; LENGTH in tokens: 1024, 4k, 128k)"


def available() -> list[str]:
    return (list(GENERATIVE) + ["humaneval", *TOOL_TASKS] + [f"{kind}:FILE.jsonl" for kind in FILE_KINDS]
            + ["ppl:DIR", "ruler:KIND:LENGTH"])


def parse_length(text: str) -> int:
    """Tokens from `1024`, `4k` or `128k` (k = 1024, as context lengths are counted: 64k = 65536)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kK]?)\s*", text)
    if not m or int(m.group(1)) == 0:
        raise EvalError(f"length {text!r} is not a token count; write it as 1024, 4k or 128k")
    return int(m.group(1)) * (1024 if m.group(2) else 1)


def _ruler_task(name: str) -> Task:
    parts = name.split(":")
    if len(parts) != 3:
        raise EvalError(f"task {name!r}: expected {RULER_USAGE}; KIND is one of {', '.join(RULER_KINDS)}")
    _, kind, length = parts
    if kind not in RULER_KINDS:
        raise EvalError(f"task {name!r}: unknown kind {kind!r}; KIND is one of {', '.join(RULER_KINDS)}")
    try:
        n = parse_length(length)
    except EvalError as e:
        raise EvalError(f"task {name!r}: {e}") from None
    return Task(name, "ruler", generator=kind, length=n)


def get_task(name: str) -> Task:
    """A task from its command-line name; EvalError listing the available ones when it is unknown."""
    name = name.strip()
    if name in GENERATIVE:
        return Task(name, "gen", generator=GENERATIVE[name])
    if name == "humaneval":
        return Task(name, "humaneval")
    if name in TOOL_TASKS:
        return Task(name, "tool", generator=name)
    kind, sep, path = name.partition(":")
    if sep and kind == "ruler":
        return _ruler_task(name)
    if sep and kind in FILE_KINDS:
        if not path:
            raise EvalError(f"task {name!r} needs a file: {kind}:FILE.jsonl")
        if kind == "ppl" and Path(path).is_dir():
            return Task(name, kind, path=Path(path))
        if not Path(path).is_file():
            raise EvalError(f"task {name!r}: no such file {path}" + (" or directory" if kind == "ppl" else ""))
        return Task(name, kind, path=Path(path))
    raise EvalError(f"unknown task {name!r}; available tasks: {', '.join(available())}")


def expand(tasks: list[Task]) -> list[Task]:
    """Each `ppl:DIR` task becomes one task per *.jsonl file under DIR (recursively, sorted, hidden files and
    directories skipped), named `ppl:DIR/<relative path without .jsonl>`: a held-out split laid out as
    `smollm3 corpus build` writes it (OUT/<lang>/<source>.jsonl) scores per language and domain."""
    out = []
    for task in tasks:
        if task.kind != "ppl" or task.path is None or not task.path.is_dir():
            out.append(task)
            continue
        root, base = task.path, task.name.partition(":")[2].rstrip("/\\")
        files = [f for f in sorted(root.rglob("*.jsonl"))
                 if not any(part.startswith(".") for part in f.relative_to(root).parts)]
        if not files:
            raise EvalError(f"task {task.name!r}: no *.jsonl files under {root}")
        out += [replace(task, name=f"ppl:{base}/{f.relative_to(root).with_suffix('').as_posix()}", path=f)
                for f in files]
    return out


def parse_tasks(spec: str) -> list[Task]:
    names = [n for n in spec.split(",") if n.strip()]
    if not names:
        raise EvalError(f"no tasks given; available tasks: {', '.join(available())}")
    return expand([get_task(n) for n in names])


# ------------------------------------------------------------------------------------------------------------------
# JSONL items (every error names file:line, so a bad item in a 10k-line file can be found)


def _read_jsonl(path: Path, limit: int | None, check) -> list:
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(items) >= limit:
                break
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise EvalError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            items.append(check(obj, where))
    if not items:
        raise EvalError(f"{path}: no items")
    return items


def _check_mc(obj: dict, where: str) -> dict:
    for key in ("query", "choices", "gold"):
        if key not in obj:
            raise EvalError(f"{where}: missing key {key!r} (an item is {{\"query\", \"choices\", \"gold\"}})")
    query, choices, gold = obj["query"], obj["choices"], obj["gold"]
    if not isinstance(query, str) or not query:
        raise EvalError(f"{where}: 'query' must be a non-empty string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise EvalError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        raise EvalError(f"{where}: 'gold' must be an index into 'choices' (0..{len(choices) - 1}), got {gold!r}")
    return {"query": query, "choices": choices, "gold": gold}


def _check_text(obj: dict, where: str) -> str:
    if not isinstance(obj.get("text"), str) or not obj["text"]:
        raise EvalError(f"{where}: needs a non-empty string 'text'")
    return obj["text"]


def load_mc(path: Path, limit: int | None = None) -> list[dict]:
    return _read_jsonl(Path(path), limit, _check_mc)


def load_texts(path: Path, limit: int | None = None) -> list[str]:
    return _read_jsonl(Path(path), limit, _check_text)


# ------------------------------------------------------------------------------------------------------------------
# generative items

DEFAULT_GEN_ITEMS = 50


def gen_items(task: Task, limit: int | None, think: bool) -> list[dict]:
    """Synthetic records (TRL-style messages, the last one the reference answer); seed 0, so always the same set."""
    return synthetic.generate(task.generator, limit or DEFAULT_GEN_ITEMS, seed=0, think=think)


def extract_answer(response: str) -> str | None:
    """The final number of the text after the last </think> (the whole response without one), as a string."""
    n = synthetic.final_number(response)
    return None if n is None else str(n)


def is_correct(item: dict, response: str) -> bool:
    return synthetic.check(item, response)


def render_prompt(messages: list[dict], template: str, mode: str, date=None) -> str:
    """The prompt text for `messages` in `mode`. Any template gets enable_thinking; the SmolLM3 template acts on it
    (no_think prefills an empty <think>\\n\\n</think>\\n), plain ChatML templates such as SmolLM2's ignore it.
    `date`: the "Today Date" the SmolLM3 template prints (default today)."""
    return render_chat(messages, template=template, enable_thinking=mode == "think", add_generation_prompt=True,
                       date=date)
