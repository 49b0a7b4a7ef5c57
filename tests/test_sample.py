"""The sample mirror and the mirror writer: exact on-disk format, layout, content."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine

from xembed.schema import BANDS, NODATA, dequantize, quantize
from xembed.sources import mirror, sample

NAME = re.compile(r"^(\d{4})/(\d{1,2}[NS])/([0-9a-z]{17})-(\d{10})-(\d{10})\.tiff$")
BOUNDARY = -48.0


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated sample (the session's cache when XEMBED_CACHE is set)."""
    if os.environ.get("XEMBED_CACHE"):
        return sample.sample_root()
    return sample.sample_root(cache=tmp_path_factory.mktemp("xembed-cache"))


@pytest.fixture(scope="session")
def index(sample_root: Path) -> gpd.GeoDataFrame:
    return gpd.read_parquet(sample_root / "aef_index.parquet")


@pytest.fixture(scope="session")
def sites() -> list[tuple[int, int, shapely.Geometry]]:
    """(rid, start_year, lon/lat geometry) read straight from the packaged GeoJSON."""
    obj = json.loads(sample.demo_sites_path().read_text())
    to_ll = pyproj.Transformer.from_crs("EPSG:5880", "EPSG:4326", always_xy=True)
    out = []
    for f in obj["features"]:
        geom = shapely.transform(
            shapely.geometry.shape(f["geometry"]),
            lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])),
        )
        out.append((f["properties"]["rid"], f["properties"]["start_year"], geom))
    return out


def site(sites, rid):
    return next(geom for r, _, geom in sites if r == rid)


def pixel_centres(src) -> tuple[np.ndarray, np.ndarray]:
    t = src.transform
    cols, rows = np.meshgrid(np.arange(src.width) + 0.5, np.arange(src.height) + 0.5)
    return t.c + t.a * cols, t.f + t.e * rows


def pixels_in(root: Path, index: gpd.GeoDataFrame, geom, year: int) -> np.ndarray:
    """int8 vectors ``(n, 64)`` of every pixel whose centre is inside ``geom`` (plain rasterio)."""
    rows = index[(index["year"] == year) & index.intersects(geom)]
    out = []
    for path, crs in zip(rows["path"], rows["crs"], strict=True):
        with rasterio.open(root / path) as src:
            q = src.read()
            x, y = pixel_centres(src)
        to_utm = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        local = shapely.transform(
            geom, lambda xy, t=to_utm: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))
        )
        inside = shapely.contains_xy(local, x, y)
        out.append(q[:, inside].T)
    return np.concatenate(out)


def site_mean(root, index, geom, year) -> np.ndarray:
    q = pixels_in(root, index, geom, year)
    q = q[(q != NODATA).all(axis=1)]
    return dequantize(q).mean(axis=0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# --------------------------------------------------------------------------- layout


def test_layout_matches_the_index(sample_root: Path, index: gpd.GeoDataFrame) -> None:
    on_disk = {p.relative_to(sample_root).as_posix() for p in sample_root.glob("*/*/*.tiff")}
    assert on_disk == set(index["path"])
    images = sample.sample_images()
    assert len(index) == len(sample.SAMPLE_YEARS) * len(images) * 4
    assert sorted(index["year"].unique()) == list(sample.SAMPLE_YEARS)
    for path, year, zone in zip(index["path"], index["year"], index["utm_zone"], strict=True):
        m = NAME.match(path)
        assert m, path
        assert (int(m[1]), m[2]) == (year, zone)
        assert int(m[4]) in (0, sample.FILE_PX) and int(m[5]) in (0, sample.FILE_PX)
    ids = index["path"].str.split("/").str[2].str[:17]
    # each EE image id: one year, one zone, 2 x 2 files; a different id every year
    assert (ids.value_counts() == 4).all()
    assert ids.nunique() == len(images) * len(sample.SAMPLE_YEARS)
    assert set(index["utm_zone"]) == {"22S", "23S"}
    assert set(index["crs"]) == {"EPSG:32722", "EPSG:32723"}


def test_index_columns_and_footprints(sample_root: Path, index: gpd.GeoDataFrame) -> None:
    assert tuple(index.columns) == mirror.INDEX_COLUMNS
    assert index.crs.equals("EPSG:4326")
    assert index["year"].dtype == np.int64
    csv = pd.read_csv(sample_root / "aef_index.csv")
    assert tuple(csv.columns) == mirror.INDEX_COLUMNS
    assert csv["path"].tolist() == index["path"].tolist()
    wkt = gpd.GeoSeries.from_wkt(csv["geometry"], crs=4326)
    assert (shapely.hausdorff_distance(wkt.values, index.geometry.values) < 1e-6).all()
    zone22 = index["utm_zone"] == "22S"
    assert (index.loc[zone22, "wgs84_east"] <= BOUNDARY).all()
    assert (index.loc[~zone22, "wgs84_west"] >= BOUNDARY).all()
    # files beyond the boundary keep a strip of data: their footprint touches -48
    assert (index.loc[zone22, "wgs84_east"] == BOUNDARY).sum() == 2 * 2 * 8
    bounds = index.geometry.bounds
    for side in ("west", "south", "east", "north"):
        col = {"west": "minx", "south": "miny", "east": "maxx", "north": "maxy"}[side]
        np.testing.assert_allclose(index[f"wgs84_{side}"], bounds[col])
    for row in index[index["year"] == 2020].itertuples():
        with rasterio.open(sample_root / row.path) as src:
            assert src.crs.to_string() == row.crs
            t = src.transform  # bottom-up: the origin is the south-west corner
            bounds = (t.c, t.f, t.c + t.a * src.width, t.f + t.e * src.height)
            assert bounds == (row.utm_west, row.utm_south, row.utm_east, row.utm_north)


# --------------------------------------------------------------------------- file format


def check_mirror_file(path: Path, blocksize: int) -> None:
    with rasterio.open(path) as src:
        assert src.driver == "GTiff"
        assert src.count == 64 and set(src.dtypes) == {"int8"}
        assert src.descriptions == BANDS
        assert set(src.nodatavals) == {NODATA}
        assert src.compression.name == "zstd"
        assert src.profile["tiled"] and set(src.block_shapes) == {(blocksize, blocksize)}
        assert src.profile["interleave"] == "band"
        assert src.transform.e > 0 and src.transform.a > 0  # bottom-up
        overviews = src.overviews(1)
        assert overviews and all(src.overviews(b) == overviews for b in (2, 64))
    with rasterio.open(path, overview_level=len(overviews) - 1) as top:
        assert top.shape == (1, 1)
    assert mirror.cog_layout_problems(path) == []
    tags = mirror._tiff_tags(path)
    assert {t[284] for t in tags} == {(2,)}  # PlanarConfiguration: separate
    assert {t[259] for t in tags} == {(50000,)}  # ZSTD everywhere
    assert {t[322] for t in tags} == {(blocksize,)}  # overviews tiled alike


def test_every_file_has_the_mirror_format(sample_root: Path, index: gpd.GeoDataFrame) -> None:
    for path in index["path"]:
        check_mirror_file(sample_root / path, sample.BLOCKSIZE)


def test_write_tile_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    q = quantize(rng.uniform(-0.3, 0.3, (64, 40, 48)))
    q[:, 5:9, 7:10] = NODATA
    west, north = 500_000.0, 7_500_400.0
    path = mirror.write_tile(
        tmp_path / "a" / "t.tiff", q, crs="EPSG:32722", west=west, north=north, blocksize=16
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["t.tiff"]  # no temp files left
    with rasterio.open(path) as src:
        assert src.transform == Affine(10, 0, west, 0, 10, north - 400)
        # rasterio's bounds take the origin as the top: bottom-up files come out inverted
        assert src.bounds == (west, north, west + 480, north - 400)
        stored = src.read()
        np.testing.assert_array_equal(stored, q[:, ::-1, :])  # row 0 is the south
        assert src.overviews(1) == [2, 4, 8, 16, 24, 48]
        small = src.read(out_shape=(64, 1, 1))  # the 1 x 1 overview
    valid = (q != NODATA).all(axis=0)
    mean = dequantize(q)[:, valid].sum(axis=1)
    np.testing.assert_allclose(
        dequantize(small[:, 0, 0]), dequantize(quantize(mean / np.linalg.norm(mean))), atol=0.02
    )
    assert mirror.cog_layout_problems(path) == []


def test_write_tile_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int8"):
        mirror.write_tile(tmp_path / "x.tiff", np.zeros((64, 4, 4)), crs="EPSG:32722",
                          west=0, north=0)  # fmt: skip
    with pytest.raises(ValueError, match="64"):
        mirror.write_tile(tmp_path / "x.tiff", np.zeros((3, 4, 4), np.int8), crs="EPSG:32722",
                          west=0, north=0)  # fmt: skip
    with pytest.raises(ValueError, match="multiple of 16"):
        mirror.write_tile(tmp_path / "x.tiff", np.zeros((64, 4, 4), np.int8), crs="EPSG:32722",
                          west=0, north=0, blocksize=100)  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_overviews_are_normalised_means(sample_root: Path, index: gpd.GeoDataFrame) -> None:
    path = sample_root / index["path"].iloc[0]
    with rasterio.open(path) as src:
        full = src.read()
    with rasterio.open(path, overview_level=0) as ovr:
        half = ovr.read()
    h, w = half.shape[1:]
    valid = (full != NODATA).all(axis=0)
    v = np.where(valid, dequantize(full), 0).reshape(64, h, 2, w, 2).sum(axis=(2, 4))
    n = valid.reshape(h, 2, w, 2).sum(axis=(1, 3))
    expected = quantize(v / np.linalg.norm(v, axis=0))
    expected[:, n == 0] = NODATA
    assert np.abs(half.astype(int) - expected).max() <= 1
    assert (half == expected).mean() > 0.999


def test_index_record_and_names() -> None:
    assert mirror.utm_zone_crs("22S") == "EPSG:32722"
    assert mirror.utm_zone_crs("7n") == "EPSG:32607"
    with pytest.raises(ValueError, match="UTM zone"):
        mirror.utm_zone_crs("61S")
    rec = mirror.index_record("2024/22S/x-0000000000-0000000000.tiff", crs="EPSG:32722",
                              year=2024, utm_zone="22S", west=807000, south=7495000,
                              east=810000, north=7498000)  # fmt: skip
    assert tuple(rec) == mirror.INDEX_COLUMNS
    assert rec["wgs84_east"] == BOUNDARY and rec["wgs84_west"] < BOUNDARY
    assert re.fullmatch(r"[0-9a-z]{17}", mirror.ee_image_id("22S", 2024, 0))


def test_write_index(tmp_path: Path) -> None:
    records = [
        {"path": f"{y}/23S/abc-0000000000-0000000000.tiff", "crs": "EPSG:32723", "year": y,
         "utm_zone": "23S", "utm_west": 190000.0, "utm_south": 7495000.0,
         "utm_east": 192000.0, "utm_north": 7497000.0}
        for y in (2021, 2020)
    ]  # fmt: skip
    mirror.write_index(tmp_path, records)
    table = gpd.read_parquet(tmp_path / "aef_index.parquet")
    assert tuple(table.columns) == mirror.INDEX_COLUMNS
    assert table["year"].tolist() == [2020, 2021]
    assert (table["wgs84_west"] == BOUNDARY).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aef_index.csv", "aef_index.parquet"]


# --------------------------------------------------------------------------- generation


def test_generation_is_deterministic(
    sample_root: Path, index: gpd.GeoDataFrame, tmp_path: Path
) -> None:
    again = sample.generate_sample(tmp_path / "again", years=(2021,))
    chosen = index[index["year"] == 2021]["path"].tolist()
    assert sorted(p.relative_to(again).as_posix() for p in again.glob("*/*/*.tiff")) == sorted(
        chosen
    )
    for path in chosen[:3] + chosen[-3:]:
        with rasterio.open(sample_root / path) as a, rasterio.open(again / path) as b:
            np.testing.assert_array_equal(a.read(), b.read())
        assert (sample_root / path).read_bytes() == (again / path).read_bytes()
    assert not (again / "xembed-sample.json").exists()  # partial years: not a cache


def test_sample_root_is_cached(sample_root: Path) -> None:
    marker = sample_root / "xembed-sample.json"
    before = marker.stat().st_mtime_ns
    assert sample.sample_root(cache=sample_root.parent) == sample_root
    assert marker.stat().st_mtime_ns == before
    assert json.loads(marker.read_text())["files"] == 128


def test_total_size(sample_root: Path) -> None:
    size = sum(p.stat().st_size for p in sample_root.rglob("*") if p.is_file())
    assert size < 200e6


def fake_generate(root) -> Path:
    """Stands in for generate_sample: just the completion marker."""
    root = Path(root)
    marker = {
        "version": sample.SAMPLE_VERSION,
        "years": list(sample.SAMPLE_YEARS),
        "fingerprint": sample._fingerprint(),
    }
    (root / "xembed-sample.json").write_text(json.dumps(marker))
    return root


def test_sample_root_replaces_an_incomplete_folder(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sample, "generate_sample", fake_generate)
    stale = tmp_path / "sample-v1"
    (stale / "2017").mkdir(parents=True)
    assert sample.sample_root(cache=tmp_path) == stale
    assert not (stale / "2017").exists() and (stale / "xembed-sample.json").exists()
    assert "generating" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample-v1"]


def test_sample_root_uses_the_winner_of_a_race(tmp_path, monkeypatch) -> None:
    def another_process_finishes_first(root):
        winner = tmp_path / "sample-v1"
        winner.mkdir()
        fake_generate(winner)
        (Path(root) / "mine").write_text("")
        return fake_generate(root)

    monkeypatch.setattr(sample, "generate_sample", another_process_finishes_first)
    root = sample.sample_root(cache=tmp_path)
    assert root == tmp_path / "sample-v1" and not (root / "mine").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample-v1"]


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XEMBED_CACHE", str(tmp_path / "c"))
    assert sample.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("XEMBED_CACHE")
    assert sample.cache_dir().name == "xembed"


# --------------------------------------------------------------------------- content


def test_files_hold_data_only_on_their_zone_side(
    sample_root: Path, index: gpd.GeoDataFrame
) -> None:
    """Zone-clipped, plus ~30 m of overlap so the mosaic has no seam at -48 deg."""
    from xembed.sources.sample.layout import ZONE_OVERLAP_DEG as overlap

    for row in index[index["year"] == 2018].itertuples():
        with rasterio.open(sample_root / row.path) as src:
            q = src.read()
            x, y = pixel_centres(src)
        lon, _ = pyproj.Transformer.from_crs(row.crs, 4326, always_xy=True).transform(x, y)
        if row.utm_zone == "22S":
            own_side = lon < BOUNDARY + overlap
        else:
            own_side = lon >= BOUNDARY - overlap
        valid = (q != NODATA).all(axis=0)
        assert ((q == NODATA).all(axis=0) | valid).all()  # nodata in all bands at once
        np.testing.assert_array_equal(valid, own_side)
        assert valid.any()


def test_vectors_are_unit_length(sample_root: Path, index: gpd.GeoDataFrame) -> None:
    with rasterio.open(sample_root / index["path"].iloc[5]) as src:
        q = src.read()
    v = dequantize(q[:, (q != NODATA).all(axis=0)])
    norms = np.linalg.norm(v, axis=0)
    assert norms.size > 1000 and np.abs(norms - 1).max() < 0.05


def test_zones_agree_at_the_boundary(sample_root: Path, index: gpd.GeoDataFrame) -> None:
    """Pixels 10-30 m either side of -48 deg look alike; pixels 1 km apart do not."""
    lats = np.linspace(-22.61, -22.575, 60)
    near = []
    for zone, lon in (("22S", BOUNDARY - 0.0002), ("23S", BOUNDARY + 0.0002)):
        rows = index[(index["year"] == 2022) & (index["utm_zone"] == zone)]
        vec = np.full((len(lats), 64), np.nan, np.float32)
        for row in rows.itertuples():
            with rasterio.open(sample_root / row.path) as src:
                x, y = pyproj.Transformer.from_crs(4326, row.crs, always_xy=True).transform(
                    np.full_like(lats, lon), lats
                )
                r, c = rasterio.transform.rowcol(src.transform, x, y)
                r, c = np.asarray(r), np.asarray(c)
                ok = (r >= 0) & (r < src.height) & (c >= 0) & (c < src.width)
                q = src.read()
                vec[ok] = dequantize(q[:, r[ok], c[ok]]).T
        near.append(vec)
    a, b = near
    both = ~np.isnan(a).any(axis=1) & ~np.isnan(b).any(axis=1)
    assert both.sum() > 40
    across = np.einsum("ij,ij->i", a[both], b[both])
    far = np.einsum("ij,ij->i", a[both][:-10], a[both][10:])  # ~400 m apart
    assert np.median(across) > 0.85
    assert np.median(across) > np.median(far) + 0.1


@pytest.mark.parametrize("rid", [3102, 3103, 3104, 3105, 3110])
def test_restoration_moves_towards_forest(sample_root, index, sites, rid) -> None:
    start = next(s for r, s, _ in sites if r == rid)
    geom = site(sites, rid)
    before = site_mean(sample_root, index, geom, max(start - 1, 2017))
    after = site_mean(sample_root, index, geom, min(start + 3, 2024))
    stable = site_mean(sample_root, index, site(sites, 3108), 2017)
    assert cosine(before, after) < 0.95
    assert cosine(after, stable) > cosine(before, stable) + 0.1  # towards the forest


def test_stable_site_stays_put(sample_root, index, sites) -> None:
    geom = site(sites, 3108)
    means = [site_mean(sample_root, index, geom, y) for y in sample.SAMPLE_YEARS]
    assert min(cosine(means[0], m) for m in means) > 0.98


def test_deforestation_event(sample_root, index, sites) -> None:
    geom = site(sites, 3107)
    # restored 2016-2019 (forest from 2019), then a third of it cleared in 2021
    means = {y: site_mean(sample_root, index, geom, y) for y in range(2019, 2025)}
    steps = {y: cosine(means[y - 1], means[y]) for y in range(2020, 2025)}
    assert min(steps, key=steps.get) == 2021
    assert steps[2021] < 0.97 and steps[2020] > 0.98


def test_nodata_gap(sample_root, index, sites) -> None:
    geom = site(sites, 3106)
    for year, lo, hi in ((2018, 0, 0), (2019, 0.15, 0.6), (2020, 0, 0)):
        q = pixels_in(sample_root, index, geom, year)
        gap = (q == NODATA).all(axis=1).mean()
        assert lo <= gap <= hi, (year, gap)
    box, years = sample.sample_events()["nodata_gap"]
    assert years == (2019,)
    inner = box.buffer(-0.0005)
    assert (pixels_in(sample_root, index, inner, 2019) == NODATA).all()
    assert (pixels_in(sample_root, index, inner, 2018) != NODATA).all()


def test_deforestation_area(sample_root, index) -> None:
    area, years = sample.sample_events()["deforestation"]
    assert years == (2021,)
    means = {y: site_mean(sample_root, index, area, y) for y in (2019, 2020, 2021, 2022)}
    assert cosine(means[2019], means[2020]) > 0.98
    assert cosine(means[2020], means[2021]) < 0.8
    assert cosine(means[2020], means[2022]) < 0.8


def test_sites_sit_inside_the_data(sample_root, index, sites) -> None:
    """Every site with a 300 m margin lies in the data (outside the 2019 gap)."""
    data = shapely.union_all(index[index["year"] == 2018].geometry.values)
    to_utm = pyproj.Transformer.from_crs(4326, 32722, always_xy=True)
    to_ll = pyproj.Transformer.from_crs(32722, 4326, always_xy=True)
    for rid, _, geom in sites:
        utm = shapely.transform(geom, lambda xy: np.column_stack(to_utm.transform(*xy.T)))
        margin = shapely.transform(
            utm.buffer(300), lambda xy: np.column_stack(to_ll.transform(*xy.T))
        )
        assert data.contains(margin), rid


def test_demo_sites_file(tmp_path: Path, sites) -> None:
    path = sample.demo_sites_path()
    assert path.read_text() == sample.write_demo_sites_geojson(tmp_path / "s.geojson").read_text()
    obj = json.loads(path.read_text())
    assert obj["crs"] == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::5880"}}
    props = [f["properties"] for f in obj["features"]]
    assert [p["rid"] for p in props] == list(range(3101, 3111))
    assert all(3 <= p["area_ha"] <= 80 for p in props)
    assert {p["start_year"] for p in props} & {2013, 2016} and max(
        p["start_year"] for p in props
    ) == 2022
    geod = pyproj.Geod(ellps="WGS84")
    for p, (_, _, geom) in zip(props, sites, strict=True):
        assert abs(abs(geod.geometry_area_perimeter(geom)[0]) / 1e4 - p["area_ha"]) < 0.05
    kinds = {rid: geom for rid, _, geom in sites}
    assert kinds[3104].geom_type == "MultiPolygon"
    assert len(kinds[3105].interiors) == 1
    lon_w, _, lon_e, _ = kinds[3103].bounds
    assert lon_w < BOUNDARY < lon_e


def test_demo_sites() -> None:
    sites = sample.demo_sites()
    assert [s.id for s in sites] == list(range(3101, 3111))
    assert sites[0].start_year == 2016 and sites[0].properties["area_ha"] > 3
    assert -48.1 < sites[0].geometry.centroid.x < -47.9


def test_sample_root_removes_old_leftovers(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sample, "generate_sample", fake_generate)
    old, fresh = tmp_path / ".sample-v1.abc.tmp", tmp_path / ".sample-v1.def.tmp"
    old.mkdir()
    fresh.mkdir()  # may belong to a process still generating: kept
    os.utime(old, (0, 0))
    sample.sample_root(cache=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, "sample-v1"]
