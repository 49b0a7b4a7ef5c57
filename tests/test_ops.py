"""Tests of the analyses (:mod:`xembed.ops`), independent of the implementation.

Every analysis runs on a numpy cube and its dask twins (space tiled, and years
split so the kernels must rechunk) inside a counting scheduler, and is checked
against hand-computed expectations on planted patterns or against independent
references (numpy formulas written here, exactextract for polygon statistics).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import pytest
import shapely
import xarray as xr
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rasterio.io import MemoryFile

import xembed
from xembed import ops
from xembed.grid import coverage_fraction
from xembed.schema import BANDS, dequantize
from xembed.testing import make_cube, planted_vector, raise_if_dask_computes

YEARS = (2020, 2021, 2022)
SHAPE = (24, 20)
DASK_CHUNKS = {
    "dask-yx": {"y": 8, "x": 8},
    "dask-years": {"year": 1, "y": 12},
}
ALL_CHUNKS = {"numpy": None, **DASK_CHUNKS}


# --- helpers ------------------------------------------------------------------


def to_lonlat(geometry: shapely.Geometry, crs: Any) -> shapely.Geometry:
    """A geometry from the cube's UTM CRS to EPSG:4326 (pyproj, vertex by vertex)."""
    tr = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return shapely.transform(geometry, lambda xy: np.column_stack(tr.transform(*xy.T)))


def to_utm(geometry: shapely.Geometry, crs: Any) -> shapely.Geometry:
    tr = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return shapely.transform(geometry, lambda xy: np.column_stack(tr.transform(*xy.T)))


def site_polygon_utm(cube: xr.Dataset) -> shapely.Geometry:
    return to_utm(shapely.from_wkt(cube.attrs["site_geometry_wkt"]), cube.rio.crs)


def star_polygon(cx: float, cy: float, rmin: float, rmax: float, seed: int) -> shapely.Polygon:
    """A random star-shaped (so valid) polygon, not aligned to the pixel lattice."""
    rng = np.random.default_rng(seed)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 11))
    radii = rng.uniform(rmin, rmax, 11)
    return shapely.Polygon(
        np.column_stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)])
    )


def set_embeddings(cube: xr.Dataset, values: np.ndarray) -> xr.Dataset:
    """The cube with its (numpy) embeddings replaced."""
    out = cube.copy()
    out["embeddings"] = cube["embeddings"].copy(data=np.asarray(values, dtype=np.float32))
    return out


def pixel_grid(cube: xr.Dataset) -> tuple[float, float]:
    """(west, north) outer corner of the cube's grid."""
    return float(cube.x[0]) - 5.0, float(cube.y[0]) + 5.0


def exact_extract(cube: xr.Dataset, year: int, polygons: list, stats: list[str]) -> pd.DataFrame:
    """exactextract's statistics of one year's embeddings (all bands) over UTM polygons.

    The year is written to an in-memory float32 GeoTIFF (north-up, 10 m, nodata
    NaN, the cube's CRS) and read by exactextract, so nothing of xembed's own
    coverage or weighting code is involved.
    """
    from exactextract import exact_extract as ee

    data = cube["embeddings"].sel(year=year).transpose("band", "y", "x").values
    west, north = pixel_grid(cube)
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": "float32",
        "nodata": np.nan,
        "crs": cube.rio.crs,
        "transform": Affine(10.0, 0.0, west, 0.0, -10.0, north),
    }
    frame = gpd.GeoDataFrame({"fid": range(len(polygons))}, geometry=polygons, crs=cube.rio.crs)
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data.astype(np.float32))
        with mem.open() as src:
            return ee(src, frame, stats, output="pandas")


def ee_column(table: pd.DataFrame, stat: str, n_bands: int) -> np.ndarray:
    """(features, bands) array of one exactextract statistic."""
    return np.column_stack([table[f"band_{b + 1}_{stat}"].to_numpy() for b in range(n_bands)])


def analysis_cube(seed: int = 1) -> xr.Dataset:
    """A numpy cube with planted polygon, NaN pixels (also inside the polygon) and a zero vector."""
    cube = make_cube(years=YEARS, shape=SHAPE, seed=seed)
    data = cube["embeddings"].values.copy()
    inside = np.argwhere(cube["coverage"].values > 0)
    r, c = inside[len(inside) // 2]
    data[1, :, r, c] = np.nan  # masked in one year, inside the polygon
    data[:, :, 0, 0] = np.nan  # masked in every year
    data[2, :, 3, 5] = 0.0  # a zero vector
    data[0, 7, 20, 2] = np.nan  # one band missing
    return set_embeddings(cube, data)


def rotation_cube(angles: np.ndarray, seed: int = 0) -> xr.Dataset:
    """Each pixel's vector in year i is ``cos(a_i) u + sin(a_i) v`` (u, v orthonormal per pixel).

    So the cosine between years i and j at a pixel is ``cos(a_i - a_j)``.
    """
    n_years, ny, nx = angles.shape
    cube = make_cube(years=tuple(range(2018, 2018 + n_years)), shape=(ny, nx), seed=seed)
    rng = np.random.default_rng([seed, 99])
    u = rng.normal(size=(64, ny, nx))
    u /= np.linalg.norm(u, axis=0)
    v = rng.normal(size=(64, ny, nx))
    v -= (v * u).sum(axis=0) * u
    v /= np.linalg.norm(v, axis=0)
    data = np.cos(angles)[:, None] * u[None] + np.sin(angles)[:, None] * v[None]
    return set_embeddings(cube, data)


def numpy_cosine(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """Float64 reference cosine along ``axis``; zero vectors give NaN."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        na, nb = np.linalg.norm(a, axis=axis), np.linalg.norm(b, axis=axis)
        out = (a * b).sum(axis=axis) / (na * nb)
    return np.where((na > 0) & (nb > 0), out, np.nan)


def build_lazily(func: Callable[[xr.Dataset], Any], cube: xr.Dataset, max_computes: int = 0):
    """``func(cube)`` built under the counting scheduler; returns (result, computes)."""
    with raise_if_dask_computes(max_computes) as scheduler:
        result = func(cube)
    return result, scheduler.total_computes


def assert_same_result(lazy: Any, eager: Any) -> None:
    """A dask-built result equals the numpy-built one (dtype, dims, coords, values)."""
    if isinstance(eager, pd.DataFrame):
        pd.testing.assert_frame_equal(lazy, eager, rtol=1e-6, atol=1e-6)
        return
    assert isinstance(lazy.data, da.Array), "dask input must give a lazy result"
    computed = lazy.compute()
    assert computed.dtype == eager.dtype
    assert computed.dims == eager.dims
    if np.issubdtype(eager.dtype, np.floating):
        xr.testing.assert_allclose(computed, eager, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(np.isnan(computed.values), np.isnan(eager.values))
    else:
        xr.testing.assert_identical(computed, eager)


def site_location(cube: xr.Dataset) -> tuple[float, float]:
    """(x, y) of a pixel centre fully inside the planted polygon."""
    r, c = np.argwhere(cube["coverage"].values == 1)[0]
    return float(cube.x[c]), float(cube.y[r])


def some_sites(cube: xr.Dataset) -> list[xembed.Site]:
    """Sites in lon/lat on the cube: overlapping, partly outside, entirely outside."""
    west, north = pixel_grid(cube)
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    east, south = west + 10 * nx, north - 10 * ny
    utm = [
        star_polygon(west + 63.3, north - 71.7, 25, 55, seed=1),
        star_polygon(west + 91.9, north - 104.2, 30, 70, seed=2),  # overlaps site 0
        star_polygon(east - 12.4, south + 33.3, 20, 60, seed=3),  # partly outside
        shapely.box(east + 5000, south - 5000, east + 5100, south - 4900),  # outside
        site_polygon_utm(cube),  # the planted polygon
    ]
    crs = cube.rio.crs
    return [
        xembed.Site(id=f"s{i}", start_year=None, geometry=to_lonlat(p, crs))
        for i, p in enumerate(utm)
    ]


# --- the analyses, numpy vs dask, zero computes at build time -------------------


def _zonal(cube: xr.Dataset) -> xr.DataArray:
    return ops.zonal_mean(cube, some_sites(cube))


def _site_ll(cube: xr.Dataset) -> shapely.Geometry:
    return shapely.from_wkt(cube.attrs["site_geometry_wkt"])


LOCATION = site_location(analysis_cube())

ANALYSES: dict[str, Callable[[xr.Dataset], Any]] = {
    **{f"polygon_mean-{r}": (lambda c, r=r: ops.polygon_mean(c, reducer=r)) for r in ops.REDUCERS},
    "polygon_mean-mean-normalize": lambda c: ops.polygon_mean(c, normalize=True),
    "polygon_mean-median-normalize": lambda c: ops.polygon_mean(
        c, reducer="median", normalize=True
    ),
    "zonal_mean": _zonal,
    "zonal_mean-normalize": lambda c: ops.zonal_mean(c, some_sites(c), normalize=True),
    "similarity_matrix": lambda c: ops.similarity_matrix(c),
    "similarity_matrix-raw": lambda c: ops.similarity_matrix(c, normalize=False),
    "similarity-previous": lambda c: ops.similarity(c, "previous"),
    "similarity-first": lambda c: ops.similarity(c, "first"),
    "similarity-year": lambda c: ops.similarity(c, 2021),
    "pairwise_similarity": ops.pairwise_similarity,
    "change": lambda c: ops.change(c),
    "change-baseline": lambda c: ops.change(c, 2022),
    "change-threshold": lambda c: ops.change(c, threshold=0.5),
    "search-vector": lambda c: ops.search(c, planted_vector(1)),
    "search-location": lambda c: ops.search(c, LOCATION, year=2022),
    "search-polygon": lambda c: ops.search(c, _site_ll(c)),
    "rgb": lambda c: ops.rgb(c),
    "rgb-bands": lambda c: ops.rgb(c, bands=("A63", "A00", "A32"), vmin=-0.2, vmax=(0.1, 0.2, 0.3)),
    "pca_rgb": lambda c: ops.pca_rgb(c),
    "pca_rgb-fit_on": lambda c: ops.pca_rgb(c, fit_on=[2021], sample=200, seed=3),
    "kmeans": lambda c: ops.kmeans(c, k=4),
    "kmeans-sample": lambda c: ops.kmeans(c, k=3, sample=300, seed=5, fit_on=[2020, 2022]),
}
# Tables: their job is to return numbers, so they may compute (once).
TABLES: dict[str, Callable[[xr.Dataset], pd.DataFrame]] = {
    "to_frame": ops.to_frame,
    "to_frame-median": lambda c: ops.to_frame(c, reducer="median"),
    "change_summary": lambda c: ops.change_summary(c),
    "change_summary-options": lambda c: ops.change_summary(
        c, 0.5, baseline=2022, percentiles=(5, 95)
    ),
}


def _analysis_params():
    for name in ANALYSES:
        for chunk_name in DASK_CHUNKS:
            yield pytest.param(name, chunk_name, id=f"{name}-{chunk_name}")


@pytest.fixture(scope="module")
def cube_np() -> xr.Dataset:
    return analysis_cube()


@pytest.mark.parametrize(("name", "chunk_name"), list(_analysis_params()))
def test_analysis_dask_is_lazy_and_equals_numpy(name, chunk_name, cube_np):
    func = ANALYSES[name]
    eager = func(cube_np)
    assert not isinstance(eager.data, da.Array)
    lazy, computes = build_lazily(func, cube_np.chunk(DASK_CHUNKS[chunk_name]))
    assert computes == 0
    assert_same_result(lazy, eager)


def _table_params():
    for name in TABLES:
        for chunk_name in DASK_CHUNKS:
            yield pytest.param(name, chunk_name, id=f"{name}-{chunk_name}")


@pytest.mark.parametrize(("name", "chunk_name"), list(_table_params()))
def test_table_dask_computes_once_and_equals_numpy(name, chunk_name, cube_np):
    func = TABLES[name]
    eager = func(cube_np)
    lazy, computes = build_lazily(func, cube_np.chunk(DASK_CHUNKS[chunk_name]), max_computes=1)
    assert computes == 1
    assert_same_result(lazy, eager)


@pytest.mark.parametrize("chunk_name", list(DASK_CHUNKS))
def test_median_lazy_when_only_embeddings_are_chunked(chunk_name, cube_np):
    # The layout open_embeddings produces: dask embeddings, in-memory coverage.
    cube = cube_np.copy()
    cube["embeddings"] = cube_np["embeddings"].chunk(DASK_CHUNKS[chunk_name])
    lazy, computes = build_lazily(lambda c: ops.polygon_mean(c, reducer="median"), cube)
    assert computes == 0
    assert_same_result(lazy, ops.polygon_mean(cube_np, reducer="median"))


ACCESSOR_CALLS = [
    ("polygon_mean", (), {"reducer": "std"}),
    ("zonal_mean", (), {"sites": None}),
    ("to_frame", (), {}),
    ("similarity_matrix", (), {"normalize": False}),
    ("similarity", ("first",), {}),
    ("pairwise_similarity", (), {}),
    ("change", (2021,), {"threshold": 0.3}),
    ("change_summary", (0.3,), {}),
    ("search", (None,), {}),
    ("rgb", (("A01", "A02", "A03"),), {"vmin": -0.5}),
    ("pca_rgb", (), {"seed": 2}),
    ("kmeans", (), {"k": 3}),
]


@pytest.mark.parametrize(
    ("method", "args", "kwargs"), ACCESSOR_CALLS, ids=[call[0] for call in ACCESSOR_CALLS]
)
def test_accessor_is_the_function(method, args, kwargs, cube_np):
    if "sites" in kwargs:
        kwargs = {"sites": some_sites(cube_np)}
    if args == (None,):
        args = (planted_vector(1),)
    via_accessor = getattr(cube_np.embed, method)(*args, **kwargs)
    via_function = getattr(ops, method)(cube_np, *args, **kwargs)
    if isinstance(via_function, pd.DataFrame):
        pd.testing.assert_frame_equal(via_accessor, via_function)
    else:
        xr.testing.assert_identical(via_accessor, via_function)
    assert f"xembed.ops.{method}" in getattr(type(cube_np.embed), method).__doc__


# --- polygon statistics ---------------------------------------------------------


@pytest.mark.parametrize("chunks", list(ALL_CHUNKS.values()), ids=list(ALL_CHUNKS))
def test_polygon_mean_of_planted_polygon(chunks):
    cube = make_cube(years=YEARS, shape=(16, 16), seed=4, chunks=chunks)
    vector = planted_vector(4).astype(np.float64)
    covered = float(cube["coverage"].sum())
    with raise_if_dask_computes():
        stats = {r: ops.polygon_mean(cube, reducer=r) for r in ("mean", "min", "max", "std")}
        count = ops.polygon_mean(cube, reducer="count")
    for reducer in ("mean", "min", "max"):
        got = stats[reducer].values
        assert got.shape == (3, 64)
        np.testing.assert_allclose(got, np.broadcast_to(vector, (3, 64)), atol=1e-6)
    np.testing.assert_allclose(stats["std"].values, 0.0, atol=1e-6)
    np.testing.assert_allclose(count.values, covered, rtol=1e-6)
    assert stats["mean"].dims == ("year", "band")
    assert list(stats["mean"]["band"].values) == list(BANDS)
    assert stats["mean"].attrs["reducer"] == "mean"


def test_polygon_mean_median_of_planted_polygon():
    cube = make_cube(years=YEARS, shape=(16, 16), seed=4)
    np.testing.assert_allclose(
        ops.polygon_mean(cube, reducer="median").values,
        np.broadcast_to(planted_vector(4), (3, 64)),
        atol=1e-6,
    )


def test_polygon_mean_hand_computed_weights():
    # Two pixels in the polygon: coverage 1 with value 1, coverage 0.25 with value 3.
    cube = make_cube(years=(2020,), shape=(4, 4))
    data = np.zeros((1, 64, 4, 4), np.float32)
    data[0, :, 1, 1], data[0, :, 1, 2] = 1.0, 3.0
    data[0, :, 2, 2] = 100.0  # outside the polygon (coverage 0)
    cov = np.zeros((4, 4), np.float32)
    cov[1, 1], cov[1, 2] = 1.0, 0.25
    cube = set_embeddings(cube, data).assign(coverage=(("y", "x"), cov))
    mean = (1 * 1 + 0.25 * 3) / 1.25
    expected = {
        "mean": mean,
        "std": np.sqrt((1 * (1 - mean) ** 2 + 0.25 * (3 - mean) ** 2) / 1.25),
        "min": 1.0,
        "max": 3.0,
        "count": 1.25,
    }
    for reducer, value in expected.items():
        got = ops.polygon_mean(cube, reducer=reducer).values
        np.testing.assert_allclose(got, value, rtol=1e-6, err_msg=reducer)
    # exactextract's weighted median of (1, w=1), (3, w=0.25): s = (0, 1*0.25 + 1*1) = (0, 1.25),
    # target 0.5 * 1.25 * 1 = 0.625 -> 1 + 0.625 / 1.25 * 2 = 2.
    np.testing.assert_allclose(ops.polygon_mean(cube, reducer="median").values, 2.0)


def test_polygon_mean_normalize_gives_unit_vectors():
    vectors = np.random.default_rng(3).normal(size=(3, 64, 12, 12))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cube = set_embeddings(make_cube(years=YEARS, shape=(12, 12)), vectors)
    raw = ops.polygon_mean(cube).values.astype(np.float64)
    unit = ops.polygon_mean(cube, normalize=True).values.astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    assert np.linalg.norm(raw, axis=1).max() < 0.9  # means of random vectors are short


def test_polygon_mean_empty_year_is_nan_and_count_zero():
    cube = make_cube(years=YEARS, shape=(8, 8))
    data = cube["embeddings"].values.copy()
    data[1] = np.nan
    cube = set_embeddings(cube, data)
    for reducer in ("mean", "median", "std", "min", "max"):
        out = ops.polygon_mean(cube, reducer=reducer).values
        assert np.isnan(out[1]).all(), reducer
        assert np.isfinite(out[[0, 2]]).all(), reducer
    count = ops.polygon_mean(cube, reducer="count").values
    assert (count[1] == 0).all()
    assert np.isnan(ops.polygon_mean(cube, normalize=True).values[1]).all()


def test_polygon_mean_of_dataarray_uses_coverage_coord_else_equal_weights():
    cube = analysis_cube()
    emb = cube["embeddings"]
    with_coord = ops.polygon_mean(emb.assign_coords(coverage=cube["coverage"]))
    xr.testing.assert_allclose(with_coord, ops.polygon_mean(cube))
    plain = emb.embed.polygon_mean()
    np.testing.assert_allclose(plain.values, emb.mean(("y", "x")).values, atol=1e-6)


def test_polygon_mean_errors():
    cube = make_cube(shape=(4, 4))
    with pytest.raises(ValueError, match=r"unknown reducer 'sum'.*'mean', 'median'"):
        ops.polygon_mean(cube, reducer="sum")
    with pytest.raises(ValueError, match=r"normalize=True needs reducer 'mean' or 'median'"):
        ops.polygon_mean(cube, reducer="std", normalize=True)
    with pytest.raises(xembed.SchemaError, match="no 'embeddings' variable"):
        ops.polygon_mean(cube[["coverage"]])
    with pytest.raises(xembed.SchemaError, match=r"lack the dimensions \['band'\]"):
        ops.polygon_mean(cube["embeddings"].isel(band=0))
    with pytest.raises(TypeError, match="expected an xarray Dataset or DataArray"):
        ops.polygon_mean(np.zeros((2, 64, 4, 4)))


def _random_cube_with_gaps(quantised: bool, seed: int = 7) -> tuple[xr.Dataset, shapely.Polygon]:
    """A cube of random values (no planted pattern), NaN pixels, and a random polygon."""
    cube = make_cube(years=(2020, 2021), shape=(26, 22), seed=seed)
    rng = np.random.default_rng(seed)
    if quantised:  # the mirror's int8 levels: many exactly repeated values
        data = dequantize(rng.integers(-127, 128, size=(2, 64, 26, 22)).astype(np.int8))
    else:
        data = rng.normal(scale=0.2, size=(2, 64, 26, 22))
    data[:, :, 12, 8:12] = np.nan  # masked pixels inside the polygon
    data[0, :, 10, 10] = np.nan
    data[0, 3, 14, 9] = np.nan  # a value missing in one band only
    west, north = pixel_grid(cube)
    polygon = star_polygon(west + 113.7, north - 128.1, 45, 95, seed=seed)
    cov = coverage_fraction(polygon, ops.grid_of(cube))
    cube = set_embeddings(cube, data).assign(coverage=(("y", "x"), cov))
    assert ((cov > 0) & (cov < 1)).sum() > 20  # fractional coverage along the edge
    return cube, polygon


EE_STATS = {"mean": "mean", "std": "stdev", "median": "median", "min": "min", "max": "max"}
EE_STATS["count"] = "count"


@pytest.mark.parametrize(
    "quantised",
    [False, True],
    ids=["continuous", "quantised"],
)
@pytest.mark.parametrize("reducer", list(EE_STATS))
def test_polygon_mean_matches_exactextract(reducer, quantised):
    cube, polygon = _random_cube_with_gaps(quantised)
    got = ops.polygon_mean(cube, reducer=reducer)
    for year in (2020, 2021):
        table = exact_extract(cube, year, [polygon], [EE_STATS[reducer]])
        expected = ee_column(table, EE_STATS[reducer], 64)[0]
        np.testing.assert_allclose(got.sel(year=year).values, expected, atol=1e-5, rtol=1e-6)


def test_weighted_quantile_merges_repeated_values_like_exactextract():
    # exactextract keys its weighted quantiles by value: (1, w=1), (1, w=1), (2, w=1) is
    # (1, w=2), (2, w=1): s = (0, 1 * 1 + 1 * 2) = (0, 3), target 0.5 * 3 * 1 -> median 1.5
    # (numpy's median of 1, 1, 2 is 1).
    cube = make_cube(years=(2020,), shape=(1, 3))
    data = np.zeros((1, 64, 1, 3), np.float32)
    data[0, :, 0, :] = [1.0, 1.0, 2.0]
    cube = set_embeddings(cube, data).assign(coverage=(("y", "x"), np.ones((1, 3), np.float32)))
    west, north = pixel_grid(cube)
    polygon = shapely.box(west, north - 10, west + 30, north)
    reference = ee_column(exact_extract(cube, 2020, [polygon], ["median"]), "median", 64)[0]
    np.testing.assert_allclose(reference, 1.5)
    np.testing.assert_allclose(ops.polygon_mean(cube, reducer="median").values, 1.5)


def test_weighted_quantile_equal_weights_is_numpy_linear():
    values = np.random.default_rng(0).normal(size=(5, 17))
    for q in (0.0, 0.1, 0.5, 0.9, 1.0):
        np.testing.assert_allclose(
            ops.weighted_quantile(values, np.ones(17), q), np.quantile(values, q, axis=-1)
        )
    assert np.isnan(ops.weighted_quantile(np.array([np.nan, 1.0]), np.array([1.0, 0.0]), 0.5))


# --- zonal_mean -------------------------------------------------------------------


def test_zonal_mean_matches_polygon_mean_loop_and_exactextract():
    cube = analysis_cube()
    sites = some_sites(cube)
    got = ops.zonal_mean(cube, sites)
    assert got.dims == ("site", "year", "band")
    assert list(got["site"].values) == [s.id for s in sites]
    assert got.dtype == np.float64
    grid = ops.grid_of(cube)
    utm = [to_utm(s.geometry, cube.rio.crs) for s in sites]
    west, north = pixel_grid(cube)
    bounds = shapely.box(west, north - 10 * SHAPE[0], west + 10 * SHAPE[1], north)
    assert utm[0].intersects(utm[1]) and not utm[0].equals(utm[1])  # overlapping sites
    assert utm[2].intersects(bounds) and not bounds.contains(utm[2])  # partly outside
    assert not utm[3].intersects(bounds)  # outside
    for site, polygon in zip(sites, utm, strict=True):
        cov = coverage_fraction(polygon, grid)
        if not cov.any():
            assert np.isnan(got.sel(site=site.id).values).all()
            continue
        loop = ops.polygon_mean(cube.assign(coverage=(("y", "x"), cov)))
        np.testing.assert_allclose(got.sel(site=site.id).values, loop.values, atol=1e-6)
    inside = [i for i in range(len(sites)) if i != 3]
    for year in YEARS:
        table = exact_extract(cube, year, [utm[i] for i in inside], ["mean"])
        expected = ee_column(table, "mean", 64)
        np.testing.assert_allclose(got.sel(year=year).isel(site=inside).values, expected, atol=1e-5)
    # the planted polygon's mean is the planted vector
    np.testing.assert_allclose(got.sel(site="s4").values[0], planted_vector(1), atol=1e-6)


def _site_inputs(cube: xr.Dataset) -> dict[str, tuple[Any, list]]:
    sites = some_sites(cube)[:3]
    geoms = [s.geometry for s in sites]
    features = [
        {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(g)}
        for g in geoms
    ]
    frame = gpd.GeoDataFrame({"id": [10, 11, 12]}, geometry=geoms, crs="EPSG:4326")
    utm_frame = frame.to_crs(cube.rio.crs)
    return {
        "sites": (sites, ["s0", "s1", "s2"]),
        "shapely": (geoms, [0, 1, 2]),
        "geojson-geometries": ([shapely.geometry.mapping(g) for g in geoms], [0, 1, 2]),
        "geojson-features": (features, [0, 1, 2]),
        "feature-collection": ({"type": "FeatureCollection", "features": features}, [0, 1, 2]),
        "geodataframe": (frame, [10, 11, 12]),
        "geodataframe-utm": (utm_frame, [10, 11, 12]),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "sites",
        "shapely",
        "geojson-geometries",
        "geojson-features",
        "feature-collection",
        "geodataframe",
        "geodataframe-utm",
    ],
)
def test_zonal_mean_site_inputs(kind, cube_np):
    sites, ids = _site_inputs(cube_np)[kind]
    if kind == "feature-collection":  # no ids at all: numbered by row, with a warning
        with pytest.warns(UserWarning, match=r"GeoJSON mapping has no site ids.*by row: 0, 1, 2"):
            got = ops.zonal_mean(cube_np, sites)
    else:
        got = ops.zonal_mean(cube_np, sites)
    assert list(got["site"].values) == ids
    reference = ops.zonal_mean(cube_np, some_sites(cube_np)[:3])
    # A reprojected GeoDataFrame goes UTM -> lon/lat -> UTM: vertices move by ~1e-9 m.
    np.testing.assert_allclose(got.values, reference.values, atol=1e-6)


def test_zonal_mean_keeps_geojson_feature_ids(cube_np):
    sites = some_sites(cube_np)[:2]
    features = [
        {
            "type": "Feature",
            "id": f"plot-{i}",
            "properties": {"start_year": 2020},
            "geometry": shapely.geometry.mapping(s.geometry),
        }
        for i, s in enumerate(sites)
    ]
    got = ops.zonal_mean(cube_np, features)
    assert list(got["site"].values) == ["plot-0", "plot-1"]


def test_zonal_mean_errors(cube_np):
    sites = some_sites(cube_np)
    dupes = [sites[0], xembed.Site(id="s0", start_year=None, geometry=sites[1].geometry)]
    with pytest.raises(ValueError, match=r"duplicate site ids \['s0'\]"):
        ops.zonal_mean(cube_np, dupes)
    with pytest.raises(ValueError, match="sites is empty"):
        ops.zonal_mean(cube_np, [])
    with pytest.raises(xembed.SchemaError, match="no CRS"):
        ops.zonal_mean(cube_np.drop_vars("spatial_ref"), sites)


def test_zonal_mean_normalize(cube_np):
    got = ops.zonal_mean(cube_np, some_sites(cube_np), normalize=True).values
    norms = np.linalg.norm(got, axis=-1)
    np.testing.assert_allclose(norms[~np.isnan(norms)], 1.0, rtol=1e-12)
    assert np.isnan(got[3]).all()  # the site outside the cube


class ReadRecorder:
    """An array-like that records the windows dask reads from it."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.reads: list[tuple] = []

    def __getitem__(self, key: tuple) -> np.ndarray:
        self.reads.append(key)
        return self.array[key]


@pytest.mark.parametrize("year_chunk", [-1, 1])
def test_zonal_mean_reads_only_chunks_under_sites(year_chunk):
    cube = make_cube(years=YEARS, shape=(32, 48), seed=2)
    recorder = ReadRecorder(cube["embeddings"].values)
    lazy = da.from_array(
        recorder,
        chunks=(year_chunk, -1, 8, 8),
        asarray=False,
        meta=np.empty((0, 0, 0, 0), np.float32),
    )
    dask_cube = cube.copy()
    dask_cube["embeddings"] = cube["embeddings"].copy(data=lazy)
    west, north = pixel_grid(cube)
    crs = cube.rio.crs
    # Site a: inside chunk (row 0, col 0); site b: straddles chunks (2, 3) and (2, 4).
    a = shapely.Polygon([(west + 13.3, north - 12.1), (west + 61.7, north - 18.4),
                         (west + 40.2, north - 66.6)])  # fmt: skip
    b = shapely.box(west + 10 * 8 * 3 + 41.5, north - 10 * 8 * 2 - 63.2,
                    west + 10 * 8 * 4 + 22.2, north - 10 * 8 * 2 - 7.7)  # fmt: skip
    sites = [to_lonlat(a, crs), to_lonlat(b, crs)]
    lazy_means, computes = build_lazily(lambda c: ops.zonal_mean(c, sites), dask_cube)
    assert computes == 0
    assert recorder.reads == []
    result = lazy_means.compute()
    touched = {(key[2].start // 8, key[3].start // 8) for key in recorder.reads}
    assert touched == {(0, 0), (2, 3), (2, 4)}
    assert len(recorder.reads) == 3 * (3 if year_chunk == 1 else 1)
    np.testing.assert_allclose(result.values, ops.zonal_mean(cube, sites).values, atol=1e-12)


# --- to_frame and similarity_matrix ------------------------------------------------


def _heterogeneous_site_cube() -> xr.Dataset:
    """Unit vectors that vary inside the polygon, as on a real site (means are short)."""
    cube = make_cube(years=(2019, 2020, 2021, 2022), shape=(16, 16), seed=8)
    rng = np.random.default_rng(8)
    base = rng.normal(size=(64, 1, 1))
    data = base + 0.4 * rng.normal(size=(4, 64, 16, 16))
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return set_embeddings(cube, data)


def test_to_frame_table(cube_np):
    table = ops.to_frame(cube_np)
    assert list(table.columns) == ["site_id", "year", "valid_fraction", "valid_ha", *BANDS]
    assert table["year"].tolist() == list(YEARS)
    assert (table["site_id"] == "test").all()
    np.testing.assert_allclose(
        table[list(BANDS)].to_numpy(), ops.polygon_mean(cube_np).values, rtol=1e-7
    )
    cube = cube_np.assign_attrs(site_id="3107")
    assert ops.to_frame(cube)["site_id"].tolist() == [3107] * 3


@pytest.mark.parametrize("chunks", list(ALL_CHUNKS.values()), ids=list(ALL_CHUNKS))
def test_similarity_matrix_symmetric_with_unit_diagonal(chunks):
    cube = _heterogeneous_site_cube()
    if chunks:
        cube = cube.chunk(chunks)
    with raise_if_dask_computes():
        sim = ops.similarity_matrix(cube)
        raw = ops.similarity_matrix(cube, normalize=False)
    assert sim.dims == ("year", "year_2")
    assert sim["year"].values.tolist() == sim["year_2"].values.tolist() == [2019, 2020, 2021, 2022]
    values = sim.values
    np.testing.assert_array_equal(values, values.T)
    np.testing.assert_array_equal(np.diag(values), 1.0)
    assert values.min() >= -1 and values.max() <= 1
    means = ops.polygon_mean(cube).values.astype(np.float64)
    np.testing.assert_allclose(np.diag(raw.values), (means**2).sum(axis=1), rtol=1e-12)
    assert np.diag(raw.values).max() < 0.99  # the notebook's "similarity" is not 1
    np.testing.assert_allclose(raw.values, raw.values.T, rtol=1e-12)
    assert sim.attrs["normalized"] == 1 and raw.attrs["normalized"] == 0


def test_similarity_matrix_is_the_notebook_formula_on_to_frame():
    cube = _heterogeneous_site_cube()
    table = ops.to_frame(cube)
    e = table[[f"A{i:02d}" for i in range(64)]].to_numpy()
    np.testing.assert_allclose(
        ops.similarity_matrix(cube, normalize=False).values, e @ e.T, rtol=1e-12, atol=1e-14
    )
    unit = e / np.linalg.norm(e, axis=1, keepdims=True)
    np.testing.assert_allclose(ops.similarity_matrix(cube).values, unit @ unit.T, atol=1e-12)


def test_similarity_matrix_of_means_and_empty_year():
    cube = _heterogeneous_site_cube()
    data = cube["embeddings"].values.copy()
    data[2] = np.nan
    cube = set_embeddings(cube, data)
    means = ops.polygon_mean(cube)
    from_means = ops.similarity_matrix(means)
    xr.testing.assert_identical(from_means, ops.similarity_matrix(cube))
    values = from_means.values
    assert np.isnan(values[2]).all() and np.isnan(values[:, 2]).all()
    np.testing.assert_array_equal(np.diag(values)[[0, 1, 3]], 1.0)


def test_similarity_matrix_planted_site_is_all_ones():
    sim = ops.similarity_matrix(make_cube(years=YEARS, shape=(12, 12)))
    np.testing.assert_array_equal(sim.values, 1.0)


# --- per-pixel similarity ----------------------------------------------------------


@pytest.fixture(scope="module")
def rotation() -> tuple[np.ndarray, xr.Dataset]:
    rng = np.random.default_rng(5)
    angles = rng.uniform(-np.pi, np.pi, size=(4, 6, 7))
    angles[:, 0, 0] = [0.0, np.pi / 3, np.pi / 2, np.pi]  # cos 1, 1/2, 0, -1
    return angles, rotation_cube(angles)


@pytest.mark.parametrize("chunks", list(ALL_CHUNKS.values()), ids=list(ALL_CHUNKS))
def test_similarity_known_rotation(chunks, rotation):
    angles, cube = rotation
    cube = cube.chunk(chunks) if chunks else cube
    with raise_if_dask_computes():
        first = ops.similarity(cube, "first")
        previous = ops.similarity(cube)
        third = ops.similarity(cube, 2020)
        pairwise = ops.pairwise_similarity(cube)
        change = ops.change(cube, 2019)
    atol = 2e-6
    np.testing.assert_allclose(first.values, np.cos(angles - angles[0]), atol=atol)
    np.testing.assert_allclose(third.values, np.cos(angles - angles[2]), atol=atol)
    assert np.isnan(previous.values[0]).all()
    np.testing.assert_allclose(previous.values[1:], np.cos(np.diff(angles, axis=0)), atol=atol)
    expected = np.cos(angles[:, None] - angles[None, :])
    np.testing.assert_allclose(pairwise.values, expected, atol=atol)
    np.testing.assert_allclose(change.values, 1 - np.cos(angles - angles[1]), atol=atol)
    np.testing.assert_allclose(first.values[:, 0, 0], [1.0, 0.5, 0.0, -1.0], atol=atol)
    assert first.dtype == np.float32 and pairwise.dtype == np.float32
    assert first.dims == ("year", "y", "x")
    assert pairwise.dims == ("year", "year_2", "y", "x")
    assert int(change.attrs["baseline"]) == 2019


def test_similarity_renormalises_pixels(rotation):
    _angles, cube = rotation
    data = cube["embeddings"].values.copy()
    data[2, :, 1, 1] *= 3.0
    data[0, :, 4, 5] *= 0.25
    scaled = set_embeddings(cube, data)
    for func in (
        lambda c: ops.similarity(c, "first"),
        ops.similarity,
        ops.pairwise_similarity,
        lambda c: ops.search(c, data[0, :, 2, 3]),
    ):
        np.testing.assert_allclose(func(scaled).values, func(cube).values, atol=1e-6)
    np.testing.assert_allclose(
        ops.search(cube, 7.5 * data[0, :, 2, 3]).values,
        ops.search(cube, data[0, :, 2, 3]).values,
        atol=1e-6,
    )


@pytest.mark.parametrize("chunks", list(ALL_CHUNKS.values()), ids=list(ALL_CHUNKS))
def test_similarity_zero_and_masked_vectors_are_nan(chunks):
    cube = make_cube(years=YEARS, shape=(10, 10), clip=True)
    data = cube["embeddings"].values.copy()
    inside = cube["coverage"].values > 0
    r, c = np.argwhere(cube["coverage"].values == 1)[0]
    data[1, :, r, c] = 0.0  # zero vector in 2021
    cube = set_embeddings(cube, data)
    cube = cube.chunk(chunks) if chunks else cube
    with raise_if_dask_computes():
        results = {
            "first": ops.similarity(cube, "first"),
            "previous": ops.similarity(cube, "previous"),
            "2021": ops.similarity(cube, 2021),
            "pairwise": ops.pairwise_similarity(cube),
            "change": ops.change(cube),
            "search": ops.search(cube, planted_vector()),
        }
    for name, result in results.items():
        values = result.values
        assert np.isnan(values[..., ~inside]).all(), f"{name}: masked pixels must stay NaN"
    first, previous = results["first"].values, results["previous"].values
    assert np.isnan(first[1, r, c]) and not np.isnan(first[2, r, c])
    assert np.isnan(previous[1, r, c]) and np.isnan(previous[2, r, c])
    assert np.isnan(results["2021"].values[:, r, c]).all()
    pairwise = results["pairwise"].values
    assert np.isnan(pairwise[1, :, r, c]).all() and np.isnan(pairwise[:, 1, r, c]).all()
    assert pairwise[0, 2, r, c] == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(results["search"].values[1, r, c])
    assert not bool(ops.change(cube, threshold=0.0).values[..., ~inside].any())


PLANTED_FUNCS = {
    "similarity-first": (lambda c: ops.similarity(c, "first"), 1.0),
    "similarity-previous": (lambda c: ops.similarity(c)[1:], 1.0),
    "similarity-year": (lambda c: ops.similarity(c, 2021), 1.0),
    "pairwise_similarity": (ops.pairwise_similarity, 1.0),
    "change": (lambda c: ops.change(c), 0.0),
    "search": (lambda c: ops.search(c, planted_vector(0)), 1.0),
}


@pytest.mark.parametrize("chunk_name", list(ALL_CHUNKS))
@pytest.mark.parametrize(
    "name",
    [pytest.param(n) for n in PLANTED_FUNCS],
)
def test_planted_constant_vector_gives_cosine_exactly_one(name, chunk_name):
    func, target = PLANTED_FUNCS[name]
    for shape in [(16, 16), (24, 20), (9, 13)]:
        cube = make_cube(years=YEARS, shape=shape, chunks=ALL_CHUNKS[chunk_name])
        inside = cube["coverage"].values > 0
        values = func(cube).values[..., inside]
        np.testing.assert_allclose(values, target, atol=2e-7)  # always nearly
        np.testing.assert_array_equal(values, target, err_msg=str(shape))  # and exactly


def test_similarity_reference_errors():
    cube = make_cube(years=YEARS, shape=(4, 4))
    with pytest.raises(ValueError, match=r"reference must be a year of the cube.*got 'last'"):
        ops.similarity(cube, "last")
    with pytest.raises(ValueError, match=r"reference year 2030 is not in the cube.*2020, 2021"):
        ops.similarity(cube, 2030)
    with pytest.raises(ValueError, match="reference must be"):
        ops.similarity(cube, True)
    with pytest.raises(ValueError, match="reference must be"):
        ops.similarity(cube, 2020.5)
    assert ops.similarity(cube, np.int64(2021)).attrs["reference"] == "2021"


# --- change -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start_year", "expected"),
    [(2021, 2021), (2022, 2022), (2015, 2020), (-1, 2020), (None, 2020)],
)
def test_change_default_baseline(start_year, expected):
    cube = make_cube(years=YEARS, shape=(6, 6))
    if start_year is None:
        cube.attrs.pop("site_start_year")
    else:
        cube.attrs["site_start_year"] = start_year
    inside = cube["coverage"].values > 0
    d = ops.change(cube)
    assert int(d.attrs["baseline"]) == expected
    np.testing.assert_array_equal(d.sel(year=expected).values, 0.0)
    others = d.drop_sel(year=expected).values
    np.testing.assert_allclose(others[:, inside], 0.0, atol=1e-6)  # planted: no change
    assert (others[:, ~inside] > 0.1).all()  # independent random vectors
    assert ops.change_summary(cube)["baseline"].eq(expected).all()


def test_change_values_and_threshold(rotation):
    angles, cube = rotation
    d = ops.change(cube, 2019, threshold=0.45)
    assert d.dtype == bool
    assert d.attrs["threshold"] == 0.45 and int(d.attrs["baseline"]) == 2019
    np.testing.assert_array_equal(d.values, 1 - np.cos(angles - angles[1]) > 0.45)
    with pytest.raises(ValueError, match=r"baseline year 1999 is not in the cube"):
        ops.change(cube, 1999)
    raw = ops.change(cube, 2019).values
    assert np.nanmin(raw) >= 0 and np.nanmax(raw) <= 2


def test_change_summary_planted_change():
    cube = make_cube(years=YEARS, shape=(16, 16), seed=6)
    inside = cube["coverage"].values > 0
    data = cube["embeddings"].values.copy()
    u = planted_vector(6).astype(np.float64)
    v = np.random.default_rng(0).normal(size=64)
    v -= (v @ u) * u  # orthogonal: 1 - cos = 1 in 2022
    data[2][:, inside] = (v / np.linalg.norm(v)).astype(np.float32)[:, None]
    # 2021: a 60 degree turn on one fully covered pixel only (1 - cos = 0.5)
    r, c = np.argwhere(cube["coverage"].values == 1)[0]
    w = np.cos(np.pi / 3) * u + np.sin(np.pi / 3) * v / np.linalg.norm(v)
    data[1, :, r, c] = w
    cube = set_embeddings(cube, data)
    covered = float(cube["coverage"].values.astype(np.float64).sum())
    table = ops.change_summary(cube, threshold=0.2)
    assert list(table.columns) == [
        "year",
        "baseline",
        "changed_ha",
        "changed_fraction",
        "valid_ha",
        "valid_fraction",
        "mean_similarity",
        "similarity_p10",
        "similarity_p50",
        "similarity_p90",
    ]
    assert table["year"].tolist() == list(YEARS)
    assert table["baseline"].tolist() == [2020] * 3
    rows = table.set_index("year")
    np.testing.assert_allclose(rows["valid_ha"], covered * 0.01, rtol=1e-6)
    np.testing.assert_allclose(rows["valid_fraction"], 1.0, rtol=1e-12)  # data everywhere
    np.testing.assert_allclose(rows.loc[2022, "changed_ha"], covered * 0.01, rtol=1e-6)
    assert rows.loc[2022, "changed_fraction"] == pytest.approx(1.0)
    assert rows.loc[2022, "mean_similarity"] == pytest.approx(0.0, abs=1e-6)
    assert rows.loc[2020, "changed_ha"] == 0.0 and rows.loc[2020, "changed_fraction"] == 0.0
    assert rows.loc[2020, "mean_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert rows.loc[2021, "changed_ha"] == pytest.approx(0.01, rel=1e-6)
    assert rows.loc[2021, "changed_fraction"] == pytest.approx(1 / covered, rel=1e-6)
    assert rows.loc[2021, "mean_similarity"] == pytest.approx(1 - 0.5 / covered, abs=1e-6)
    for p in (10, 50, 90):
        assert rows.loc[2022, f"similarity_p{p}"] == pytest.approx(0.0, abs=1e-6)
    # a higher threshold than the 2021 turn (0.5) sees no change there
    assert ops.change_summary(cube, threshold=0.6).set_index("year").loc[2021, "changed_ha"] == 0


def test_change_summary_percentiles_are_weighted_quantiles(rotation):
    angles, cube = rotation
    table = ops.change_summary(cube, baseline=2018, percentiles=(25, 75))
    cov = cube["coverage"].values.astype(np.float64)
    sim = np.cos(angles - angles[0])
    for i, year in enumerate(cube["year"].values):
        row = table.iloc[i]
        assert row["year"] == year
        valid = cov > 0
        mean = (sim[i] * cov)[valid].sum() / cov[valid].sum()
        assert row["mean_similarity"] == pytest.approx(mean, abs=2e-6)
        for p in (25, 75):
            q = ops.weighted_quantile(sim[i].ravel(), cov.ravel(), p / 100)
            assert row[f"similarity_p{p}"] == pytest.approx(float(q), abs=2e-6)


# --- search -----------------------------------------------------------------------


@pytest.mark.parametrize("chunks", list(ALL_CHUNKS.values()), ids=list(ALL_CHUNKS))
def test_search_query_kinds(chunks):
    cube_np = make_cube(years=YEARS, shape=(16, 18), seed=3)
    data = cube_np["embeddings"].values.astype(np.float64)
    cube = cube_np.chunk(chunks) if chunks else cube_np
    inside = cube_np["coverage"].values > 0
    site = _site_ll(cube_np)
    x, y = float(cube_np.x[2]), float(cube_np.y[13])
    with raise_if_dask_computes():
        by_vector = ops.search(cube, planted_vector(3))
        by_polygon = ops.search(cube, site, year=2021)
        by_mapping = ops.search(cube, shapely.geometry.mapping(site))
        by_location = ops.search(cube, (x + 4.0, y - 3.0), year=2022)  # nearest pixel
    assert by_vector.dims == ("year", "y", "x") and by_vector.dtype == np.float32
    np.testing.assert_allclose(by_vector.values[:, inside], 1.0, atol=2e-7)
    # the polygon's mean is the planted vector, so polygon queries equal the vector query
    for result in (by_polygon, by_mapping):
        np.testing.assert_allclose(result.values, by_vector.values, atol=1e-6)
    expected = numpy_cosine(data, data[2, :, 13, 2][None, :, None, None], axis=1)
    np.testing.assert_allclose(by_location.values, expected, atol=1e-6)
    assert by_location.values[2, 13, 2] == pytest.approx(1.0, abs=2e-7)
    values = by_location.values
    assert values.min() >= -1 and values.max() <= 1


def test_search_known_rotation(rotation):
    _angles, cube = rotation
    data = cube["embeddings"].values
    query = data[1, :, 0, 0]  # the pixel's vector at pi/3, its year-0 vector is cos 1/2 away
    np.testing.assert_allclose(ops.search(cube, query).values[:, 0, 0], [0.5, 1, 0.866025, -0.5],
                               atol=2e-6)  # fmt: skip


def test_search_errors():
    cube = make_cube(years=YEARS, shape=(4, 4))
    with pytest.raises(ValueError, match=r"query must be a 64-vector.*shape \(10,\)"):
        ops.search(cube, np.zeros(10))
    with pytest.raises(ValueError, match=r"query must be a 64-vector.*shape \(2, 64\)"):
        ops.search(cube, np.zeros((2, 64)))
    with pytest.raises(ValueError, match=r"query location \(0.0, 0.0\) is outside the cube"):
        ops.search(cube, (0.0, 0.0))
    x_edge = float(cube.x[-1]) + 6.0  # just past the last pixel's east edge
    with pytest.raises(ValueError, match="outside the cube"):
        ops.search(cube, (x_edge, float(cube.y[0])))
    with pytest.raises(ValueError, match=r"year 2030 is not in the cube"):
        ops.search(cube, planted_vector(), year=2030)
    with pytest.raises(ValueError, match="query polygon does not overlap the cube"):
        ops.search(cube, shapely.box(10.0, 10.0, 10.01, 10.01))


# --- composites -------------------------------------------------------------------


def test_rgb_stretch_is_exact():
    cube = make_cube(years=(2020, 2021), shape=(4, 6))
    data = cube["embeddings"].values.copy()
    row = np.array([-0.3, 0.3, 0.0, 0.15, -1.0, 1.0], np.float32)
    data[0, 1, 0, :] = row  # A01: red
    data[0, 16, 0, :] = row[::-1]  # A16: green
    data[0, 9, 0, :] = 0.0  # A09: blue
    data[1, :, 2, 3] = np.nan
    img = ops.rgb(set_embeddings(cube, data))
    assert img.dtype == np.uint8
    assert img.dims == ("year", "y", "x", "channel")
    assert img.shape == (2, 4, 6, 4)
    assert img["channel"].values.tolist() == ["r", "g", "b", "a"]
    # vmin -> 0, vmax -> 255, midpoint 127.5 -> 128, 0.15 -> 191.25 -> 191, clipped outside
    np.testing.assert_array_equal(img.values[0, 0, :, 0], [0, 255, 128, 191, 0, 255])
    np.testing.assert_array_equal(img.values[0, 0, :, 1], [255, 0, 191, 128, 255, 0])
    np.testing.assert_array_equal(img.values[0, 0, :, 2], 128)
    np.testing.assert_array_equal(img.values[0, 0, :, 3], 255)
    np.testing.assert_array_equal(img.values[1, 2, 3], [0, 0, 0, 0])  # NaN: transparent
    assert (img.values[..., 3] == 255).sum() == 2 * 4 * 6 - 1


def test_rgb_per_channel_stretch_matches_formula(cube_np):
    vmin, vmax = (-0.1, -0.2, 0.0), (0.1, 0.3, 0.05)
    img = ops.rgb(cube_np, ("A05", "A06", "A07"), vmin=vmin, vmax=vmax).values
    bands = cube_np["embeddings"].sel(band=["A05", "A06", "A07"]).values.astype(np.float64)
    lo, hi = np.array(vmin)[None, :, None, None], np.array(vmax)[None, :, None, None]
    expected = np.round(np.clip((bands - lo) / (hi - lo), 0, 1) * 255)
    valid = ~np.isnan(bands).any(axis=1)
    got = np.moveaxis(img[..., :3], -1, 1).astype(np.float64)
    assert np.abs(got - expected)[np.broadcast_to(valid[:, None], got.shape)].max() <= 1
    np.testing.assert_array_equal(img[..., 3], np.where(valid, 255, 0))
    all_nan = np.isnan(bands).all(axis=1)
    assert all_nan.sum() == 4  # (0, 0) in every year, one pixel in 2021
    np.testing.assert_array_equal(img[all_nan], 0)


def test_rgb_partly_missing_pixel_is_transparent_black(cube_np):
    # analysis_cube lacks A07 at year 2020, y=20, x=2; A05 and A06 are there.
    img = ops.rgb(cube_np, ("A05", "A06", "A07"), vmin=-0.3, vmax=0.3)
    np.testing.assert_array_equal(img.values[0, 20, 2], [0, 0, 0, 0])


def test_rgb_errors():
    cube = make_cube(shape=(4, 4))
    with pytest.raises(ValueError, match=r"three band names from A00..A63.*unknown: \['B99'\]"):
        ops.rgb(cube, bands=("A01", "A02", "B99"))
    with pytest.raises(ValueError, match="three band names"):
        ops.rgb(cube, bands=("A01", "A02"))
    with pytest.raises(ValueError, match=r"bands \['A03'\] are not in the cube"):
        ops.rgb(cube.sel(band=["A01", "A02", "A04"]), bands=("A01", "A02", "A03"))
    with pytest.raises(ValueError, match=r"vmax must exceed vmin, got vmin=0.3, vmax=-0.3"):
        ops.rgb(cube, vmin=0.3, vmax=-0.3)
    with pytest.raises(ValueError, match="vmax must exceed vmin"):
        ops.rgb(cube, vmin=0.1, vmax=0.1)
    with pytest.raises(ValueError, match="vmax must exceed vmin"):
        ops.rgb(cube, vmin=(-0.3, 0.2, -0.3), vmax=(0.3, 0.1, 0.3))


def test_rgb_rejects_nan_stretch():
    with pytest.raises(ValueError, match="vmin"):
        ops.rgb(make_cube(shape=(4, 4)), vmin=np.nan)


def test_rgb_bad_stretch_length_message():
    with pytest.raises(ValueError, match="vmin"):
        ops.rgb(make_cube(shape=(4, 4)), vmin=(-0.3, -0.3), vmax=0.3)


def _same_vector_in_two_years(chunks: dict | None = None) -> xr.Dataset:
    cube = make_cube(years=YEARS, shape=(12, 14), seed=9)
    data = cube["embeddings"].values.copy()
    w = np.random.default_rng(11).normal(size=64).astype(np.float32)
    data[0, :, 0, 1] = w  # two pixels outside the polygon, in different years
    data[2, :, 11, 12] = w
    data[1, :, 10, 0] = np.nan
    cube = set_embeddings(cube, data)
    return cube.chunk(chunks) if chunks else cube


@pytest.mark.parametrize("chunks", list(ALL_CHUNKS.values()), ids=list(ALL_CHUNKS))
def test_pca_rgb_identical_vectors_identical_colours(chunks):
    cube = _same_vector_in_two_years(chunks)
    with raise_if_dask_computes():
        img = ops.pca_rgb(cube, sample=5000)
    values = img.values
    assert img.dtype == np.uint8 and img.dims == ("year", "y", "x", "channel")
    assert img["channel"].values.tolist() == ["r", "g", "b", "a"]
    np.testing.assert_array_equal(values[0, 0, 1], values[2, 11, 12])
    assert values[0, 0, 1, 3] == 255
    assert not np.array_equal(values[1, 0, 1], values[0, 0, 1])  # not the same vector there
    np.testing.assert_array_equal(values[1, 10, 0], [0, 0, 0, 0])
    # the planted polygon holds one vector in every year: one colour
    inside = make_cube(years=YEARS, shape=(12, 14), seed=9)["coverage"].values > 0
    colours = values[:, inside].reshape(-1, 4)
    assert len(np.unique(colours, axis=0)) == 1


def test_pca_rgb_matches_independent_pca():
    cube = _same_vector_in_two_years()
    img = ops.pca_rgb(cube, sample=10**6, percentiles=(0.0, 100.0)).values
    x = np.moveaxis(cube["embeddings"].values.astype(np.float64), 1, -1)  # year, y, x, band
    valid = ~np.isnan(x).any(axis=-1)
    centred = x[valid] - x[valid].mean(axis=0)
    cov = centred.T @ centred
    _eigval, eigvec = np.linalg.eigh(cov)
    for channel in range(3):
        pc = eigvec[:, -1 - channel]
        scores = centred @ pc
        stretched = (scores - scores.min()) / (scores.max() - scores.min()) * 255
        got = img[..., channel][valid].astype(np.float64)
        # PCA components have no sign: compare with either orientation
        err = min(np.abs(got - stretched).max(), np.abs(got - (255 - stretched)).max())
        assert err <= 1.0, channel
        assert got.min() == 0 and got.max() == 255  # percentiles 0/100: the full range


def test_pca_rgb_uniform_site_stays_opaque():
    cube = make_cube(years=YEARS, shape=(8, 8), clip=True)  # one planted vector, rest NaN
    img = ops.pca_rgb(cube).values
    inside = cube["coverage"].values > 0
    np.testing.assert_array_equal(img[:, inside, 3], 255)
    assert len(np.unique(img[:, inside].reshape(-1, 4), axis=0)) == 1


def test_pca_rgb_errors():
    cube = make_cube(years=YEARS, shape=(6, 6))
    with pytest.raises(ValueError, match="n_components >= 3"):
        ops.pca_rgb(cube, n_components=2)
    with pytest.raises(ValueError, match=r"percentiles must be \(low, high\)"):
        ops.pca_rgb(cube, percentiles=(98.0, 2.0))
    with pytest.raises(ValueError, match=r"fit_on year 2030 is not in the cube"):
        ops.pca_rgb(cube, fit_on=[2030])


def _clustered_cube(chunks: dict | None = None) -> tuple[xr.Dataset, np.ndarray]:
    """Three well separated clusters, assigned per pixel and year, a few masked pixels."""
    cube = make_cube(years=YEARS, shape=(12, 10), seed=12)
    rng = np.random.default_rng(12)
    centres = np.eye(64)[:3] * 5.0
    truth = rng.integers(0, 3, size=(3, 12, 10))
    data = centres[truth].transpose(0, 3, 1, 2) + 0.05 * rng.normal(size=(3, 64, 12, 10))
    data[:, :, 0, :3] = np.nan
    truth[:, 0, :3] = -1
    cube = set_embeddings(cube, data)
    return (cube.chunk(chunks) if chunks else cube), truth


@pytest.mark.parametrize("chunks", list(ALL_CHUNKS.values()), ids=list(ALL_CHUNKS))
def test_kmeans_recovers_planted_clusters(chunks):
    cube, truth = _clustered_cube(chunks)
    with raise_if_dask_computes():
        labels = ops.kmeans(cube, k=3, seed=1)
    values = labels.values
    assert labels.dims == ("year", "y", "x")
    assert np.issubdtype(values.dtype, np.integer)
    np.testing.assert_array_equal(values == -1, truth == -1)
    assert set(np.unique(values[truth >= 0]).tolist()) == {0, 1, 2}
    # the same partition as the truth (labels are a permutation of the planted classes)
    pairs = set(zip(truth[truth >= 0].tolist(), values[truth >= 0].tolist(), strict=True))
    assert len(pairs) == 3


def test_kmeans_deterministic_and_same_label_across_years():
    cube = _same_vector_in_two_years()
    a = ops.kmeans(cube, k=5, seed=4, sample=300)
    b = ops.kmeans(cube, k=5, seed=4, sample=300)
    xr.testing.assert_identical(a, b)
    values = a.values
    assert values[0, 0, 1] == values[2, 11, 12]
    assert values[1, 10, 0] == -1
    assert set(np.unique(values).tolist()) <= {-1, 0, 1, 2, 3, 4}
    inside = cube["coverage"].values > 0
    assert len(np.unique(values[:, inside])) == 1  # one planted vector, one class


def test_kmeans_errors():
    cube = make_cube(shape=(4, 4))  # 2 years x 16 pixels
    with pytest.raises(ValueError, match=r"only 32 pixels with data to fit 33 clusters; lower k"):
        ops.kmeans(cube, k=33)
    lazy = ops.kmeans(cube.chunk({"y": 2}), k=33)
    with pytest.raises(ValueError, match="lower k"):
        lazy.compute()
    with pytest.raises(ValueError, match="k must be a positive number of clusters, got 0"):
        ops.kmeans(cube, k=0)
    with pytest.raises(ValueError, match=r"fit_on year 1999 is not in the cube"):
        ops.kmeans(cube, fit_on=[1999])


# --- properties (hypothesis) ----------------------------------------------------------


@st.composite
def embeddings(draw, max_years: int = 3, max_side: int = 4) -> xr.DataArray:
    """Random quantised embeddings (year, band, y, x), some pixels zero, some NaN."""
    n_years = draw(st.integers(2, max_years))
    ny, nx = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    q = draw(hnp.arrays(np.int8, (n_years, 64, ny, nx), elements=st.integers(-127, 127)))
    special = draw(hnp.arrays(np.int8, (n_years, ny, nx), elements=st.integers(0, 5)))
    values = dequantize(q)
    values[np.broadcast_to((special == 0)[:, None], values.shape)] = 0.0
    values[np.broadcast_to((special == 1)[:, None], values.shape)] = np.nan
    return xr.DataArray(
        values,
        dims=("year", "band", "y", "x"),
        coords={"year": np.arange(2018, 2018 + n_years), "band": list(BANDS)},
    )


PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)


@PROPERTY_SETTINGS
@given(emb=embeddings())
def test_property_pairwise_bounds_symmetry_diagonal(emb):
    sim = ops.pairwise_similarity(emb).values
    finite = sim[~np.isnan(sim)]
    assert ((finite >= -1) & (finite <= 1)).all()
    np.testing.assert_array_equal(sim, np.swapaxes(sim, 0, 1))
    norms = np.linalg.norm(emb.values.astype(np.float64), axis=1)  # year, y, x
    diag = np.einsum("iiyx->iyx", sim)
    nonzero = np.isfinite(norms) & (norms > 0)
    np.testing.assert_array_equal(diag[nonzero], 1.0)
    assert np.isnan(diag[~nonzero]).all()
    reference = numpy_cosine(emb.values[:, None], emb.values[None, :], axis=2)
    np.testing.assert_allclose(sim, reference, atol=1e-6)


@PROPERTY_SETTINGS
@given(
    emb=embeddings(),
    scale=hnp.arrays(np.float64, 4, elements=st.floats(1e-3, 1e3)),
)
def test_property_scaling_invariance(emb, scale):
    n_years = emb.sizes["year"]
    factor = xr.DataArray(scale[:n_years], dims="year")
    scaled = (emb * factor).astype(np.float32)
    for func in (ops.pairwise_similarity, ops.similarity, lambda e: ops.similarity(e, "first")):
        np.testing.assert_allclose(func(scaled).values, func(emb).values, atol=2e-6)
    query = np.linspace(-1, 1, 64)
    np.testing.assert_allclose(
        ops.search(scaled, query * 17.0).values, ops.search(emb, query).values, atol=2e-6
    )


@settings(max_examples=25, deadline=None)
@given(
    emb=embeddings(max_years=3, max_side=5),
    ychunk=st.integers(1, 5),
    xchunk=st.integers(1, 5),
    split_years=st.booleans(),
)
def test_property_dask_equals_numpy(emb, ychunk, xchunk, split_years):
    chunks = {"y": ychunk, "x": xchunk, "year": 1 if split_years else -1}
    lazy_emb = emb.chunk(chunks)
    for func in (
        ops.pairwise_similarity,
        ops.similarity,
        lambda e: ops.similarity(e, int(e["year"][-1])),
        lambda e: ops.search(e, np.arange(64.0) - 31.5),
        lambda e: ops.polygon_mean(e, reducer="mean"),
    ):
        eager = func(emb)
        with raise_if_dask_computes():
            lazy = func(lazy_emb)
        assert isinstance(lazy.data, da.Array)
        np.testing.assert_allclose(lazy.values, eager.values, atol=1e-6, rtol=1e-6)


@PROPERTY_SETTINGS
@given(
    means=hnp.arrays(
        np.float64,
        (3, 64),
        elements=st.one_of(st.just(0.0), st.floats(1e-3, 1.0), st.floats(-1.0, -1e-3)),
    )
)
def test_property_similarity_matrix(means):
    da_means = xr.DataArray(means, dims=("year", "band"), coords={"year": [2019, 2020, 2021]})
    sim = ops.similarity_matrix(da_means).values
    np.testing.assert_array_equal(sim, sim.T)
    nonzero = np.linalg.norm(means, axis=1) > 0
    np.testing.assert_array_equal(np.diag(sim)[nonzero], 1.0)
    finite = sim[~np.isnan(sim)]
    assert ((finite >= -1) & (finite <= 1)).all()
    raw = ops.similarity_matrix(da_means, normalize=False).values
    np.testing.assert_allclose(raw, means @ means.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reducer", ["min", "max"])
def test_min_max_on_chunks_outside_the_polygon_do_not_warn(reducer: str) -> None:
    import warnings

    from xembed.testing import make_cube

    # 8 x 8 px chunks: the corner chunks hold no pixel of the polygon
    cube = make_cube(shape=(32, 32), chunks={"y": 8, "x": 8}, clip=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ops.polygon_mean(cube, reducer=reducer).values
    expected = ops.polygon_mean(cube.compute(), reducer=reducer).values
    np.testing.assert_array_equal(got, expected)
    assert np.isfinite(got).all()


# --- per-pixel similarity on year-chunked cubes (issue 11, target 7) ---------------

YEAR_CHUNKED = {
    "year-1": {"year": 1},
    "year-1-yx": {"year": 1, "y": 7, "x": 9},
    "year-2": {"year": 2, "y": 12},
    "year-1-band-16": {"year": 1, "band": 16},
}


def five_year_cube() -> xr.Dataset:
    """Five years (a reference in the middle) with NaN pixels, a zero vector, a missing band."""
    cube = make_cube(years=(2018, 2019, 2020, 2021, 2022), shape=SHAPE, seed=4, clip=True)
    data = cube["embeddings"].values.copy()
    data[2, :, 5, 6] = 0.0  # a zero vector in the middle year
    data[0, 7, 20, 2] = np.nan  # one band missing in the first year
    data[3, :, 11, 3] = np.nan  # masked in one year only
    return set_embeddings(cube, data)


def readers_of_input_chunks(result: xr.DataArray, cube: xr.Dataset) -> list[int]:
    """For each chunk of ``cube``'s embeddings: how many tasks of ``result`` read it."""
    from dask.core import get_deps

    name = cube["embeddings"].data.name
    graph = dict(result.data.__dask_graph__())
    _, dependents = get_deps(graph)
    return [len(d) for k, d in dependents.items() if isinstance(k, tuple) and k[0] == name]


@pytest.mark.parametrize("chunks", list(YEAR_CHUNKED.values()), ids=list(YEAR_CHUNKED))
@pytest.mark.parametrize("reference", ["first", 2020, 2022, "previous"])
def test_similarity_on_year_chunks_equals_numpy_and_default_chunks(chunks, reference):
    cube = five_year_cube()
    expected = ops.similarity(cube, reference)
    default = ops.similarity(cube.chunk({"y": 8, "x": 8}), reference).compute()
    with raise_if_dask_computes():
        lazy = ops.similarity(cube.chunk(chunks), reference)
    assert lazy.chunks[0] == (5,)  # a tile's years in one output chunk (1/64 of the input)
    for other in (lazy.compute(), default):
        assert other.dtype == np.float32 and other.dims == ("year", "y", "x")
        np.testing.assert_array_equal(np.isnan(other.values), np.isnan(expected.values))
        np.testing.assert_allclose(other.values, expected.values, rtol=0, atol=1e-6)
    xr.testing.assert_identical(lazy.compute(), expected)  # same arithmetic: same bits


@pytest.mark.parametrize("reference", ["first", 2020, "previous"])
def test_similarity_on_year_chunks_merges_no_year_chunks(reference):
    cube = five_year_cube().chunk({"year": 1, "y": 12, "x": 10})
    with raise_if_dask_computes():
        result = ops.similarity(cube, reference)
        changed = ops.change(cube, 2019)
    for lazy in (result, changed):
        layers = list(lazy.data.__dask_graph__().layers)
        assert not [n for n in layers if "rechunk" in n], layers
        # each year chunk is read by one task, as the numpy kernel reads each year once
        assert set(readers_of_input_chunks(lazy, cube)) == {1}
    # The check itself sees a merge: the pairwise cosines need every year at once.
    with raise_if_dask_computes():
        pairwise = ops.pairwise_similarity(cube)
    assert [n for n in pairwise.data.__dask_graph__().layers if "rechunk" in n]
