"""``xembed.sample``: the values of ``open_embeddings`` at points, read group by group."""

from __future__ import annotations

import importlib

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

import xembed
from xembed.schema import BANDS

YEARS = [2019, 2020]
# the module (xembed.batch.sample is the function it defines)
sample_module = importlib.import_module("xembed.batch.sample")


@pytest.fixture(scope="module")
def cube() -> object:
    """Demo site 3106 (a third in the 2019 nodata gap), unclipped, as numpy."""
    site = xembed.demo_sites()[5]
    return xembed.open_embeddings(site, YEARS, clip=False).compute()


def _points(cube: object, where: list[tuple[float, float]], **columns: list) -> gpd.GeoDataFrame:
    geoms = [shapely.Point(x, y) for x, y in where]
    return gpd.GeoDataFrame(columns, geometry=geoms, crs=cube.rio.crs)


def _bands(table: pd.DataFrame) -> np.ndarray:
    return table[list(BANDS)].to_numpy()


def test_points_take_the_pixel_containing_them(cube: object) -> None:
    """Centres, corners and edges (east/south rule) equal the cube indexed by hand."""
    xs, ys = cube.x.values, cube.y.values
    where = [
        (xs[3], ys[4]),  # a pixel centre: (4, 3)
        (xs[5] - 5, ys[6] + 5),  # the north-west corner of (6, 5): takes (6, 5)
        (xs[7] - 5, ys[8]),  # the west edge of (8, 7): the pixel to its east
        (xs[9], ys[10] + 5),  # the north edge of (10, 9): the pixel to its south
        (xs[2] + 4.99, ys[1] - 4.99),  # just inside (1, 2)'s south-east corner
    ]
    expected = [(4, 3), (6, 5), (8, 7), (10, 9), (1, 2)]
    table = xembed.sample(_points(cube, where, label=list("abcde")), YEARS, progress=False)
    assert table.columns[:4].tolist() == ["label", "year", "x", "y"]
    assert table["label"].tolist() == [c for c in "abcde" for _ in YEARS]
    assert table["year"].tolist() == YEARS * 5
    emb = cube.embeddings.values
    want = np.stack([emb[j, :, r, c] for r, c in expected for j in range(len(YEARS))])
    np.testing.assert_array_equal(_bands(table), want.astype(np.float64))
    assert not np.isnan(want).any()


def test_lonlat_points_match_the_cube(cube: object) -> None:
    """Shapely points in EPSG:4326 take the same pixels as the cube's own coordinates."""
    xs, ys = np.meshgrid(cube.x.values[::7], cube.y.values[::9])
    from xembed._util import transformer

    lon, lat = transformer(cube.rio.crs, "EPSG:4326").transform(xs.ravel(), ys.ravel())
    table = xembed.sample(
        [shapely.Point(a, b) for a, b in zip(lon, lat, strict=True)], [2020], progress=False
    )
    want = cube.embeddings.sel(year=2020).values[:, ::9, ::7].reshape(64, -1).T
    np.testing.assert_array_equal(_bands(table), want)


def test_nodata_and_outside_give_nan_rows_and_one_warning(cube: object) -> None:
    """The 2019 gap and a point far from the mirror: NaN rows, one CoverageWarning naming them."""
    gap = np.isnan(cube.embeddings.sel(year=2019).values[0])
    r, c = np.argwhere(gap)[0]
    r2, c2 = np.argwhere(~gap)[0]
    xs, ys = cube.x.values, cube.y.values
    frame = _points(cube, [(xs[c], ys[r]), (xs[c2], ys[r2])])
    far = gpd.GeoDataFrame(geometry=[shapely.Point(10.0, 45.0)], crs="EPSG:4326")
    points = pd.concat([frame.to_crs("EPSG:4326"), far], ignore_index=True)
    with pytest.warns(xembed.CoverageWarning, match="3 point-years") as caught:
        table = xembed.sample(points, YEARS, progress=False)
    assert len([w for w in caught if issubclass(w.category, xembed.CoverageWarning)]) == 1
    assert "point 0 (2019)" in str(caught[0].message) and "point 2 (2020)" in str(caught[0].message)
    empty = np.isnan(_bands(table)).all(axis=1).tolist()
    assert empty == [True, False, False, False, True, True]
    np.testing.assert_array_equal(_bands(table)[1], cube.embeddings.values[1, :, r, c])
    assert table.attrs["errors"].empty  # no data is not a failure


def test_points_in_one_cell_share_one_cube(monkeypatch: pytest.MonkeyPatch) -> None:
    """Grouping: one lazy cube per lattice cell holding points, however many points."""
    calls = []
    real = sample_module.mirror_cube
    monkeypatch.setattr(
        sample_module, "mirror_cube", lambda *a, **k: calls.append(a[1]) or real(*a, **k)
    )
    site = xembed.demo_sites()[0]
    c = site.geometry.centroid
    rng = np.random.default_rng(0)
    pts = [shapely.Point(c.x + dx, c.y + dy) for dx, dy in rng.uniform(-1e-3, 1e-3, (50, 2))]
    table = xembed.sample(pts, [2020], progress=False, chunks=1024)
    assert len(table) == 50 and not table["A00"].isna().any()
    assert len(calls) == 1 and calls[0].grid.width * calls[0].grid.height < 50 * 50


def test_polygons_and_pixels_are_refused() -> None:
    site = xembed.demo_sites()[0]
    with pytest.raises(ValueError, match="takes points"):
        xembed.sample([site.geometry], [2020], progress=False)
    with pytest.raises(ValueError, match="pixels=True"):
        xembed.sample([site.geometry.centroid], [2020], progress=False, pixels=True)


def test_store_resumes_and_failures_are_retried(tmp_path, monkeypatch) -> None:
    """A failing group: errors in attrs, NaN rows, not committed; the re-run fills it in."""
    sites = xembed.demo_sites()
    pts = [s.geometry.centroid for s in sites]  # in different cells
    years = [2020, 2021]
    full = xembed.sample(pts, years, progress=False)
    real = sample_module.mirror_cube
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the first group fails
            raise OSError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(sample_module, "mirror_cube", flaky)
    with pytest.warns(UserWarning, match="failed") as caught:
        first = xembed.sample(pts, years, store=tmp_path / "s", progress=False)
    assert not [w for w in caught if issubclass(w.category, xembed.CoverageWarning)]
    errors = first.attrs["errors"]
    failed = errors["point"].tolist()
    assert failed and all("disk on fire" in e for e in errors["error"])
    rows = np.repeat(np.isin(np.arange(len(pts)), failed), len(years))
    assert first.loc[rows, "A00"].isna().all() and not first.loc[~rows, "A00"].isna().any()
    pd.testing.assert_frame_equal(first.loc[~rows], full.loc[~rows])

    seen = []
    monkeypatch.setattr(
        sample_module, "mirror_cube", lambda *a, **k: seen.append(1) or real(*a, **k)
    )
    again = xembed.sample(pts, years, store=tmp_path / "s", progress=False)
    assert len(seen) == 1  # only the failed group is read again
    pd.testing.assert_frame_equal(again, full)
    assert again.attrs["errors"].empty


def test_same_table_as_the_cube_side_sample(cube: object) -> None:
    """``xembed.sample`` and ``ds.embed.sample`` give identical tables on the same points."""
    learn = pytest.importorskip("xembed.ops.learn")
    rng = np.random.default_rng(1)
    xs, ys = cube.x.values, cube.y.values
    where = [(rng.uniform(xs[0], xs[-1]), rng.uniform(ys[-1], ys[0])) for _ in range(30)]
    where += [(xs[4] - 5, ys[4] + 5), (xs[6] - 5, ys[2])]  # a corner, an edge
    points = _points(cube, where, id=list(range(len(where))))
    ours = xembed.sample(points, [2020, 2021], progress=False)
    theirs = learn.sample(
        xembed.open_embeddings(
            points.to_crs(4326).union_all().envelope.buffer(1e-3), [2020, 2021], clip=False
        ),
        points,
    )
    pd.testing.assert_frame_equal(ours, theirs)


def _truth(cube: object) -> object:
    from xembed.sources.sample import landcover

    return landcover(cube).where(cube.coverage > 0, -1)


def test_class_areas_equal_class_area_per_site() -> None:
    """``xembed.class_areas`` gives each site's ``class_area`` of its own cube."""
    from xembed.ops.learn import class_area

    sites = xembed.demo_sites()[:4]
    years = [2019, 2022]
    table = xembed.class_areas(sites, years, _truth, progress=False)
    assert table.columns.tolist() == ["site_id", "year", "class", "ha", "fraction"]
    for site in sites:
        cube = xembed.open_embeddings(site, years)
        want = class_area(cube, _truth(cube))
        got = table[table["site_id"] == site.id].drop(columns="site_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want)
    sums = table.groupby(["site_id", "year"])["fraction"].sum()
    np.testing.assert_allclose(sums, 1.0)


def test_class_areas_with_a_model() -> None:
    """A fitted classifier is predicted on each site (the model trained on the truth)."""
    from sklearn.neighbors import KNeighborsClassifier

    from xembed.ops.learn import class_area, predict

    site = xembed.demo_sites()[1]
    cube = xembed.open_embeddings(site, [2020]).compute()
    x = cube.embeddings.sel(year=2020).values.reshape(64, -1).T
    y = _truth(cube).sel(year=2020).values.ravel()
    ok = ~np.isnan(x).any(axis=1)
    model = KNeighborsClassifier(1).fit(x[ok], y[ok])
    table = xembed.class_areas([site], [2020], model, progress=False)
    want = class_area(cube, predict(cube, model))
    pd.testing.assert_frame_equal(table.drop(columns="site_id"), want)


def test_extract_points_to_class_areas() -> None:
    with pytest.raises(ValueError, match=r"xembed\.class_areas"):
        xembed.extract(xembed.demo_sites()[:1], [2020], stats=("class_area",), progress=False)
