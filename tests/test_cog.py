"""The COG mirror reader, checked pixel by pixel against a planted pattern."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyproj
import pytest
import rasterio
import shapely
from rasterio.windows import Window

import xembed
from tests.conftest import YEARS, mirror_images, write_mirror
from xembed.errors import DataNotFoundError, SourceError
from xembed.schema import dequantize
from xembed.sources import cog, ranges, windows
from xembed.sources import index as mirror_index
from xembed.testing import raise_if_dask_computes


def lonlat_polygon(crs: str, coords: list[tuple[float, float]]) -> shapely.Polygon:
    to_ll = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return shapely.Polygon([to_ll.transform(x, y) for x, y in coords])


def image_box(zone: int, c0: float, r0: float, c1: float, r1: float) -> shapely.Polygon:
    """A polygon over image pixels [c0, c1) x [r0, r1) of a zone's image, in lon/lat."""
    _, west, north, crs = mirror_images()[zone, YEARS[0]]
    x0, x1 = west + 10 * c0, west + 10 * c1
    y0, y1 = north - 10 * r1, north - 10 * r0
    return lonlat_polygon(crs, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def expected_cube(ds) -> np.ndarray:
    """The cube the planted images imply, by a per-pixel nearest-neighbour lookup."""
    crs = ds.rio.crs.to_string()
    xx, yy = np.meshgrid(ds.x.values, ds.y.values)
    out = np.full((ds.sizes["year"], 64, *xx.shape), -128, dtype=np.int8)
    for i, year in enumerate(ds.year.values):
        for zone in (22, 23):  # the mosaic order: paths sort 22S before 23S
            q, west, north, icrs = mirror_images()[zone, int(year)]
            sx, sy = pyproj.Transformer.from_crs(crs, icrs, always_xy=True).transform(xx, yy)
            col = np.floor((sx - west) / 10).astype(int)
            row = np.floor((north - sy) / 10).astype(int)
            ok = (col >= 0) & (col < q.shape[2]) & (row >= 0) & (row < q.shape[1])
            vals = q[:, row[ok], col[ok]]
            out[i][:, ok] = np.where(vals != -128, vals, out[i][:, ok])
    return dequantize(out)


@pytest.fixture(scope="module")
def root(mini_mirror):
    return mini_mirror[0]


SAME_ZONE = dict(zone=22, c0=3.5, r0=20.2, c1=38.7, r1=70.9)  # crosses the 2020 gap and file edges


def test_reader_exact_in_one_zone(root):
    site = image_box(**SAME_ZONE)
    ds = xembed.open_embeddings(site, YEARS, source=root, clip=False, chunks=16)
    assert ds.rio.crs.to_epsg() == 32722
    values = ds.embeddings.values
    np.testing.assert_array_equal(values, expected_cube(ds))
    assert np.isnan(values[1]).any(), "the 2020 gap must come through as NaN"
    assert not np.isnan(values[0]).any()


def test_reader_equals_plain_rasterio_read(root):
    """Same-zone window read straight from one file, flipped and de-quantised."""
    site = image_box(22, 1.5, 42, 38.5, 78)  # inside the file (yOff=40, xOff=0)
    ds = xembed.open_embeddings(site, [2019], source=root, clip=False)
    path = root / "2019/22S/img22abcdefghijklm-0000000040-0000000000.tiff"
    with rasterio.open(path) as src:
        assert src.transform.e > 0, "the fixture must be bottom-up"
        col0 = round((ds.x.values[0] - 5 - src.transform.c) / 10)
        # bottom-up: source row of the cube's southern-most row
        row0 = round((ds.y.values[-1] - 5 - src.transform.f) / 10)
        raw = src.read(window=Window(col0, row0, ds.sizes["x"], ds.sizes["y"]))
    assert raw.shape == (64, 36, 38)
    reference = dequantize(raw[:, ::-1, :])
    got = ds.embeddings.isel(year=0).values
    np.testing.assert_array_equal(got, reference)


def test_reader_mosaics_across_the_zone_boundary(root):
    to_22 = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32722", always_xy=True)
    bx, by = to_22.transform(-48.0, -22.6)
    # centroid just west of -48: zone 22; the east part needs zone 23, warped
    site = lonlat_polygon(
        "EPSG:32722",
        [(bx - 250, by - 200), (bx + 180, by - 200), (bx + 180, by + 150), (bx - 250, by + 150)],
    )
    ds = xembed.open_embeddings(site, YEARS, source=root, clip=False, chunks=8)
    assert ds.rio.crs.to_epsg() == 32722
    values = ds.embeddings.values
    np.testing.assert_array_equal(values, expected_cube(ds))
    lon = pyproj.Transformer.from_crs("EPSG:32722", "EPSG:4326", always_xy=True).transform(
        *np.meshgrid(ds.x.values, ds.y.values)
    )[0]
    east = lon > -47.9995
    assert east.any() and not np.isnan(values[0][:, east]).any(), "zone 23 must fill the east"


def test_local_copy_with_upstream_absolute_paths(tmp_path, monkeypatch):
    """The upstream index copied unchanged (absolute s3:// paths) opens offline."""

    def no_network(*args, **kwargs):
        raise AssertionError("must not touch the network")

    monkeypatch.setattr(mirror_index, "http_get", no_network)  # the index
    monkeypatch.setattr(ranges, "_http", no_network)  # headers and tiles
    table = write_mirror(tmp_path, absolute_paths=True)
    assert table["path"].str.startswith("s3://").all()
    index = cog.read_index(tmp_path)
    assert len(index) == len(table)
    assert all(str(tmp_path) in href for href in index["href"])
    ds = xembed.open_embeddings(image_box(**SAME_ZONE), YEARS, source=tmp_path, clip=False)
    np.testing.assert_array_equal(ds.embeddings.values, expected_cube(ds))


def test_index_falls_back_to_csv(tmp_path):
    table = write_mirror(tmp_path)
    (tmp_path / "aef_index.parquet").unlink()
    csv = table.assign(geometry=shapely.from_wkb(table["geometry"]).astype(object))
    csv["geometry"] = [g.wkt for g in shapely.from_wkb(table["geometry"])]
    csv.to_csv(tmp_path / "aef_index.csv", index=False)
    ds = xembed.open_embeddings(image_box(**SAME_ZONE), [2019], source=tmp_path, clip=False)
    np.testing.assert_array_equal(ds.embeddings.values, expected_cube(ds))


def test_open_is_lazy_and_reads_nothing(root, monkeypatch):
    reads = []
    real = cog._read_blocks
    monkeypatch.setattr(cog, "_read_blocks", lambda *a: reads.append(a) or real(*a))
    with raise_if_dask_computes():
        ds = xembed.open_embeddings(image_box(**SAME_ZONE), YEARS, source=root)
        mean = ds.embed.polygon_mean()
    assert reads == [], "opening must not read pixels"
    assert ds.embeddings.chunks is not None
    with raise_if_dask_computes(max_computes=1):
        mean.compute()
    assert reads, "computing reads"


def test_clip_masks_outside_and_keeps_coverage(root):
    site = image_box(**SAME_ZONE)
    ds = xembed.open_embeddings(site, [2019], source=root, buffer=30)
    cov = ds.coverage.values
    emb = ds.embeddings.isel(year=0, band=0).values
    assert (cov == 0).any() and (cov > 0).any()
    # The mask is the polygon grown by the buffer: a pixel wholly farther away is NaN.
    polygon = xembed.grid.project(site, "EPSG:4326", ds.rio.crs)
    xx, yy = np.meshgrid(ds.x.values, ds.y.values)
    far = shapely.distance(polygon, shapely.points(xx, yy)) > 30 + 5 * np.sqrt(2)
    assert far.any() and np.isnan(emb[far]).all()
    assert not np.isnan(emb[cov > 0]).any()
    assert ds.attrs["buffer_m"] == 30.0


def test_grid_is_north_up_on_the_10m_lattice(root):
    ds = xembed.open_embeddings(image_box(**SAME_ZONE), YEARS, source=root)
    assert (np.diff(ds.y.values) == -10).all() and (np.diff(ds.x.values) == 10).all()
    assert ((ds.x.values - 5) % 10 == 0).all() and ((ds.y.values - 5) % 10 == 0).all()
    assert ds.embeddings.dtype == np.float32
    assert ds.rio.transform().e == -10


@pytest.mark.parametrize("chunks", [None, 7, {"year": 1, "band": 16, "y": 5}])
def test_chunking_does_not_change_values(root, chunks):
    site = image_box(**SAME_ZONE)
    ref = xembed.open_embeddings(site, YEARS, source=root, chunks=1000).embeddings.values
    got = xembed.open_embeddings(site, YEARS, source=root, chunks=chunks).embeddings.values
    np.testing.assert_array_equal(got, ref)


# --- bad input ---------------------------------------------------------------


def test_years_not_in_source_lists_available(root):
    with pytest.raises(ValueError, match=r"years \[2018\] are not in source.*\[2019, 2020\]"):
        xembed.open_embeddings(image_box(**SAME_ZONE), [2018, 2019], source=root)


@pytest.mark.parametrize("years", [2016, [2015, 2019], [2999]])
def test_years_outside_collection(root, years):
    with pytest.raises(ValueError, match="outside the collection, which starts in 2017"):
        xembed.open_embeddings(image_box(**SAME_ZONE), years, source=root)


def test_site_outside_footprint(root):
    far = shapely.box(-47.0, -21.0, -46.99, -20.99)
    with pytest.raises(DataNotFoundError, match=r"no embedding files .* cover the site"):
        xembed.open_embeddings(far, YEARS, source=root)


def test_folder_without_index(tmp_path):
    with pytest.raises(SourceError, match=r"no aef_index\.parquet or aef_index\.csv"):
        xembed.open_embeddings(image_box(**SAME_ZONE), YEARS, source=tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        xembed.open_embeddings(image_box(**SAME_ZONE), YEARS, source=tmp_path / "nope" / "x")


def test_index_without_required_columns(tmp_path):
    table = write_mirror(tmp_path)
    table.drop(columns=["utm_zone", "crs"]).to_parquet(tmp_path / "aef_index.parquet")
    with pytest.raises(SourceError, match=r"lacks the columns \['crs', 'utm_zone'\]"):
        xembed.open_embeddings(image_box(**SAME_ZONE), YEARS, source=tmp_path)


def test_unknown_source():
    with pytest.raises(SourceError, match="unknown source 'landsat'; expected one of"):
        xembed.open_embeddings(image_box(**SAME_ZONE), YEARS, source="landsat")


def test_ee_source_rejects_mirror_arguments():
    with pytest.raises(ValueError, match="root= is for mirror sources"):
        xembed.open_embeddings(image_box(**SAME_ZONE), YEARS, source="ee", root="/tmp")
    with pytest.raises(ValueError, match="project= is only for source='ee'"):
        xembed.open_embeddings(image_box(**SAME_ZONE), YEARS, source="sample", project="p")


def test_bad_buffer_and_chunks(root):
    with pytest.raises(ValueError, match="buffer must be >= 0"):
        xembed.open_embeddings(image_box(**SAME_ZONE), YEARS, source=root, buffer=-5)
    with pytest.raises(ValueError, match=r"unknown dimensions \['time'\]"):
        xembed.open_embeddings(image_box(**SAME_ZONE), YEARS, source=root, chunks={"time": 1})


def test_https_urls_for_cloud_roots():
    assert cog.https_url("https://example.org/a.tiff") == "https://example.org/a.tiff"
    assert cog.https_url("s3://bucket/key.tiff") == "https://bucket.s3.amazonaws.com/key.tiff"
    with pytest.raises(SourceError, match="unsupported URL scheme"):
        cog.https_url("ftp://x/y")


@pytest.mark.network
def test_remote_mirror_opens_a_real_site():
    """The public Source Cooperative mirror, anonymously (needs the internet)."""
    site = shapely.box(-47.95, -22.61, -47.94, -22.60)
    ds = xembed.open_embeddings(site, [2023], source="cog")
    norms = np.sqrt((ds.embeddings.isel(year=0) ** 2).sum("band")).values
    assert np.nanmedian(norms) == pytest.approx(1.0, abs=0.05)
    assert isinstance(ds.embed.to_frame(), pd.DataFrame)


def test_dequantize_table_equals_the_formula():
    q = np.arange(-128, 128).astype(np.int8).reshape(16, 16)[:, ::-1]  # strided view too
    table = dequantize(q)
    f = q.astype(np.float32) / np.float32(127.5)
    formula = np.where(q == -128, np.float32(np.nan), np.sign(f) * f * f)
    assert table.dtype == np.float32 and table.shape == q.shape
    np.testing.assert_array_equal(table.view(np.int32), formula.astype(np.float32).view(np.int32))
    exact = np.sign(q.astype(np.float64)) * (q.astype(np.float64) / 127.5) ** 2
    # float32 arithmetic: three roundings of at most half an ulp each
    np.testing.assert_allclose(table[q != -128], exact[q != -128], rtol=3 * 2.0**-24)
    # other integer and float inputs take the formula: the same values
    np.testing.assert_array_equal(dequantize(q.astype(np.int16)), table)


@pytest.mark.parametrize(
    "index, expected",
    [
        ([0, 1, 2, 3], slice(0, 4, 1)),
        ([5, 4, 3], slice(5, 2, -1)),
        ([2, 1, 0], slice(2, None, -1)),  # a stop of -1 would mean "the last"
        ([7], slice(7, 8, 1)),
        ([0, 1, 3], None),
        ([0, 2, 4], None),
        ([0, 1, 0, 1, 2, 3, 2, 3], None),  # endpoints of a run, not a run
    ],
)
def test_index_runs_become_slices(index, expected):
    index = np.array(index)
    got = windows.as_run(index)
    if expected is None:
        assert got is index
    else:
        assert got == expected
        data = np.arange(10) * 3
        np.testing.assert_array_equal(data[got], data[index])


def test_reader_integer_keys_like_numpy(root):
    from xembed.sources.common import site_grid

    site = image_box(**SAME_ZONE)
    grid, _ = site_grid(xembed.sites.as_site(site), buffer=0)
    reader = cog.MosaicReader(grid, YEARS, cog.plan_mosaic(root, grid, YEARS))
    whole = reader[:]
    assert whole.shape == reader.shape
    np.testing.assert_array_equal(reader[-1], whole[-1])  # negative: from the end
    np.testing.assert_array_equal(reader[0, 5, -1], whole[0, 5, -1])
    np.testing.assert_array_equal(reader[:, [1, 3], 2:4], whole[:, [1, 3], 2:4])
    with pytest.raises(IndexError, match="out of bounds for axis 0"):
        reader[len(YEARS)]
