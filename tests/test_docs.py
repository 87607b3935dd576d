"""Every shell and Python block in README.md and docs/*.md runs as written, in order, one scratch folder per document.

A fenced ```bash / ```python block runs; other blocks are text. An HTML comment on the line before a block's
fence changes that:
    <!-- snippet: skip: REASON -->   not run (the reason is required and shown in the skip)
    <!-- snippet: gpu -->            run only where CUDA is
    <!-- snippet: file: NAME -->     not run: written to NAME (a YAML or JSON file the next blocks use)
The scratch folder stands in for the repository root after the README's set-up: `.venv` is this interpreter's
environment, `src/` and `benchmarks/` are the repository's. Long jobs run with the size flags in SIZES appended
(argparse keeps the last value), so a documented command runs as written with a smaller workload.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# `smollm3 <command>` -> flags appended when the docs run under test: smaller, same code path
SIZES = {
    "corpus build": "--langs en,fr --sources debian-reference --no-code",  # 2 MB instead of 70 MB of packages
    "eval --": "--limit 2 --max-tokens 16",  # not `eval compare`
    "data synth niah": "--n 4 --length 2048",
    "data synth": "--n 50",
}
RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
FENCE = re.compile(r"^```(\S*)\s*$")
MARK = re.compile(r"^<!--\s*snippet:\s*(skip|gpu|file)\s*(?::\s*(.*?))?\s*-->$")


def blocks(path: Path) -> list[dict]:
    """The fenced blocks of a markdown file: language, text, line, and the snippet marker before it."""
    out, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
        mark = MARK.match(prev)
        out.append({"lang": m.group(1), "text": "\n".join(lines[i + 1:j]) + "\n", "line": i + 1,
                    "mark": mark.group(1) if mark else None, "arg": (mark.group(2) or "") if mark else ""})
        i = j + 1
    return out


def _prelude() -> str:
    cases = "".join(f'    "{cmd}"*) set -- "$@" {flags};;\n' for cmd, flags in SIZES.items())
    return ("set -eo pipefail\n"
            'smollm3() {\n  case "$*" in\n' + cases + '  esac\n  command smollm3 "$@"\n}\n')


def _scratch(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "repo"
    root.mkdir(parents=True)
    (root / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    for name in ("src", "benchmarks"):
        (root / name).symlink_to(REPO / name, target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return root, env


def run_doc(path: Path, tmp_path: Path, timeout: float = 900) -> list[str]:
    """Run the document's blocks in order; return what was skipped and why. Fails on the first failing block."""
    root, env = _scratch(tmp_path)
    skipped = []
    for b in blocks(path):
        where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path.name}:{b['line']}"
        if b["mark"] == "skip":
            assert b["arg"], f"{where}: a skip marker needs a reason: <!-- snippet: skip: REASON -->"
            skipped.append(f"{where}: {b['arg']}")
            continue
        if b["mark"] == "file":
            assert b["arg"], f"{where}: <!-- snippet: file: NAME --> needs the file's name"
            (root / b["arg"]).parent.mkdir(parents=True, exist_ok=True)
            (root / b["arg"]).write_text(b["text"])
            continue
        kind = RUNNABLE.get(b["lang"])
        if kind is None:
            continue
        if b["mark"] == "gpu":
            import torch

            if not torch.cuda.is_available():
                skipped.append(f"{where}: needs a GPU")
                continue
        cmd = ["bash", "-c", _prelude() + b["text"]] if kind == "bash" else [sys.executable, "-c", b["text"]]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            pytest.fail(f"{where}: the {b['lang']} block exits {proc.returncode}\n--- block\n{b['text']}"
                        f"--- stdout (tail)\n{proc.stdout[-3000:]}\n--- stderr (tail)\n{proc.stderr[-3000:]}")
    return skipped


def test_markers_parse_and_every_skip_has_a_reason():
    seen = 0
    for path in DOCS:
        for ln in path.read_text().splitlines():
            if "snippet:" in ln and ln.strip().startswith("<!--"):
                m = MARK.match(ln.strip())
                assert m, f"{path.name}: malformed snippet marker {ln.strip()!r}"
                assert m.group(1) == "gpu" or m.group(2), f"{path.name}: {ln.strip()!r} needs a reason / a name"
                seen += 1
    skips = sum(b["mark"] == "skip" for p in DOCS for b in blocks(p))
    assert skips <= 8, f"{skips} skipped blocks: run them with a size flag (SIZES) instead"


def test_the_readme_proofs_have_what_they_need():
    """The proofs the README cites must run in `make test`, not skip for a missing package."""
    readme = (REPO / "README.md").read_text()
    for test_file, package in (("tests/train/test_losses.py", "trl"), ("tests/eval/test_lm_eval_adapter.py", "lm_eval")):
        assert test_file in readme
        assert importlib.util.find_spec(package), f"{test_file} needs {package}: pip install -e '.[dev]'"


def test_a_failing_command_fails_the_doc(tmp_path):
    """The runner is not a rubber stamp: a documented command that errors fails it, naming the line."""
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n\n```bash\nsmollm3 tokenizer train --corpus nowhere --vocab-size 600 --out t\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"doc.md:3: the bash block exits 1[\s\S]*corpus path nowhere"):
        run_doc(doc, tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_doc_runs_as_written(path, tmp_path):
    if "corpus build" in path.read_text() and shutil.which("apt-get") is None:
        pytest.skip("`smollm3 corpus build` needs apt-get download (Debian/Ubuntu)")
    skipped = run_doc(path, tmp_path)
    print("\n".join(skipped))
