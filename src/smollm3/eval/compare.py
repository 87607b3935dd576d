"""`smollm3 eval compare A.json B.json`: per-task metric deltas (B - A) between two results files."""

from __future__ import annotations

import json
from pathlib import Path

from smollm3.eval.tasks import EvalError


def load_results(path: str | Path) -> dict:
    """A results file written by `smollm3 eval`; EvalError naming the file when it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"no such results file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalError(f"{path}: not a results file (not valid JSON: {e})") from None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or not all(isinstance(v, dict) for v in results.values()):
        raise EvalError(f"{path}: not a results file (expected an object with 'results': {{task: {{metric: value}}}},"
                        " as `smollm3 eval --out` writes)")
    return data


def _metrics(scores: dict) -> dict:
    # "n" is a count and "length" (ruler) a setting, not scores; "kind" is a label
    return {k: v for k, v in scores.items() if k not in ("kind", "n", "length") and isinstance(v, (int, float))
            and not isinstance(v, bool)}


def compare(a: dict, b: dict) -> list[dict]:
    """One row per (task, metric) found in either file, A's tasks first; a side without it has value None."""
    ra, rb = a["results"], b["results"]
    rows = []
    for task in list(ra) + [t for t in rb if t not in ra]:
        ma, mb = _metrics(ra.get(task, {})), _metrics(rb.get(task, {}))
        for metric in list(ma) + [m for m in mb if m not in ma]:
            va, vb = ma.get(metric), mb.get(metric)
            rows.append({"task": task, "metric": metric, "a": va, "b": vb,
                         "delta": None if va is None or vb is None else vb - va})
    return rows


def format_compare(rows: list[dict], name_a: str = "A", name_b: str = "B") -> str:
    def fmt(v, sign=False):
        return "-" if v is None else f"{v:+.4f}" if sign else f"{v:.4f}"

    table = [("task", "metric", name_a, name_b, "delta")]
    table += [(r["task"], r["metric"], fmt(r["a"]), fmt(r["b"]), fmt(r["delta"], sign=True)) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)
