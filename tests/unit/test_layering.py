"""The import direction between leadflow's top-level packages.

schemas ← leadflow (the core every role uses) ← ingest_adapters / streams / sinks (the
roles, which do not import each other) ← privacy ← the application shell ← tooling
← tests.
Nothing imports upward or sideways, so (the ranks being strict) there is no
cycle between packages. Every import
counts, the ones inside functions too.

`python -m leadflow` runs the shell by name (`leadflow/__main__.py`), and the shell
plugs the tools' verbs in by name when they are installed: neither is an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Higher imports lower; the same rank may not import a different package of that rank.
RANK = {
    "schemas": 0,
    "leadflow": 1,
    "ingest_adapters": 2,
    "streams": 2,
    "sinks": 2,
    "privacy": 3,
    "leadflow_app": 4,
    "leadflow_tools": 5,
    "tests": 6,  # no product or tool code leans on the tests' helpers
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Top-level packages this module imports, relative imports resolved."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                found.add(base[0] if base else "")
            elif node.module:
                found.add(node.module.partition(".")[0])
    return found


def edges() -> dict[tuple[str, str], int]:
    """(module, imported package) → rank gap, for every import between our packages."""
    found: dict[tuple[str, str], int] = {}
    for package in RANK:
        folder = ROOT / package
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.py")):
            module = _module_name(path)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for target in _imported(tree, module, path.name == "__init__.py"):
                if target in RANK and target != package:
                    found[(module, target)] = RANK[target] - RANK[package]
    return found


def test_nothing_imports_upward_or_sideways() -> None:
    wrong = sorted(edge for edge, gap in edges().items() if gap >= 0)
    assert not wrong, f"imports against the layering (docs/architecture.md, folder map): {wrong}"


def test_the_core_imports_only_schemas() -> None:
    assert {target for (module, target) in edges() if module.startswith("leadflow.")} <= {"schemas"}


def test_the_layering_check_sees_an_upward_import() -> None:
    tree = ast.parse("def f():\n    from streams.identity import visit\n")
    assert _imported(tree, "leadflow.settings", False) == {"streams"}
    relative = ast.parse("from .rules import Rules\n")
    assert _imported(relative, "streams.identity", False) == {"streams"}
