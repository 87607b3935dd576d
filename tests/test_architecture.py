"""The code's shape, checked: docs/architecture.md names every module under src/smollm3/ (in its folder's section),
the import graph has no cycle (imports inside functions count), no module imports another's private names, and
behaviour is never switched by swapping a class or flipping a module's global."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def sections(doc: str) -> dict[str, str]:
    """'## heading' -> the text under it."""
    return {part.split("\n", 1)[0]: part for part in doc.split("\n## ")[1:]}


def test_every_module_is_in_the_code_map():
    parts = sections((REPO / "docs" / "architecture.md").read_text())
    src = SRC / "smollm3"
    missing = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if len(rel.parts) == 1:
            text = parts.get("Top level", "")
        elif rel.name == "__init__.py":
            continue  # the package is its section
        else:
            text = next((t for h, t in parts.items() if h.startswith(f"`{'/'.join(rel.parts[:-1])}/`")), "")
        if f"`{rel.name}`" not in text:
            missing.append(str(rel))
    assert not missing, f"add these modules to docs/architecture.md, in their folder's section: {missing}"


def modules(root: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module under `root` (a package is its __init__)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(imported module, the name taken from it or None, line) for every import of a project module in the file,
    at any depth (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                if f"{base}.{a.name}" in known:  # `from package import module`
                    found.append((f"{base}.{a.name}", None, node.lineno))
                elif base in known:
                    found.append((base, a.name, node.lineno))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), or a module importing itself."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle_and_none_in_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_import_graph_has_no_cycle():
    known = modules()
    graph = {name: set() for name in known}
    for name, path in known.items():
        for target, _, _ in imports(name, path, known):
            # a package's __init__ re-exports its modules; importing it is not importing them back
            if target != name and not name.startswith(target + "."):
                graph[name].add(target)
    found = cycles(graph)
    assert not found, f"import cycles (imports inside functions count): {found}"


def test_ops_import_only_ops_and_config():
    """ops/ sits under the model, the trainer and the engine: it imports none of them."""
    known = modules()
    bad = [f"{path.relative_to(REPO)}:{line} imports {target}" for name, path in known.items()
           if name.startswith("smollm3.ops") for target, _, line in imports(name, path, known)
           if not target.startswith("smollm3.ops") and target != "smollm3.config"]
    assert not bad, "; ".join(bad)


def test_no_module_imports_another_modules_private_names():
    known = modules()
    bad = []
    for name, path in known.items():
        aliases = {}
        for target, taken, line in imports(name, path, known):
            if taken is not None and taken.startswith("_") and target != name:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {target}.{taken}")
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # `import smollm3.x as m` / `from smollm3 import x as m`, then m._name
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    full = a.name if isinstance(node, ast.Import) else f"{node.module}.{a.name}"
                    if full in known:
                        aliases[a.asname or a.name.split(".")[0]] = full
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not bad, "private names used across modules (make them public or move them): " + "; ".join(bad)


def test_no_class_swaps_no_globals_no_module_switches_flipped():
    """Settings are given to the model when it is built (ops/settings.py), not set by reassigning a class, a
    `global`, or another module's attribute; benchmarks and tests follow the same rule."""
    known = modules()
    bad = []
    # benchmarks/results holds records, the scripts exactly as they ran on the device (ruff skips them too)
    benchmarks = [p for p in (REPO / "benchmarks").rglob("*.py") if not p.is_relative_to(REPO / "benchmarks" / "results")]
    for path in [*SRC.rglob("*.py"), *benchmarks, *(REPO / "tests").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        project = {a.asname or a.name.split(".")[0] for node in ast.walk(tree)
                   if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names
                   if (a.name if isinstance(node, ast.Import) else f"{node.module}.{a.name}") in known}
        for node in ast.walk(tree):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:
                if isinstance(t, ast.Attribute) and t.attr == "__class__":
                    bad.append(f"{where} assigns __class__")
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in project:
                    bad.append(f"{where} sets {t.value.id}.{t.attr} of another module")
            if isinstance(node, ast.Global) and path.is_relative_to(SRC):
                bad.append(f"{where} rebinds a module global ({', '.join(node.names)})")
        for node in tree.body if path.is_relative_to(SRC) else []:  # a module-level True/False is a switch
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, bool):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} is a module-level switch (put it in OpSettings)")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "setattr" and len(node.args) >= 2 \
                    and isinstance(node.args[0], ast.Name) and node.args[0].id in project \
                    and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).isupper():
                bad.append(f"{where} flips {node.args[0].id}.{node.args[1].value}")
    assert not bad, "; ".join(bad)
