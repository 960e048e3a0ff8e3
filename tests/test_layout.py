"""The tree stays legible: no source file past 500 lines, one definition of each shared test fixture, and no test
module importing another (shared helpers live in tests/helpers.py, tests/conftest.py and tests/fake_*.py)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 500
SOURCES = ("bench", "baselines", "echodistill", "tools")
SHARED_FIXTURES = ("fake", "mini_dreambench")


def test_no_source_file_passes_500_lines() -> None:
    lengths = {str(p.relative_to(REPO)): len(p.read_text(encoding="utf-8").splitlines())
               for folder in SOURCES for p in sorted((REPO / folder).rglob("*.py"))}
    assert lengths, "no source files found"
    too_long = {path: n for path, n in lengths.items() if n > LIMIT}
    assert not too_long, f"split these modules (more than {LIMIT} lines): {too_long}"


def _test_modules() -> list[Path]:
    return sorted((REPO / "tests").glob("test_*.py"))


def test_no_test_module_imports_another() -> None:
    found = []
    for path in _test_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: {n}" for n in names if n.split(".")[-1].startswith("test_")]
    assert not found, f"a test module imports another; move what they share to tests/helpers.py: {found}"


def test_shared_fixtures_are_defined_once() -> None:
    where: dict[str, list[str]] = {name: [] for name in SHARED_FIXTURES}
    for path in [*_test_modules(), REPO / "tests" / "conftest.py", REPO / "tests" / "helpers.py"]:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name in where:
                where[node.name].append(path.name)
    assert all(len(files) == 1 for files in where.values()), where
