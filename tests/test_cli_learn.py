"""``xembed sample`` and ``xembed classify`` through :func:`xembed.cli.main`."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely

import xembed
from xembed.cli import main
from xembed.sources.sample import CLASS_NAMES, landcover

pytest.importorskip("sklearn")
learn = pytest.importorskip("xembed.ops.learn")

REGION = shapely.box(-48.018, -22.612, -48.001, -22.585)  # zone 22S, ~1.7 x 3 km


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 points per class present (2024 truth), at random pixel centres, as GeoJSON."""
    cube = xembed.open_embeddings(REGION, [2020, 2024], clip=False)
    has_data = cube.embeddings.isel(band=0).notnull().all("year").values
    truth = landcover(cube, 2024)
    rng = np.random.default_rng(0)
    rows = []
    for code in np.unique(truth.values[has_data]):
        where = np.argwhere((truth.values == code) & has_data)
        for r, c in where[rng.choice(len(where), size=min(20, len(where)), replace=False)]:
            rows.append((CLASS_NAMES[code], float(truth.x[c]), float(truth.y[r])))
    frame = gpd.GeoDataFrame(
        {"class": [r[0] for r in rows]},
        geometry=gpd.points_from_xy([r[1] for r in rows], [r[2] for r in rows]),
        crs=truth.rio.crs,
    ).to_crs(4326)
    path = tmp_path_factory.mktemp("labels") / "train.geojson"
    frame.to_file(path, driver="GeoJSON")
    return path


def test_sample_writes_the_table(labelled: Path, tmp_path: Path) -> None:
    out = tmp_path / "table.parquet"
    assert (
        main(["sample", str(labelled), "--years", "2020-2021", "--out", str(out), "--quiet"]) == 0
    )
    table = pd.read_parquet(out)
    want = xembed.sample(gpd.read_file(labelled), [2020, 2021], progress=False)
    want.attrs = {}
    pd.testing.assert_frame_equal(table, want)
    assert table.columns[:2].tolist() == ["class", "year"]


def test_sample_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "t.parquet")
    assert main(["sample", str(tmp_path / "none.geojson"), "--years", "2020", "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["sample", "x.geojson", "--years", "2020", "--out", "t.txt"]) == 2


def test_classify_maps_and_areas(labelled: Path, tmp_path: Path) -> None:
    """GeoTIFF per site and year, class areas summing to 1, maps close to the truth."""
    out = tmp_path / "classes"
    args = ["classify", "demo", "--site", "3110", "--site", "3107", "--training", str(labelled)]
    args += ["--label", "class", "--years", "2020,2022", "--training-years", "2024"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    for rid in (3110, 3107):
        assert sorted(p.name for p in (out / str(rid)).iterdir()) == [
            "classes_2020.tif",
            "classes_2022.tif",
        ]
    areas = pd.read_csv(out / "class_area.csv")
    assert areas.columns.tolist() == ["site_id", "year", "class", "ha", "fraction"]
    np.testing.assert_allclose(areas.groupby(["site_id", "year"])["fraction"].sum(), 1.0)
    site = next(s for s in xembed.demo_sites() if s.id == 3110)
    cube = xembed.open_embeddings(site, 2022)
    with rasterio.open(out / "3110" / "classes_2022.tif") as src:
        codes = src.read(1)
        names = src.tags().get("flag_meanings", "").split() or None
    truth = landcover(cube, 2022).values
    inside = (cube.coverage > 0).values
    names = names or sorted(set(gpd.read_file(labelled)["class"]))
    mapped = np.array([CLASS_NAMES.index(names[c]) for c in codes[inside]])
    assert (mapped == truth[inside]).mean() > 0.9


def test_classify_bad_label(labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["classify", "demo", "--training", str(labelled), "--label", "kind"]
    assert main([*args, "--years", "2020", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "--label 'kind' is not a column" in capsys.readouterr().err
