"""Imports flow one way: schemas ← detectors ← streams, replay ← spendwatch (the face).

Read from the source with `ast`, function-local imports included, so a circle cannot
hide inside a function body."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

LAYER = {"schemas": 0, "detectors": 1, "streams": 2, "replay": 2, "spendwatch": 3}


def upward_imports(root: Path) -> list[str]:
    """`path:line: module` for each import of a package in a higher layer, or a sibling's."""
    found = []
    for package, rank in LAYER.items():
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in LAYER and top != package and LAYER[top] >= rank:
                        found.append(f"{path.relative_to(root)}:{node.lineno}: {module}")
    return found


def test_no_module_imports_from_a_layer_above_it_or_beside_it():
    assert upward_imports(ROOT) == []


def test_the_check_sees_an_upward_import(tmp_path: Path):
    """The check itself can fail: a core module reaching into the wiring is reported."""
    for package in LAYER:
        (tmp_path / package).mkdir()
    (tmp_path / "detectors" / "x.py").write_text("def f():\n    from streams.app import build_app\n")
    (tmp_path / "replay" / "y.py").write_text("import streams.ingest\n")
    assert upward_imports(tmp_path) == ["detectors/x.py:2: streams.app", "replay/y.py:1: streams.ingest"]


def test_cli_commands_share_helpers_without_importing_the_cli_back():
    """Command modules take what they share from `spendwatch.cli.common`; none imports the parser
    module (`spendwatch.cli` itself), so the CLI has no import circle."""
    back = [f"{path.relative_to(ROOT)}:{node.lineno}"
            for path in sorted((ROOT / "spendwatch").rglob("*.py")) if path.name != "__main__.py"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module == "spendwatch.cli"
            or isinstance(node, ast.Import) and any(a.name == "spendwatch.cli" for a in node.names)]
    assert back == []
