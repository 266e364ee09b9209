"""The package's shape: dependencies point one way (foundations <- jobs <- benchmarks <- cli)
and no function is longer than a screen. Read from the source with `ast`, so an import hidden
inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "digitrec"
FOUNDATIONS = {
    "config",
    "checkpoint",
    "data",
    "models",
    "figures",
    "pages",
    "synth",
    "layout",
    "preprocess",
    "segment",
    "inputs",
    "outliers",
    "pagecrops",
    "linereader",
}
JOBS = {
    "train",
    "evaluate",
    "report",
    "explain",
    "recognize",
    "export",
    "serve",
    "feedback",
    "feedback_api",
    "finetune",
    "distributed",
    "fuzz",
    "linereader_train",
}
LONGEST_FUNCTION = 60


def _layer(module: str) -> int:
    """0 foundation, 1 job, 2 benchmark, 3 command line."""
    if module.startswith("bench"):
        return 2
    if module in ("cli", "__main__"):
        return 3
    if module in JOBS:
        return 1
    assert module in FOUNDATIONS, f"digitrec.{module} is in no layer: add it to this test"
    return 0


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    """The digitrec modules a file imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "digitrec":
                names.update(alias.name for alias in node.names)
            elif node.module.startswith("digitrec."):
                names.add(node.module.removeprefix("digitrec."))
        elif isinstance(node, ast.Import):
            names.update(
                alias.name.removeprefix("digitrec.")
                for alias in node.names
                if alias.name.startswith("digitrec.")
            )
    return names


def test_layers_are_known_and_the_checker_sees_imports_inside_functions(tmp_path):
    assert _layer("bench.serving") == 2 and _layer("cli") == 3 and _layer("train") == 1
    with pytest.raises(AssertionError):
        _layer("newmodule")
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from digitrec.train import fit\n    import digitrec.cli\n")
    assert _imports(probe) == {"train", "cli"}


def test_dependencies_point_one_way():
    wrong = []
    for module, path in _modules().items():
        for imported in _imports(path):
            top = imported.split(".")[0] if not imported.startswith("bench") else imported
            if _layer(top) > _layer(module):
                wrong.append(f"digitrec.{module} imports digitrec.{imported}")
    assert wrong == []


def test_no_function_is_longer_than_a_screen():
    long = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    long.append(f"{module}.{node.name}: {length} lines")
    assert long == []
