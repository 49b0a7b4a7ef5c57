"""Batch extraction (``xembed.batch.extract``): same numbers as the per-site loop, shared
reads, crash-and-resume, partial failure, dask.distributed, laziness, bounded memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyproj
import pytest
import shapely

import xembed
from xembed import batch
from xembed.batch import extract
from xembed.schema import BANDS
from xembed.sources import cog
from xembed.testing import raise_if_dask_computes

YEARS = tuple(range(2017, 2025))
FAR_AWAY = shapely.box(-40.0, -10.0, -39.995, -9.995)  # no sample data there


def per_site_loop(sites, years, *, float64=False, reducer="mean"):
    """The reference: open_embeddings(...).embed.polygon_mean() site by site."""
    out = []
    for site in sites:
        cube = xembed.open_embeddings(site, years)
        if float64:
            cube = cube.astype("float64")
        out.append(cube.embed.polygon_mean(reducer=reducer).values)
    return np.stack(out)  # (site, year, band)


class ReadLog:
    """Wraps cog._read_blocks: records (file, window rows, window cols) of every read."""

    def __init__(self, monkeypatch):
        self.reads: list[tuple[str, int, int, int, int]] = []
        self._lock = threading.Lock()
        real = cog._read_blocks

        def logged(wants, bands, cache):
            with self._lock:
                self.reads += [(t.href, r0, r1 - 1, c0, c1 - 1) for t, (r0, r1, c0, c1) in wants]
            return real(wants, bands, cache)

        monkeypatch.setattr(cog, "_read_blocks", logged)

    def clear(self):
        self.reads.clear()


# --- the numbers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_table(demo_sites):
    # site 3106 lies partly in the 2019 nodata gap: named, with its valid fraction
    with pytest.warns(xembed.CoverageWarning, match=r"site 3106 in 2019: valid_fraction 0\.620"):
        return extract(demo_sites, YEARS, progress=False)


def test_extract_equals_the_per_site_loop(demo_sites, demo_table):
    table = demo_table
    assert list(table.columns) == ["site_id", "year", "stat", "valid_fraction", "valid_ha", *BANDS]
    assert table.dtypes["site_id"] == np.int64 and table.dtypes["year"] == np.int64
    assert (table.dtypes[["valid_fraction", "valid_ha", *BANDS]] == np.float64).all()
    # one row per site and year, sites in input order, years as given
    assert table["site_id"].tolist() == [s.id for s in demo_sites for _ in YEARS]
    assert table["year"].tolist() == list(YEARS) * len(demo_sites)
    assert set(table["stat"]) == {"mean"}
    assert table.attrs["errors"].empty
    got = table[list(BANDS)].to_numpy().reshape(len(demo_sites), len(YEARS), 64)
    # The same loop accumulating in float64 agrees to rounding; the plain loop
    # sums float32 (its own error is ~2.5e-6), the batch sums float64.
    np.testing.assert_allclose(got, per_site_loop(demo_sites, YEARS, float64=True), atol=1e-12)
    np.testing.assert_allclose(got[:2], per_site_loop(demo_sites[:2], YEARS), atol=1e-5)
    # site 3106 lies partly in the 2019 nodata gap: still a finite mean
    assert np.isfinite(got).all()
    partial = (table["site_id"] == 3106) & (table["year"] == 2019)
    assert (table.loc[~partial, "valid_fraction"] == 1.0).all()
    assert table.loc[partial, "valid_fraction"].round(3).tolist() == [0.62]


def test_every_statistic_equals_polygon_mean(demo_sites):
    sites = [s for s in demo_sites if s.id in (3103, 3104, 3106)]  # zone edge, multipolygon, gap
    years = (2019, 2020)
    stats = ("mean", "median", "std", "min", "max", "count")
    with pytest.warns(xembed.CoverageWarning, match=r"^1 site-year .* site 3106 in 2019"):
        table = extract(sites, years, stats=stats, progress=False)
    assert table["stat"].tolist() == list(stats) * len(years) * len(sites)
    for stat in stats:
        got = table[table["stat"] == stat][list(BANDS)].to_numpy().reshape(len(sites), 2, 64)
        expected = per_site_loop(sites, years, float64=True, reducer=stat)
        np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=stat)
    counts = table[table["stat"] == "count"][list(BANDS)].to_numpy()
    assert (counts == counts[:, :1]).all()  # the area with data: the same in every band
    # every statistic's row carries the same coverage; valid_ha is count in hectares
    np.testing.assert_allclose(table["valid_ha"], np.repeat(counts[:, 0] / 100, len(stats)))


def test_inputs_paths_geodataframes_and_geometries(demo_sites, demo_table):
    from xembed.sources.sample import demo_sites_path

    expected = demo_table[demo_table["year"] == 2020].reset_index(drop=True)
    from_path = extract(demo_sites_path(), [2020], progress=False)
    pd.testing.assert_frame_equal(from_path, expected)
    bare = extract([s.geometry for s in demo_sites[:2]], [2020], progress=False)
    assert bare["site_id"].tolist() == [0, 1]  # bare geometries are numbered
    np.testing.assert_allclose(bare[list(BANDS)], expected[list(BANDS)][:2], atol=1e-14)
    one = extract(demo_sites[0], 2020, progress=False)
    np.testing.assert_allclose(one[list(BANDS)], expected[list(BANDS)][:1], atol=1e-14)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"years": [2016]}, ValueError, "outside the collection"),
        ({"stats": ("mean", "mode")}, ValueError, "unknown stats ['mode']"),
        ({"stats": ()}, ValueError, "stats is empty"),
        ({"source": "landsat"}, xembed.SourceError, "unknown source 'landsat'"),
        ({"sites": []}, ValueError, "sites is empty"),
    ],
)
def test_bad_arguments_are_named(demo_sites, kwargs, error, message):
    args = {"sites": demo_sites[:1], "years": [2020], **kwargs}
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        extract(args.pop("sites"), args.pop("years"), progress=False, **args)


def test_id_field_is_passed_to_load_sites(demo_sites, demo_table, tmp_path):
    # Issue 12, item 2: a file or frame keyed by another column keeps its ids
    import geopandas as gpd

    frame = gpd.GeoDataFrame(
        {"plot_id": ["P1", "P2"]}, geometry=[s.geometry for s in demo_sites[:2]], crs=4326
    )
    path = tmp_path / "plots.geojson"
    frame.to_file(path, driver="GeoJSON")
    expected = demo_table[(demo_table["year"] == 2020) & demo_table["site_id"].isin([3101, 3102])]
    for sites in (path, str(path), frame, frame.__geo_interface__):
        table = extract(sites, [2020], id_field="plot_id", progress=False)
        assert table["site_id"].tolist() == ["P1", "P2"], type(sites)
        np.testing.assert_allclose(table[list(BANDS)], expected[list(BANDS)], atol=1e-14)
    with pytest.raises(xembed.SiteError, match="'nope'"):
        extract(path, [2020], id_field="nope", progress=False)
    with pytest.raises(ValueError, match="id_field='plot_id' picks the id column of a site file"):
        extract(demo_sites[:2], [2020], id_field="plot_id", progress=False)


def test_duplicate_ids_are_refused(demo_sites):
    twin = xembed.Site(id="3101", start_year=None, geometry=demo_sites[1].geometry)
    with pytest.raises(ValueError, match="same as text"):
        extract([demo_sites[0], twin], [2020], progress=False)


# --- shared reads and laziness ----------------------------------------------------------------


def _plots(centre, n=4, size=100.0, spacing=150.0, crs="EPSG:32722", first_id=1):
    """``n`` x ``n`` square plots (``size`` m) around a UTM point, as lon/lat Sites."""
    to_ll = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    sites = []
    for i in range(n * n):
        x = centre[0] + (i % n - n / 2) * spacing + 3.3
        y = centre[1] + (i // n - n / 2) * spacing + 4.4
        box = shapely.box(x, y, x + size, y + size)
        lonlat = shapely.transform(box, lambda c: np.column_stack(to_ll.transform(*c.T)))
        sites.append(xembed.Site(first_id + i, None, lonlat))
    return sites


def test_sites_that_share_files_share_reads(monkeypatch):
    # 16 plots of 1 ha, 150 m apart, in the sample's zone 22S: a restoration
    # programme's cluster. The loop reads every file window once per plot.
    sites = _plots((807_300.0, 7_498_000.0))
    log = ReadLog(monkeypatch)
    loop = per_site_loop(sites, YEARS, float64=True)
    loop_reads = len(log.reads)
    log.clear()
    table = extract(sites, YEARS, progress=False)
    batch_reads = list(log.reads)
    assert len(batch_reads) * 4 <= loop_reads, (len(batch_reads), loop_reads)
    assert len(set(batch_reads)) == len(batch_reads), "a file window was read twice"
    np.testing.assert_allclose(table[list(BANDS)].to_numpy(), loop.reshape(-1, 64), atol=1e-12)


def test_demo_sites_read_each_window_once(demo_sites, monkeypatch):
    log = ReadLog(monkeypatch)
    extract(demo_sites, YEARS, progress=False, min_valid=0)
    assert len(set(log.reads)) == len(log.reads) > 0


def test_chunks_under_no_site_are_never_read(monkeypatch):
    # Two 40 m plots 2 km apart in one 2.56 km cell form one group; read in
    # 16 px chunks, its envelope has ~100 chunks but only the plots' few are read.
    to_ll = pyproj.Transformer.from_crs("EPSG:32722", "EPSG:4326", always_xy=True)
    x0, y0 = 806_700.0 + 3.0, 7_496_000.0 + 3.0  # in the sample's 22S data, one 2.56 km cell

    def plot(dx, dy, i):
        box = shapely.box(x0 + dx, y0 + dy, x0 + dx + 40, y0 + dy + 40)
        return xembed.Site(i, None, shapely.transform(box, lambda c: np.column_stack(
            to_ll.transform(*c.T))))  # fmt: skip

    sites = [plot(0, 0, 1), plot(1500, 1500, 2)]
    (group,), _ = batch.group_sites(sites)  # cells of 256 px link them
    rows, cols = group.spatial_chunks(16, 16)
    assert len(rows) * len(cols) >= 80
    src = xembed.cube.resolve_source("sample", years=(2020,))
    lazy = batch.run._lazy_group(group, src, (2020,), ("mean",), 16)
    log = ReadLog(monkeypatch)
    means, *_ = lazy.compute()
    assert 2 <= len(log.reads) <= 16  # each plot: at most 2 x 2 chunks of 2 files
    np.testing.assert_allclose(means[:, 0], per_site_loop(sites, [2020], float64=True)[:, 0])


def test_planning_reads_nothing_and_computes_nothing(demo_sites, monkeypatch):
    def refuse(*args):
        raise AssertionError("planning must not read pixels")

    src = xembed.cube.resolve_source("sample", years=(2019, 2020))
    groups, failed = batch.group_sites(
        demo_sites, lattice=lambda crs: batch.mirror_lattice(str(src.root), crs)
    )
    assert not failed
    monkeypatch.setattr(cog, "_read_blocks", refuse)
    with raise_if_dask_computes():
        lazy = [batch.run._lazy_group(g, src, (2019, 2020), ("mean", "std"), None) for g in groups]
    assert len(lazy) == len(groups)


# --- partial failure ------------------------------------------------------------------------


def test_a_site_outside_the_data_fails_alone(demo_sites):
    far = xembed.Site(id=9999, start_year=None, geometry=FAR_AWAY)
    sites = [demo_sites[0], far, demo_sites[4]]
    with pytest.warns(UserWarning, match=r"1 of 3 sites failed .*site 9999"):
        table = extract(sites, [2020, 2021], progress=False)
    errors = table.attrs["errors"]
    assert errors["site_id"].tolist() == [9999]
    assert errors["year"].isna().all()
    assert "DataNotFoundError" in errors["error"].iloc[0]
    assert table["site_id"].tolist() == [3101, 3101, 3105, 3105]  # the others, complete
    expected = per_site_loop([demo_sites[0], demo_sites[4]], [2020, 2021], float64=True)
    np.testing.assert_allclose(table[list(BANDS)].to_numpy(), expected.reshape(-1, 64))


def test_a_read_that_keeps_failing_fails_only_its_sites(demo_sites, monkeypatch):
    # Break one 2020 file of zone 23S: the sites over it fail (in 2020 their
    # whole group fails, then each site alone); every other site succeeds.
    years = (2020,)
    bad = cog.plan_mosaic(xembed.sample_root(), _grid(demo_sites[1]), years)[0][0].href
    touching = {
        s.id for s in demo_sites if bad in {t.href for t in _plan(s, years)[0]}
    }  # fmt: skip
    assert 0 < len(touching) < len(demo_sites)
    real = cog._read_blocks

    def flaky(wants, *args):
        if any(tile.href == bad for tile, _ in wants):
            raise OSError(f"could not read {bad!r}: HTTP 503 (gave up retrying)")
        return real(wants, *args)

    monkeypatch.setattr(cog, "_read_blocks", flaky)
    with pytest.warns(UserWarning, match=f"{len(touching)} of 10 sites failed"):
        table = extract(demo_sites, years, progress=False)
    errors = table.attrs["errors"]
    assert set(errors["site_id"]) == touching
    assert errors["error"].str.contains("OSError: could not read").all()
    good = [s for s in demo_sites if s.id not in touching]
    assert table["site_id"].tolist() == [s.id for s in good]
    monkeypatch.setattr(cog, "_read_blocks", real)
    np.testing.assert_allclose(
        table[list(BANDS)].to_numpy(), per_site_loop(good, years, float64=True)[:, 0]
    )


def _grid(site):
    from xembed.grid import target_grid

    return target_grid(site.geometry)[0]


def _plan(site, years):
    return cog.plan_mosaic(xembed.sample_root(), _grid(site), years)


@pytest.fixture(scope="module")
def holey_mirror(tmp_path_factory):
    """The test mirror of conftest with zone 23S's 2020 files removed."""
    from conftest import write_mirror

    root = tmp_path_factory.mktemp("holey")
    write_mirror(root)
    for path in (root / "2020" / "23S").glob("*.tiff"):
        path.unlink()
    return root


def test_a_missing_year_fails_that_year_only(holey_mirror):
    from conftest import BOUNDARY_LON, LAT

    west = xembed.Site("west", None, shapely.box(BOUNDARY_LON - 0.002, LAT, BOUNDARY_LON - 0.001,
                                                 LAT + 0.001))  # fmt: skip
    east = xembed.Site("east", None, shapely.box(BOUNDARY_LON + 0.001, LAT, BOUNDARY_LON + 0.002,
                                                 LAT + 0.001))  # fmt: skip
    with pytest.warns(UserWarning, match=r"1 of 2 sites failed \(0 entirely"):
        table = extract(
            [west, east], [2019, 2020], source=holey_mirror, progress=False, min_valid=0
        )
    errors = table.attrs["errors"]
    assert errors[["site_id", "year"]].values.tolist() == [["east", 2020]]
    assert "no embedding files" in errors["error"].iloc[0]
    assert table[["site_id", "year"]].values.tolist() == [
        ["west", 2019],
        ["west", 2020],
        ["east", 2019],
    ]
    assert np.isfinite(table[list(BANDS)].to_numpy()).all()


# --- the store: crash and resume ------------------------------------------------------------


def _parts(store: Path) -> list[Path]:
    return sorted(store.glob("part-*.parquet"))


def test_store_commits_and_a_rerun_reads_nothing(demo_sites, demo_table, tmp_path, monkeypatch):
    store = tmp_path / "store"
    first = extract(demo_sites, YEARS, store=store, progress=False, min_valid=0)
    pd.testing.assert_frame_equal(first, demo_table, check_exact=True)
    n_groups = len(batch.group_sites(demo_sites)[0])
    assert 1 < len(_parts(store)) <= n_groups
    assert (store / "_xembed_extract.json").is_file()
    assert not list(store.glob(".*"))  # no temporary left behind
    # pandas/pyarrow read the folder as one dataset (hidden and _ files ignored)
    assert len(pd.read_parquet(store)) == len(demo_table)
    log = ReadLog(monkeypatch)
    again = extract(demo_sites, YEARS, store=store, progress=False, min_valid=0)
    assert log.reads == []
    pd.testing.assert_frame_equal(again, demo_table, check_exact=True)


def test_store_refuses_other_arguments(demo_sites, tmp_path):
    store = tmp_path / "store"
    extract(demo_sites[:1], [2020], store=store, progress=False)
    with pytest.raises(ValueError, match=r"was written with \{'years': \[2020\]\}"):
        extract(demo_sites[:1], [2021], store=store, progress=False)
    with pytest.raises(ValueError, match="stats"):
        extract(demo_sites[:1], [2020], stats="std", store=store, progress=False)


def test_store_of_an_older_format_is_refused(demo_sites, tmp_path):
    # format 2 parts carry valid_fraction and valid_ha: never mix them with format 1
    store = tmp_path / "store"
    store.mkdir()
    (store / "_xembed_extract.json").write_text('{"format": 1}')
    with pytest.raises(ValueError, match="has layout format 1; this xembed writes format 2"):
        extract(demo_sites[:1], [2020], store=store, progress=False)


def test_interrupt_then_resume_gives_the_identical_table(demo_sites, demo_table, tmp_path,
                                                         monkeypatch):  # fmt: skip
    store = tmp_path / "store"
    monkeypatch.setattr(batch.run, "_GROUPS_PER_WORKER", 1)
    monkeypatch.setattr(batch.run, "_workers", lambda client: 1)  # groups computed two at a time
    real_commit = batch.store.Store.commit
    commits = []

    def commit_then_ctrl_c(self, frame):
        path = real_commit(self, frame)
        commits.append(path)
        if len(commits) == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(batch.store.Store, "commit", commit_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        extract(demo_sites, YEARS, store=store, progress=False, min_valid=0)
    monkeypatch.setattr(batch.store.Store, "commit", real_commit)
    assert len(_parts(store)) == 2
    done = set(pd.read_parquet(store)["site_id"])
    # A half-written part (a crash inside to_parquet) lies around under its temporary name.
    (store / ".part-feedbeef.parquet.123-abcd.tmp").write_bytes(b"PAR1 truncated")
    computed = []
    real_lazy = batch.run._lazy_group
    monkeypatch.setattr(
        batch.run, "_lazy_group", lambda g, *a: computed.append(g) or real_lazy(g, *a)
    )
    resumed = extract(demo_sites, YEARS, store=store, progress=False, min_valid=0)
    pd.testing.assert_frame_equal(resumed, demo_table, check_exact=True)
    assert not {m.site.id for g in computed for m in g.members} & done  # finished: skipped


_CHILD = """
import sys, time
import xembed
from xembed import batch

batch.run._GROUPS_PER_WORKER = 1
batch.run._workers = lambda client: 1
real = batch.store.Store.commit

def slow_commit(self, frame):
    path = real(self, frame)
    print("committed", path, flush=True)
    time.sleep(30)  # killed here, mid-run
    return path

batch.store.Store.commit = slow_commit
batch.extract(
    xembed.demo_sites(), range(2017, 2025), store=sys.argv[1], progress=False, min_valid=0
)
"""


def test_kill_mid_run_then_resume_gives_the_identical_table(demo_sites, demo_table, tmp_path):
    store = tmp_path / "store"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CHILD), str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 120
        while not _parts(store) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        _, stderr = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, stderr
    n_groups = len(batch.group_sites(demo_sites)[0])
    assert 1 <= len(_parts(store)) < n_groups  # killed mid-run
    resumed = extract(demo_sites, YEARS, store=store, progress=False, min_valid=0)
    pd.testing.assert_frame_equal(resumed, demo_table, check_exact=True)


def test_failed_sites_are_retried_not_stored(demo_sites, tmp_path):
    store = tmp_path / "store"
    far = xembed.Site(id=9999, start_year=None, geometry=FAR_AWAY)
    with pytest.warns(UserWarning, match="1 of 2 sites failed"):
        extract([demo_sites[0], far], [2020], store=store, progress=False)
    assert set(pd.read_parquet(store)["site_id"]) == {3101}
    assert pd.read_parquet(store / "_errors.parquet")["site_id"].tolist() == ["9999"]
    with pytest.warns(UserWarning, match="1 of 2 sites failed"):  # tried again
        again = extract([demo_sites[0], far], [2020], store=store, progress=False)
    assert again["site_id"].tolist() == [3101]


# --- schedulers -----------------------------------------------------------------------------


def test_distributed_client_gives_the_same_table(demo_sites, monkeypatch):
    distributed = pytest.importorskip("distributed")
    sites, years = demo_sites[:5], (2020, 2021)
    expected = extract(sites, years, progress=False)
    used = []
    real = batch.run._run_distributed
    monkeypatch.setattr(batch.run, "_run_distributed", lambda *a: used.append(1) or real(*a))
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        given = extract(sites, years, client=client, progress=False)
        active = extract(sites, years, progress=False)  # the active client is picked up
    assert used == [1, 1]
    pd.testing.assert_frame_equal(given, expected, check_exact=True)
    pd.testing.assert_frame_equal(active, expected, check_exact=True)


# --- memory ---------------------------------------------------------------------------------

_BIG_PX = 1024  # a 10 km x 10 km site: 2 years x 64 bands x 1024^2 float32 = 537 MB


@pytest.fixture(scope="module")
def big_mirror(tmp_path_factory):
    """One 1024 x 1024 px file per year (smooth int8, ZSTD: ~1 MB on disk)."""
    import rasterio
    from affine import Affine

    from xembed.sources import mirror

    root = tmp_path_factory.mktemp("big")
    west, north, crs = 600_000.0, 7_500_000.0, "EPSG:32722"
    south = north - _BIG_PX * 10
    ramp = np.linspace(-60, 60, _BIG_PX, dtype=np.float32)
    records = []
    for year in (2020, 2021):
        rel = mirror.tile_path(year, "22S", mirror.ee_image_id("big", year), 0, 0)
        (root / rel).parent.mkdir(parents=True)
        with rasterio.open(
            root / rel, "w", driver="GTiff", width=_BIG_PX, height=_BIG_PX, count=64,
            dtype="int8", nodata=-128, crs=crs, transform=Affine(10, 0, west, 0, 10, south),
            tiled=True, blockxsize=256, blockysize=256, compress="zstd", interleave="band",
        ) as dst:  # fmt: skip
            for b in range(64):
                plane = np.rint(ramp[None, :] * np.cos(b + year) + ramp[:, None] * np.sin(b))
                dst.write(np.clip(plane, -127, 127).astype(np.int8), b + 1)
        records.append({"path": rel, "crs": crs, "year": year, "utm_zone": "22S",
                        "utm_west": west, "utm_south": south,
                        "utm_east": west + _BIG_PX * 10, "utm_north": north})  # fmt: skip
    mirror.write_index(root, records)
    to_ll = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    box = shapely.segmentize(shapely.box(west + 3, south + 4, west + 10235, north - 6), 1000)
    site = xembed.Site("big", None, shapely.transform(box, lambda c: np.column_stack(
        to_ll.transform(*c.T))))  # fmt: skip
    return root, site


def _traced_peak(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.mark.slow
def test_a_site_far_larger_than_a_chunk_reduces_in_bounded_memory(big_mirror):
    root, site = big_mirror
    cube = xembed.open_embeddings(site, [2020, 2021], source=root, chunks=128)
    cube_bytes = cube["embeddings"].nbytes
    chunk_bytes = int(np.prod(cube["embeddings"].data.chunksize)) * 4
    assert cube_bytes > 500e6 and chunk_bytes < 9e6  # 64 chunks of 8.4 MB
    mean, peak = _traced_peak(lambda: cube.embed.polygon_mean().compute())
    # numpy's allocations are traced: the peak is a few chunks per thread (~55 MB
    # measured), not the cube
    assert peak < cube_bytes / 5, (peak, cube_bytes)
    assert peak < 15 * chunk_bytes, (peak, chunk_bytes)
    table, peak_batch = _traced_peak(
        lambda: extract([site], [2020, 2021], source=root, chunks=128, progress=False)
    )
    # zonal_mean also holds a (site, pixel, weight) table of ~100 bytes per
    # covered pixel (~105 MB measured): bounded by the site's area, not the cube's bytes
    assert peak_batch < cube_bytes / 3 and peak_batch < 25 * chunk_bytes, peak_batch
    np.testing.assert_allclose(table[list(BANDS)].to_numpy(), mean.values, atol=1e-5)


def test_earth_engine_source_through_the_fake_server(demo_sites):
    pytest.importorskip("ee")
    pytest.importorskip("xee")
    from xembed.testing import fake_earthengine

    sites = [s for s in demo_sites if s.id in (3109, 3104)]
    expected = extract(sites, [2021], progress=False)
    with fake_earthengine(xembed.sample_root()):
        got = extract(sites, [2021], source="ee", progress=False)
    assert got.attrs["errors"].empty
    np.testing.assert_allclose(got[list(BANDS)], expected[list(BANDS)], atol=1e-12)
