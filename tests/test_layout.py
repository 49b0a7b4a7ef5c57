"""The house rules of the package's layout, checked on the source tree.

The import contracts themselves (layers, independent sources, no cycles,
no test kit in product code) are import-linter's, in pyproject.toml, run by
``make lint``; here: the rules import-linter cannot express, and a check
that the contracts do catch a broken layer.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xembed"
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80  # code lines, the docstring not counted

MODULES = sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        if isinstance(first.value.value, str):
            lines -= first.end_lineno - first.lineno + 1  # type: ignore[operator]
    return lines


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


KNOWN = {_module_name(p) for p in MODULES}


def private_uses(text: str, module: str, *, is_package: bool = False) -> list[str]:
    """``from xembed.x import _name`` and ``x._name`` where ``x`` is another xembed module."""
    tree = ast.parse(text)
    known = KNOWN
    aliases: dict[str, str] = {}  # local name -> xembed module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, is_package)
            if not target.startswith("xembed"):
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in known:
                    aliases[alias.asname or alias.name] = full
                elif _private(alias.name) and target != module:
                    found.append(f"{module}:{node.lineno} imports {target}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and aliases[node.value.id] != module
            and _private(node.attr)
        ):
            found.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_module_is_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path} has {lines} lines; split it by job"


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_functions_are_short(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = [
        f"{node.name} (line {node.lineno}): {_code_lines(node)} lines"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and _code_lines(node) > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path}: functions above {MAX_FUNCTION_LINES} code lines: {long}"


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_no_private_name_crosses_modules(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    found = private_uses(text, _module_name(path), is_package=path.name == "__init__.py")
    assert not found, "make these names public in their home module: " + "; ".join(found)


def test_the_private_name_check_sees_both_forms() -> None:
    text = "from xembed.grid import _snap_down\nfrom xembed import grid\ngrid._snap_up(1.0)\n"
    found = private_uses(text, "xembed.cube")
    assert [f.split(" ", 1)[1] for f in found] == [
        "imports xembed.grid._snap_down",
        "uses xembed.grid._snap_up",
    ]
    assert private_uses(text, "xembed.grid") == []  # its own names are its own business


def test_import_contracts_catch_a_broken_layer(tmp_path: Path) -> None:
    """A copy of the package where grid imports cube (upwards) breaks the layers contract."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install 'xembed[test]')")
    shutil.copytree(PACKAGE, tmp_path / "xembed", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PACKAGE.parent / "pyproject.toml", tmp_path / "pyproject.toml")
    ok = subprocess.run([lint, "--no-cache"], cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    grid = tmp_path / "xembed" / "grid.py"
    grid.write_text(grid.read_text() + "\n\ndef _up():\n    from xembed import cube\n")
    broken = subprocess.run([lint, "--no-cache"], cwd=tmp_path, capture_output=True, text=True)
    assert broken.returncode != 0
    assert "xembed.grid -> xembed.cube" in broken.stdout
