"""The ``xembed`` command line: success, bad input (exit 2), failures (exit 1), help."""

from __future__ import annotations

import json
import subprocess
import sys

import imageio.v3 as iio
import pandas as pd
import pytest
import xarray as xr

import xembed
from xembed.cli import main

COMMANDS = ["extract", "similarity", "cube", "render", "demo"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_through_the_entry_point(command):
    args = [sys.executable, "-m", "xembed.cli", *([command] if command else []), "--help"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: xembed" in done.stdout
    if command is None:
        assert all(c in done.stdout for c in COMMANDS)


def test_extract_writes_the_notebook_table(tmp_path, capsys):
    out = tmp_path / "means.parquet"
    code = main(["extract", "demo", "--years", "2020-2022", "--site", "3107", "--site", "3101",
                 "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    table = pd.read_parquet(out)
    assert table.shape == (6, 66)
    assert list(table.columns[:3]) == ["site_id", "year", "A00"]
    assert sorted(table["site_id"].unique()) == [3101, 3107]
    expected = xembed.open_embeddings(xembed.demo_sites()[0], [2020, 2021, 2022]).embed.to_frame()
    got = table[table["site_id"] == 3101].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)
    assert "wrote" in capsys.readouterr().out


def test_similarity_writes_one_matrix_per_site(tmp_path):
    code = main(["similarity", "demo", "--years", "2018-2021", "--site", "3110",
                 "--out", str(tmp_path), "--quiet"])  # fmt: skip
    assert code == 0
    matrix = pd.read_csv(tmp_path / "similarity_3110.csv", index_col="year")
    assert matrix.shape == (4, 4)
    assert (matrix.values.diagonal() == 1).all()


def test_cube_writes_a_store_that_opens(tmp_path):
    out = tmp_path / "cube.zarr"
    code = main(["cube", "demo", "--years", "2019,2020", "--site", "3104", "--out", str(out),
                 "--quiet"])  # fmt: skip
    assert code == 0
    ds = xr.open_zarr(out, decode_coords="all")
    assert ds.embeddings.dims == ("year", "band", "y", "x")
    site = next(s for s in xembed.demo_sites() if s.id == 3104)
    expected = xembed.open_embeddings(site, [2019, 2020])
    assert ds.rio.crs == expected.rio.crs
    xr.testing.assert_equal(ds.embeddings, expected.embeddings)
    assert main(["cube", "demo", "--years", "2019", "--site", "3104", "--out", str(out)]) == 2


def test_render_strip_and_gif(tmp_path):
    code = main(["render", "demo", "--years", "2018-2020", "--site", "3109", "--out",
                 str(tmp_path), "--strip", "--gif", "--dimensions", "120", "--quiet"])  # fmt: skip
    assert code == 0
    gif = iio.imread(tmp_path / "site_3109.gif", index=None)
    assert gif.shape[0] == 3
    strip = iio.imread(tmp_path / "site_3109_strip.png")
    assert strip.dtype == "uint8" and strip.shape[1] > 3 * 100


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["extract", "demo", "--years", "2024-2018", "--out", "x.csv"], "runs backwards"),
        (["extract", "demo", "--years", "soon", "--out", "x.csv"], "not a year list"),
        (["extract", "demo", "--years", "2016", "--out", "x.csv"], "outside the collection"),
        (["extract", "demo", "--years", "2020", "--out", "x.txt"], "must end in .csv"),
        (["extract", "nope.geojson", "--years", "2020", "--out", "x.csv"], "does not exist"),
        (["extract", "demo", "--years", "2020", "--site", "1", "--out", "x.csv"], "not in"),
        (["extract", "demo", "--years", "2020", "--source", "landsat", "--out", "x.csv"],
         "unknown source"),
        (["render", "demo", "--years", "2020", "--out", "d", "--pca", "--bands", "A00,A01,A02"],
         "exclude each other"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_site_failure_exits_1_naming_the_site(tmp_path, capsys):
    far = {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "properties": {"rid": 77},
                      "geometry": {"type": "Polygon", "coordinates": [[[10, 10], [10.001, 10],
                                   [10.001, 10.001], [10, 10.001], [10, 10]]]}}],
    }  # fmt: skip
    path = tmp_path / "far.geojson"
    path.write_text(json.dumps(far))
    assert main(["extract", str(path), "--years", "2020", "--out", str(tmp_path / "m.csv"),
                 "--quiet"]) == 1  # fmt: skip
    assert "site 77" in capsys.readouterr().err


def test_usage_error_from_argparse_is_exit_2():
    with pytest.raises(SystemExit) as info:
        main(["extract"])
    assert info.value.code == 2
