"""docs/architecture.md is the code's map: every module under src/smollm3/ must be named in it, in its folder's
section, so a new module without a line there fails here."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sections(doc: str) -> dict[str, str]:
    """'## heading' -> the text under it."""
    return {part.split("\n", 1)[0]: part for part in doc.split("\n## ")[1:]}


def test_every_module_is_in_the_code_map():
    parts = sections((REPO / "docs" / "architecture.md").read_text())
    src = REPO / "src" / "smollm3"
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
