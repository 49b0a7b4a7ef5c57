"""The ``xembed`` command line: success, bad input (exit 2), failures (exit 1), help."""

from __future__ import annotations

import json
import subprocess
import sys

import geopandas as gpd
import imageio.v3 as iio
import pandas as pd
import pytest
import xarray as xr
from shapely.geometry import shape

import xembed
from xembed.cli import main

COMMANDS = ["extract", "change", "similarity", "cube", "render", "report", "demo"]


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
    assert table.shape == (6, 68)  # site_id, year, valid_fraction, valid_ha, A00..A63
    assert list(table.columns[:2]) == ["site_id", "year"] and table.columns[-1] == "A63"
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
        (["extract", "demo", "--years", "2020", "--out", "x.csv", "--stats", "mean",
          "--reducer", "std"], "exclude each other"),
        (["extract", "demo", "--years", "2020", "--out", "x.csv", "--stats", "mean,mode"],
         "mode"),
        (["change", "demo", "--years", "2020", "--out", "x.txt"], "must end in .csv"),
        (["change", "demo", "--years", "2020,2021", "--baseline", "2019", "--out", "x.csv"],
         "--baseline 2019 is not one of --years"),
        (["cube", "demo", "--years", "2020", "--out", "x.tif"], "must end in .zarr (Zarr) or .nc"),
        (["cube", "demo", "--years", "2020", "--out", "x.nc"], "pick one with --site"),
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


def test_extract_store_and_stats(tmp_path, capsys):
    """``--store`` and ``--stats`` (README's command; both were unrecognised arguments)."""
    out, store = tmp_path / "means.csv", tmp_path / "means.parquet.d"
    argv = ["extract", "demo", "--years", "2020,2021", "--site", "3101", "--site", "3105",
            "--stats", "mean,count", "--out", str(out), "--store", str(store),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    table = pd.read_csv(out)
    assert list(table.columns[:3]) == ["site_id", "year", "stat"] and "A00" in table
    assert table["stat"].tolist() == ["mean", "count"] * 4
    sites = [s for s in xembed.demo_sites() if s.id in (3101, 3105)]
    expected = xembed.extract(sites, [2020, 2021], stats=("mean", "count"), progress=False)
    pd.testing.assert_frame_equal(table, expected.reset_index(drop=True), check_dtype=False)
    assert any(p.name.startswith("part-") for p in store.iterdir())  # committed
    capsys.readouterr()
    out.unlink()
    assert main(argv) == 0  # resumes from the store: same table
    pd.testing.assert_frame_equal(pd.read_csv(out), table)


def _sites_gpkg(path, ids):
    """Demo sites as layer 'plots' of a two-layer GeoPackage keyed by ``plot_id``/``planted``."""
    sites = {s.id: s for s in xembed.demo_sites()}
    gdf = gpd.GeoDataFrame(
        {"plot_id": [f"p{i}" for i in ids], "planted": [sites[i].start_year for i in ids]},
        geometry=[sites[i].geometry for i in ids],
        crs="EPSG:4326",
    )
    gdf.iloc[:1].to_file(path, layer="other", driver="GPKG")
    gdf.to_file(path, layer="plots", driver="GPKG")
    return path


def test_change_writes_change_summary_of_every_site(tmp_path, capsys):
    """One table of ``change_summary`` per site, each against its own start year."""
    path = _sites_gpkg(tmp_path / "plots.gpkg", [3104, 3101])  # start years 2020, 2016
    out = tmp_path / "change.parquet"
    code = main(["change", str(path), "--layer", "plots", "--id-field", "plot_id",
                 "--start-year-field", "planted", "--years", "2018-2022", "--out", str(out),
                 "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    table = pd.read_parquet(out)
    assert table["site_id"].unique().tolist() == ["p3104", "p3101"]
    assert list(table.columns[:3]) == ["site_id", "year", "baseline"]
    # 3104 against its start year 2020; 3101's (2016) precedes the data: the first year
    assert table.groupby("site_id", sort=False)["baseline"].first().tolist() == [2020, 2018]
    site = next(s for s in xembed.demo_sites() if s.id == 3104)
    expected = xembed.change_summary(xembed.open_embeddings(site, range(2018, 2023)))
    got = table[table["site_id"] == "p3104"].drop(columns="site_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)
    assert main(["change", str(path), "--layer", "other", "--id-field", "plot_id",
                 "--years", "2020-2021", "--baseline", "2021", "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    table = pd.read_parquet(out)
    assert table["site_id"].unique().tolist() == ["p3104"]  # the other layer
    assert set(table["baseline"]) == {2021}


def test_change_failing_site_exits_1_and_keeps_the_others(tmp_path, capsys):
    demo = next(s for s in xembed.demo_sites() if s.id == 3110)
    far = {"type": "Polygon", "coordinates": [[[10, 10], [10.001, 10], [10.001, 10.001],
                                               [10, 10.001], [10, 10]]]}  # fmt: skip
    gdf = gpd.GeoDataFrame(
        {"rid": [3110, 77]}, geometry=[demo.geometry, shape(far)], crs="EPSG:4326"
    )
    path = tmp_path / "sites.geojson"
    gdf.to_file(path)
    out = tmp_path / "change.csv"
    assert main(["change", str(path), "--years", "2020,2021", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "site 77" in err and "1 of 2 sites failed" in err
    assert pd.read_csv(out)["site_id"].unique().tolist() == [3110]


def test_cube_writes_netcdf_for_one_site(tmp_path):
    out = tmp_path / "cube.nc"
    code = main(["cube", "demo", "--years", "2019,2020", "--site", "3104", "--out", str(out),
                 "--int8", "--quiet"])  # fmt: skip
    assert code == 0
    back = xembed.open_cube(out)
    site = next(s for s in xembed.demo_sites() if s.id == 3104)
    expected = xembed.open_embeddings(site, [2019, 2020])
    assert back.rio.crs == expected.rio.crs
    xr.testing.assert_allclose(back.embeddings, expected.embeddings, atol=0.02)


def test_min_valid_warns_in_one_line_and_0_silences_it(tmp_path, capsys):
    """Site 3106 has data under 62 % of its area in 2019: the table says so, a warning too."""
    out = tmp_path / "means.csv"
    argv = ["extract", "demo", "--site", "3106", "--years", "2019,2020", "--out", str(out),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.startswith("xembed extract: warning: ") and len(err.splitlines()) == 1
    assert "site 3106 in 2019: valid_fraction 0.620" in err and "2020" not in err
    table = pd.read_csv(out)
    assert table["valid_fraction"].round(2).tolist() == [0.62, 1.0]
    assert main([*argv, "--min-valid", "0"]) == 0
    assert capsys.readouterr().err == ""
    assert main([*argv, "--min-valid", "1.5"]) == 2
    assert "min_valid must be a fraction between 0 and 1" in capsys.readouterr().err


def test_change_table_has_valid_fraction_and_warns(tmp_path, capsys):
    """`xembed change` says how much of the site each year stands on, as extract does."""
    out = tmp_path / "change.csv"
    argv = ["change", "demo", "--site", "3106", "--years", "2018-2020", "--out", str(out),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.startswith("xembed change: warning: ") and len(err.splitlines()) == 1
    assert "site 3106 in 2019: valid_fraction 0.620" in err
    table = pd.read_csv(out)
    assert table["valid_fraction"].round(2).tolist() == [1.0, 0.62, 1.0]
    assert main([*argv, "--min-valid", "0"]) == 0
    assert capsys.readouterr().err == ""


def test_sites_without_ids_warn_and_id_field_picks_the_column(tmp_path, capsys):
    sites = xembed.demo_sites()[:2]
    path = tmp_path / "plots.geojson"
    gdf = gpd.GeoDataFrame({"plot_id": ["a", "b"]}, geometry=[s.geometry for s in sites])
    gdf.set_crs("EPSG:4326").to_file(path)
    out = tmp_path / "means.csv"
    argv = ["extract", str(path), "--years", "2020", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.startswith("xembed extract: warning: ") and "plot_id" in err
    assert main([*argv, "--id-field", "plot_id"]) == 0
    assert capsys.readouterr().err == ""
    assert pd.read_csv(out)["site_id"].tolist() == ["a", "b"]
