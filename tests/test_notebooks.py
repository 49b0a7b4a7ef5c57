"""The stored tutorial notebooks execute without error against the sample."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_all_five_notebooks_are_there():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    (tmp_path / "outputs").mkdir()
    nb = nbformat.read(copy, as_version=4)
    stored = sum(len(c.get("outputs", [])) for c in nb.cells if c.cell_type == "code")
    assert stored > 0, "notebooks are stored with their outputs"
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def _sources(path: Path, kind: str) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == kind]


def test_notebooks_are_written_for_a_new_user():
    """Issue 12 item 15: no "original notebook", search maps are not change maps."""
    for path in NOTEBOOKS:
        text = "\n".join(_sources(path, "markdown") + _sources(path, "code")).lower()
        assert "original notebook" not in text, path.name
        assert "plot_change(1 - hits" not in text, path.name
    readme = (NOTEBOOKS[0].parent / "README.md").read_text()
    assert "open issues" not in readme
    assert all(p.name in readme for p in NOTEBOOKS)  # each one is introduced
    searches = [c for p in NOTEBOOKS for c in _sources(p, "code") if ".search(" in c]
    assert searches and all("plot_search(" in c for c in searches)


def test_one_notebook_goes_from_a_site_file_to_an_export():
    code = _sources(NOTEBOOKS[0], "code")
    first_site = next(i for i, c in enumerate(code) if "load_sites(" in c)
    assert ".geojson" in code[first_site] and "write_text(" in code[first_site]  # its own file
    assert not any("demo_sites" in c for c in code[: first_site + 1])
    exports = [i for i, c in enumerate(code) if "to_geotiff(" in c or "to_zarr(" in c]
    assert exports and exports[-1] >= len(code) - 2  # it ends with the export
