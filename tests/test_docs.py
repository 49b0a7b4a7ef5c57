"""Every code block of README.md and docs/*.md runs, so the documentation cannot drift.

- ```python blocks of one file run in order in one namespace, in a temporary
  working folder, on the bundled sample. A line ``print(...)  # text`` is
  checked: what it prints must be ``text`` (``...`` matches anything, as in
  doctests).
- ```bash / ```console lines of the README starting with ``xembed `` run
  through :func:`xembed.cli.main` in a temporary folder holding a
  ``sites.geojson`` (two demo sites); they must exit 0. ``make`` lines are
  what CI runs (``make test`` runs this file), so they are skipped.
- A block that cannot run offline (a real Earth Engine account, the public
  mirror) is marked in the Markdown by the line just before its fence::

      <!-- no-run: needs an Earth Engine account -->

  It must still parse, and is reported as a skipped test with that reason
  (``pytest -rs tests/test_docs.py`` lists them).
"""

from __future__ import annotations

import contextlib
import doctest
import io
import re
import shlex
import tokenize
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import xembed
from xembed.cli import main

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
NO_RUN = re.compile(r"^\s*<!--\s*no-run:\s*(.*?)\s*-->\s*$")
PYTHON = {"python", "py"}
SHELL = {"bash", "console", "sh", "shell"}
CI_ONLY = "make demo and make test are what CI runs (make test runs this file)"


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it starts, its language and code, why it is not run."""

    path: Path
    line: int  # the first code line, 1-based
    lang: str
    code: str
    no_run: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with their ``no-run`` reasons."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang = opening.groups()
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NO_RUN.match(before)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        code = "\n".join(line[len(indent) :] for line in lines[i + 1 : end])
        found.append(Block(path, i + 2, lang.lower(), code, marker.group(1) if marker else None))
        i = end + 1
    return found


ALL = [b for path in FILES for b in blocks(path)]
PYTHON_FILES = [p for p in FILES if any(b.lang in PYTHON and not b.no_run for b in blocks(p))]
MARKED = [b for b in ALL if b.no_run is not None and b.lang in PYTHON | SHELL]


def _command_lines(block: Block) -> list[tuple[int, str]]:
    """(line, command) of a shell block, without prompts and comments."""
    out = []
    for offset, text in enumerate(block.code.splitlines()):
        text = text.strip().removeprefix("$ ")
        if text and not text.startswith("#"):
            out.append((block.line + offset, text))
    return out


COMMANDS = [
    (line, text)
    for block in ALL
    if block.path.name == "README.md" and block.lang in SHELL and block.no_run is None
    for line, text in _command_lines(block)
]


# --- python blocks ------------------------------------------------------------------


def _checked_prints(code: str) -> str:
    """``print(x)  # want`` -> ``__check_print__(lambda: print(x), 'want')``, same lines."""
    lines = code.splitlines()
    tokens = tokenize.generate_tokens(io.StringIO(code + "\n").readline)
    for tok in tokens:
        if tok.type != tokenize.COMMENT:
            continue
        row, col = tok.start
        head = lines[row - 1][:col].rstrip()
        call = re.fullmatch(r"(\s*)(print\(.*\))", head)
        if call:
            want = tok.string[1:].strip()
            lines[row - 1] = f"{call.group(1)}__check_print__(lambda: {call.group(2)}, {want!r})"
    return "\n".join(lines)


def _check_print(show: Any, want: str) -> None:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        show()
    got = buffer.getvalue()
    print(got, end="")
    checker = doctest.OutputChecker()
    if not checker.check_output(want + "\n", got, doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE):
        raise AssertionError(f"the comment says {want!r} but it prints {got.strip()!r}")


def run_python(block: Block, namespace: dict[str, Any]) -> None:
    """Run one block with the Markdown file's line numbers in its tracebacks."""
    source = "\n" * (block.line - 1) + _checked_prints(block.code)
    exec(compile(source, str(block.path), "exec"), namespace)


@pytest.mark.parametrize("path", PYTHON_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path, tmp_path, monkeypatch):
    """All python blocks of one file, in order, in one namespace, in a temporary folder."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__docs__", "__check_print__": _check_print}
    for block in blocks(path):
        if block.lang not in PYTHON or block.no_run is not None:
            continue
        failure = None
        try:
            run_python(block, namespace)
        except Exception as err:
            failure = "".join(traceback.format_exception(err)[-6:])
        if failure is not None:
            pytest.fail(f"the block at {block.where} fails:\n{failure}", pytrace=False)


@pytest.mark.parametrize("block", MARKED, ids=lambda b: b.where)
def test_blocks_marked_no_run_parse_and_are_skipped(block):
    """A block that needs an account or the internet still parses; it is skipped visibly."""
    assert block.no_run, f"{block.where}: say why after 'no-run:'"
    if block.lang in PYTHON:
        compile(block.code, str(block.path), "exec")
    pytest.skip(f"{block.where}: {block.no_run}")


# --- the README's command lines ---------------------------------------------------


@pytest.mark.parametrize(("line", "command"), COMMANDS, ids=[f"README.md:{c[0]}" for c in COMMANDS])
def test_readme_command_lines_run(line, command, tmp_path, monkeypatch):
    """``xembed ...`` lines run in a folder holding ``sites.geojson`` (two demo sites)."""
    argv = shlex.split(command, comments=True)
    if argv[0] == "make":
        pytest.skip(f"README.md:{line}: {command!r}: {CI_ONLY}")
    if argv[0] != "xembed":
        pytest.skip(f"README.md:{line}: {command!r} is not an xembed command")
    monkeypatch.chdir(tmp_path)
    _two_demo_sites(tmp_path / "sites.geojson")
    assert main([*argv[1:], "--quiet"]) == 0, command


def _two_demo_sites(path: Path) -> None:
    import geopandas as gpd

    sites = [s for s in xembed.demo_sites() if s.id in (3107, 3110)]
    frame = gpd.GeoDataFrame(
        {"rid": [s.id for s in sites], "start_year": [s.start_year for s in sites]},
        geometry=[s.geometry for s in sites],
        crs="EPSG:4326",
    )
    frame.to_file(path)


# --- the collector itself -----------------------------------------------------------


def test_collector_sees_every_block(tmp_path):
    """Fences, indentation, no-run markers and checked prints, on a small Markdown file."""
    text = (
        "# t\n\n```python\nx = 1\n```\n\n<!-- no-run: needs the internet -->\n\n"
        "```python\nimport nowhere\n```\n\n- item\n\n  ```bash\n  xembed demo\n  ```\n"
    )
    path = tmp_path / "t.md"
    path.write_text(text)
    found = blocks(path)
    assert [(b.line, b.lang, b.code, b.no_run) for b in found] == [
        (4, "python", "x = 1", None),
        (10, "python", "import nowhere", "needs the internet"),
        (16, "bash", "xembed demo", None),
    ]
    namespace: dict[str, Any] = {"__check_print__": _check_print}
    checked = "print(6 * 7)  # 42\nprint('a b')  # a ..."
    run_python(Block(path, 3, "python", checked, None), namespace)
    with pytest.raises(AssertionError, match="the comment says '3107' but it prints '3101'"):
        run_python(Block(path, 3, "python", "print(3101)  # 3107", None), namespace)
    with pytest.raises(ZeroDivisionError) as info:
        run_python(Block(path, 7, "python", "y = 1\ny / 0", None), namespace)
    assert info.traceback[-1].lineno + 1 == 8  # the Markdown file's line


def test_the_readme_shows_code_that_runs():
    """The README's python blocks and xembed command lines are collected (not all marked)."""
    readme = blocks(ROOT / "README.md")
    assert sum(b.lang in PYTHON and b.no_run is None for b in readme) >= 5
    assert sum(text.startswith("xembed ") for _, text in COMMANDS) >= 5
    assert [text.split("#")[0].strip() for _, text in COMMANDS[:2]] == ["make demo", "make test"]


def test_api_reference_names_every_public_name():
    """docs/api.md lists every name of ``xembed``, ``xembed.render`` and ``xembed.export``."""
    import xembed.export
    import xembed.render

    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`(\w+)", text))
    public = {*xembed.__all__, *xembed.render.__all__, *xembed.export.__all__} - {"__version__"}
    assert sorted(public - listed) == []
