"""The range reader: headers parsed from bytes, tiles fetched by range, concurrently.

Checked against GDAL (the header values, and the pixels of every demo site,
local and over HTTP), against the server's own log (requests merged, nothing
fetched twice or needlessly, headers in one round, the in-flight bound), and
under faults that hit many requests in flight at once.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely

import xembed
from tests.test_sample_reads import gdal_reference
from xembed.errors import ReadError
from xembed.sources import cog, ranges, tiff
from xembed.sources.common import site_grid
from xembed.sources.retry import RetryPolicy
from xembed.testing import MirrorRequest, serve_mirror

YEARS = tuple(range(2017, 2025))
POLICY = RetryPolicy(attempts=5, backoff=0.001, max_backoff=0.004, timeout=2)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cog, "RETRY", POLICY)
    monkeypatch.setattr(tiff, "MEMORY", tiff.TileMemory(tiff.MEMORY.max_bytes))  # a fresh one


@pytest.fixture(scope="module")
def sites() -> dict[int, xembed.Site]:
    return {int(s.id): s for s in xembed.demo_sites()}


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit, NaN equal to NaN."""
    return a.shape == b.shape and bool(((a == b) | (np.isnan(a) & np.isnan(b))).all())


def sample_files(root: Path) -> list[Path]:
    return sorted(root.glob("20*/*/*.tiff"))


def tile_ranges(path: Path) -> dict[tuple[int, int, int], tuple[int, int]]:
    """GDAL's own (offset, size) of every (band, tile row, tile col) of a file."""
    out = {}
    with rasterio.open(path) as src:
        rows, cols = (
            -(-src.height // src.block_shapes[0][0]),
            -(-src.width // src.block_shapes[0][1]),
        )
        for band, r, c in itertools.product(range(src.count), range(rows), range(cols)):
            offset = src.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=band + 1)
            size = src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=band + 1)
            out[band, r, c] = (int(offset), int(size))
    return out


# ----------------------------------------------------------------------------- headers


def test_header_of_every_sample_file_equals_gdals(sample_root):
    for path in sample_files(sample_root):
        data = path.read_bytes()
        layout = tiff.parse_layout(data[: tiff.HEADER_BYTES], len(data))
        assert layout.unsupported is None, (path, layout.unsupported)
        with rasterio.open(path) as src:
            t = src.transform
            assert layout.transform == (t.a, t.b, t.c, t.d, t.e, t.f)
            assert t.e > 0, "bottom-up, as the mirror stores them"
            assert f"EPSG:{layout.epsg}" == src.crs.to_string()
            assert (layout.width, layout.height, layout.bands) == (src.width, src.height, 64)
            assert (layout.tile_height, layout.tile_width) == src.block_shapes[0]
        for (band, r, c), (offset, size) in tile_ranges(path).items():
            assert (layout.offsets[band, r, c], layout.counts[band, r, c]) == (offset, size)


def test_a_header_cut_anywhere_asks_for_more_or_is_invalid(sample_root):
    data = sample_files(sample_root)[0].read_bytes()
    whole = tiff.parse_layout(data, len(data))
    needed = int(whole.offsets.min())  # everything the header needs lies before the tiles
    for cut in [0, 1, 7, 8, 15, 16, 100, 1000, 4096, 5000, 9000, 10000, 11500, needed - 1]:
        # The file is whole, the bytes given are not: more bytes are asked for.
        try:
            layout = tiff.parse_layout(data[:cut], len(data))
        except ranges.NeedMore as more:
            assert cut < more.stop <= len(data)
            layout = tiff.parse_layout(data[: more.stop + 100000], len(data))
        np.testing.assert_array_equal(layout.offsets, whole.offsets)
        # The file itself is cut there: the header does not hold together.
        with pytest.raises(ranges.Invalid):
            tiff.parse_layout(data[:cut], cut)
    # Tiles past the end of the file (a file cut inside its tiles).
    with pytest.raises(ranges.Invalid, match="past the end of the file"):
        tiff.parse_layout(data[:needed], len(data) - 1)


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(bands=3), "3 bands of int8; expected 64 int8 bands"),
        (dict(dtype="uint8"), "64 bands of uint8"),
        (dict(epsg=32723), "the header says EPSG:32723, the index EPSG:32722"),
        (dict(transform=(10.0, 0.0, 0.0, 0.0, 10.0, 0.0)), "the header puts the file at x 0.0"),
    ],
)
def test_a_header_unlike_its_index_row_is_invalid(sample_root, change, reason):
    path = sample_files(sample_root)[0]
    data = path.read_bytes()
    layout = tiff.parse_layout(data, len(data))
    index = cog.read_index(sample_root)
    row = index[index["href"] == str(path)].iloc[0]
    bounds = (row.utm_west, row.utm_south, row.utm_east, row.utm_north)
    cog._check_header(layout, row.crs, bounds)  # as it is: fine
    with pytest.raises(ranges.Invalid, match=reason):
        cog._check_header(dataclasses.replace(layout, **change), row.crs, bounds)


# ----------------------------------------------------------------------------- pixels


@pytest.fixture(scope="module")
def references(sample_root, sites) -> dict[int, np.ndarray]:
    """GDAL's warp of every demo site (tests/test_sample_reads.py), and the local cube."""
    out = {}
    for site_id, site in sites.items():
        ds = xembed.open_embeddings(site, YEARS, root=sample_root, clip=False)
        out[site_id] = gdal_reference(sample_root, ds)
        assert same(ds.embeddings.values, out[site_id]), site_id  # local files
    return out


def test_every_demo_site_over_http_equals_gdal(sample_root, sites, references):
    with serve_mirror(sample_root) as server:
        for site_id, site in sites.items():
            ds = xembed.open_embeddings(site, YEARS, source="cog", root=server.url, clip=False)
            assert same(ds.embeddings.values, references[site_id]), site_id
        assert server.count("*.tiff", method="HEAD") == 0


def force_gdal(monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(data: bytes, size: int) -> tiff.TiffLayout:
        return dataclasses.replace(tiff.parse_layout(data, size), unsupported="test")

    monkeypatch.setattr(cog, "parse_layout", unsupported)
    monkeypatch.setattr(cog, "_HEADERS", {})


@pytest.mark.parametrize("site_id", [3101, 3103])
def test_the_gdal_fallback_equals_the_range_reader(
    sample_root, sites, references, site_id, monkeypatch
):
    force_gdal(monkeypatch)
    with serve_mirror(sample_root) as server:
        ds = xembed.open_embeddings(
            sites[site_id], YEARS, source="cog", root=server.url, clip=False
        )
        assert same(ds.embeddings.values, references[site_id])
        assert server.count("*.tiff", method="HEAD") > 0  # GDAL's /vsicurl/ did the reading
    local = xembed.open_embeddings(sites[site_id], YEARS, root=sample_root, clip=False)
    assert same(local.embeddings.values, references[site_id])


@pytest.mark.parametrize(
    "options, fits",
    [
        (dict(compress="deflate", predictor=2), False),
        (dict(compress="zstd", interleave="pixel"), False),
        (dict(compress="zstd", BIGTIFF="YES"), True),
        (dict(compress="none"), True),
    ],
    ids=["deflate-predictor", "pixel-interleaved", "bigtiff", "uncompressed"],
)
def test_other_layouts_read_the_same(tmp_path, sample_root, sites, options, fits):
    site = sites[3101]
    index = cog.read_index(sample_root)
    box = shapely.box(*site.geometry.bounds)
    rows = index[(index["year"] == 2019) & shapely.intersects(index["footprint"], box)]
    shutil.copy(sample_root / "aef_index.parquet", tmp_path)
    for rel in rows["path"]:
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(sample_root / rel) as src:
            profile = {**src.profile, "tiled": True, "interleave": "band", **options}
            with rasterio.open(target, "w", **profile) as dst:
                dst.write(src.read())
    grid, _ = site_grid(xembed.sites.as_site(site), buffer=0)
    plan = cog.plan_mosaic(tmp_path, grid, [2019])
    assert all((tile.layout is not None) == fits for tile in plan[0])
    got = xembed.open_embeddings(site, [2019], source=tmp_path, clip=False).embeddings.values
    want = xembed.open_embeddings(site, [2019], root=sample_root, clip=False).embeddings.values
    assert same(got, want)


# ----------------------------------------------------------------------------- requests


def parse_range(request: MirrorRequest) -> tuple[int, int]:
    first, last = request.range.removeprefix("bytes=").split("-")  # type: ignore[union-attr]
    return int(first), int(last) + 1


@pytest.mark.parametrize("chunks", [None, 24], ids=["one-chunk", "chunks-of-24-px"])
def test_adjacent_ranges_merged_and_nothing_needless_fetched(sample_root, sites, chunks):
    """The tiles requested are exactly those the cube needs, each byte once, merged.

    With chunks of 24 px, several chunks need the same 128 px tiles, at once
    or later: still one request for each tile's bytes.
    """
    site = sites[3110]  # the largest demo site: windows span several tiles
    with serve_mirror(sample_root) as server:
        ds = xembed.open_embeddings(
            site, YEARS, source="cog", root=server.url, clip=False, chunks=chunks
        )
        server.reset()
        assert ds.embeddings.values.size
        requests = [r for r in server.requests if r.path.endswith(".tiff")]
    crs = ds.rio.crs.to_string()
    xs, ys = ds.x.values, ds.y.values
    needed: dict[str, set[tuple[int, int]]] = {}
    index = cog.read_index(sample_root)
    box = shapely.box(*site.geometry.bounds)
    for row in index[
        shapely.intersects(index["footprint"], box) & index["year"].isin(YEARS)
    ].itertuples():
        if row.crs != crs:
            continue  # the site lies in one zone
        with rasterio.open(row.href) as src:
            t, (th, tw) = src.transform, src.block_shapes[0]
            cols = np.floor((xs - t.c) / t.a).astype(int)
            rows_ = np.floor((ys - t.f) / t.e).astype(int)
            cols, rows_ = (
                cols[(cols >= 0) & (cols < src.width)],
                rows_[(rows_ >= 0) & (rows_ < src.height)],
            )
        if not cols.size or not rows_.size:
            continue
        blocks = tile_ranges(Path(row.href))
        needed[row.path] = {
            blocks[b, r, c]
            for b in range(64)
            for r in range(rows_.min() // th, rows_.max() // th + 1)
            for c in range(cols.min() // tw, cols.max() // tw + 1)
        }
    assert set(needed) == {r.path for r in requests}
    for path, tiles in needed.items():
        got = sorted(parse_range(r) for r in requests if r.path == path)
        # Each byte once: no two requests overlap.
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(got)), path
        # Merged: no request ends where another begins (within one chunk: tiles
        # that touch but belong to different chunks are fetched by each).
        if chunks is None:
            assert all(a[1] != b[0] for a, b in itertools.pairwise(got)), path
        # Nothing but the needed tiles: the bytes fetched are exactly theirs.
        fetched = np.zeros(max(e for _, e in got), bool)
        want = np.zeros_like(fetched)
        for start, stop in got:
            fetched[start:stop] = True
        for offset, size in tiles:
            want[offset : offset + size] = True
        assert (fetched == want).all(), path
    if chunks is None:
        assert len(requests) < sum(len(t) for t in needed.values()), "some ranges are merged"


def test_opening_reads_every_header_at_once(sample_root, sites):
    with serve_mirror(sample_root, latency=0.2) as server:
        xembed.open_embeddings(sites[3103], YEARS, source="cog", root=server.url)
        headers = [r for r in server.requests if r.path.endswith(".tiff")]
        assert len(headers) == len({r.path for r in headers}) == 48  # 6 files x 8 years
        first = tiff.header_bytes(160, 160)  # the sample's 160 px files: their whole header
        assert all(r.range == f"bytes=0-{first - 1}" for r in headers)
        # The index, then all headers in one round (read one by one: 48 rounds).
        assert server.rounds("*.tiff") == 1
        assert server.rounds() == server.rounds("aef_index.*") + 1 == 2


@pytest.fixture
def bound():
    yield cog.set_max_requests
    cog.set_max_requests(None)


@pytest.mark.parametrize("how", ["keyword", "environment"])
def test_requests_in_flight_stay_within_the_bound(sample_root, sites, bound, how, monkeypatch):
    if how == "keyword":
        bound(3)
    else:
        monkeypatch.setenv("XEMBED_MAX_REQUESTS", "3")
        bound(None)  # a fresh pool, sized from the environment
    assert cog.max_requests() == 3
    with serve_mirror(sample_root, latency=0.01) as server:
        ds = xembed.open_embeddings(sites[3103], [2018, 2019], source="cog", root=server.url)
        ds.embed.polygon_mean().compute()
        assert server.count("*.tiff") > 100
        assert server.peak_in_flight() == 3


def test_the_default_bound_is_reached(sample_root, sites):
    with serve_mirror(sample_root, latency=0.05) as server:
        ds = xembed.open_embeddings(sites[3103], YEARS, source="cog", root=server.url)
        ds.embed.polygon_mean().compute()
        assert server.peak_in_flight() == cog.max_requests() == ranges.DEFAULT_MAX_REQUESTS


def test_bad_bounds_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="max requests must be a whole number >= 1"):
        cog.set_max_requests(0)
    monkeypatch.setenv("XEMBED_MAX_REQUESTS", "0")
    with pytest.raises(ValueError, match="XEMBED_MAX_REQUESTS=0 must be a whole number >= 1"):
        cog.max_requests()


# ----------------------------------------------------------------------------- faults at once


@pytest.fixture(scope="module")
def local(sample_root, sites) -> dict[int, np.ndarray]:
    return {
        rid: xembed.open_embeddings(sites[rid], YEARS, root=sample_root).embeddings.values
        for rid in (3101, 3103)
    }


MIXED = [{"status": 503}, {"reset": True}, {"truncate": 100}, {"status": 429}, {"truncate": 0}]


def overlapping(requests: list[MirrorRequest]) -> int:
    """The most of ``requests`` in flight at once."""
    events = sorted([(r.started, 1) for r in requests] + [(r.ended, -1) for r in requests])
    return max(itertools.accumulate(step for _, step in events))


def test_many_reads_failing_at_once_are_all_retried(sample_root, sites, local):
    def rule(request: MirrorRequest) -> dict[str, Any] | None:
        if request.path.endswith(".tiff") and request.number <= 20:
            return {"delay": 0.05, **MIXED[request.number % len(MIXED)]}
        return None

    with serve_mirror(sample_root) as server:
        ds = xembed.open_embeddings(sites[3103], YEARS, source="cog", root=server.url)
        server.reset()
        server.faults = rule
        values = ds.embeddings.values
        faulted = [r for r in server.requests if r.fault is not None]
    assert len(faulted) == 20 and overlapping(faulted) >= 10
    assert same(values, local[3103])


@pytest.mark.parametrize("cut", [0, 1000, 4096, 8192, 12000])
def test_headers_cut_short_at_open_are_read_again(sample_root, sites, local, cut):
    def rule(request: MirrorRequest) -> dict[str, Any] | None:
        if request.path.endswith(".tiff") and request.number <= 30:
            fault = {"truncate": cut} if request.number % 3 else {"status": 500}
            return {"delay": 0.05, **fault}  # all in flight at once
        return None

    with serve_mirror(sample_root, faults=rule) as server:
        ds = xembed.open_embeddings(sites[3103], YEARS, source="cog", root=server.url)
        faulted = [r for r in server.requests if r.fault is not None]
        assert len(faulted) == 29 and overlapping(faulted) >= 10  # the index is request 1
        assert same(ds.embeddings.values, local[3103])


def test_a_header_always_cut_short_is_an_error_naming_the_file(sample_root, sites):
    with serve_mirror(sample_root) as server:
        server.faults = {"path_glob": "*.tiff", "truncate": 4000}
        with pytest.raises(
            ReadError, match=r"header of 'http://.*\.tiff'.*gave up after 5"
        ) as info:
            xembed.open_embeddings(sites[3101], YEARS, source="cog", root=server.url)
        assert str(info.value.href).endswith(".tiff")
        assert server.count(f"*{Path(str(info.value.href)).name}") == POLICY.attempts


# ----------------------------------------------------------------------------- responses


class Reply:
    def __init__(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.status, self.reason, self.headers, self.data = status, "", headers, data


class FakeHTTP:
    def __init__(self, reply: Reply) -> None:
        self.reply = reply

    def request(self, *args: Any, **kwargs: Any) -> Reply:
        return self.reply


DATA = bytes(range(256)) * 4


@pytest.mark.parametrize(
    "reply, problem",
    [
        (
            Reply(206, {"Content-Length": "10", "Content-Range": "bytes 10-19/1024"}, DATA[10:20]),
            None,
        ),
        (Reply(200, {"Content-Length": "1024"}, DATA), None),  # Range ignored: sliced
        (
            Reply(206, {"Content-Length": "10", "Content-Range": "bytes 0-9/1024"}, DATA[:10]),
            "asked for",
        ),
        (
            Reply(206, {"Content-Length": "10", "Content-Range": "bytes 10-19/2048"}, DATA[10:20]),
            "2048 bytes now",
        ),
        (Reply(206, {"Content-Length": "10"}, DATA[10:20]), "unusable Content-Range"),
        (
            Reply(206, {"Content-Range": "bytes 10-19/1024"}, DATA[10:20]),
            "Content-Length says None",
        ),
        (
            Reply(206, {"Content-Length": "10", "Content-Range": "bytes 10-19/1024"}, DATA[10:15]),
            "has 5 bytes",
        ),
    ],
)
def test_responses_are_checked_against_what_they_declare(monkeypatch, reply, problem):
    monkeypatch.setattr(ranges, "_http", lambda url: FakeHTTP(reply))
    source = ranges.Remote("x.tiff", "http://127.0.0.1:9/x.tiff", size=1024)
    if problem is None:
        assert ranges._get(source, 10, 20, POLICY)[:2] == (DATA[10:20], 1024)
    else:
        with pytest.raises(ranges.Invalid, match=problem):
            ranges._get(source, 10, 20, POLICY)


def test_merge_ranges_only_joins_ranges_that_touch():
    assert ranges.merge_ranges([(0, 10), (10, 5), (16, 4), (20, 1), (30, 2), (30, 2)]) == [
        (0, 15, [0, 1]),
        (16, 5, [2, 3]),
        (30, 2, [4, 5]),
    ]


# ----------------------------------------------------------------------------- the range cache


class FakeCache:
    """The range cache's interface (xembed.sources.rangecache), in memory."""

    def __init__(self) -> None:
        self.ranges: dict[tuple[str, str, int, int], bytes] = {}
        self.headers: dict[str, tuple[str, bytes]] = {}

    def get(self, url: str, validator: str, start: int, length: int) -> bytes | None:
        return self.ranges.get((url, validator, start, length))

    def put(self, url: str, validator: str, start: int, data: bytes) -> None:
        self.ranges[url, validator, start, len(data)] = bytes(data)

    def get_header(self, url: str) -> tuple[str, bytes] | None:
        return self.headers.get(url)

    def put_header(self, url: str, validator: str, data: bytes) -> None:
        self.headers[url] = (validator, bytes(data))


def test_cached_ranges_are_used_and_a_damaged_one_fetched_again(
    sample_root, sites, local, monkeypatch
):
    monkeypatch.setattr(tiff, "MEMORY", tiff.TileMemory(0))  # only the range cache keeps tiles
    store = FakeCache()
    monkeypatch.setattr(cog, "_range_cache", lambda enabled: store if enabled else None)
    with serve_mirror(sample_root) as server:
        first = xembed.open_embeddings(sites[3101], YEARS, source="cog", root=server.url)
        assert same(first.embeddings.values, local[3101])
        assert store.headers and store.ranges
        monkeypatch.setattr(cog, "_HEADERS", {})  # as in a new process
        server.reset()
        again = xembed.open_embeddings(sites[3101], YEARS, source="cog", root=server.url)
        assert same(again.embeddings.values, local[3101])
        assert server.count("*.tiff") == 0
        # A cut entry (and a cut header) is never used: fetched again.
        key = next(iter(store.ranges))
        store.ranges[key] = store.ranges[key][:-7]
        url = next(iter(store.headers))
        store.headers[url] = (store.headers[url][0], store.headers[url][1][:3000])
        monkeypatch.setattr(cog, "_HEADERS", {})
        third = xembed.open_embeddings(sites[3101], YEARS, source="cog", root=server.url)
        assert same(third.embeddings.values, local[3101])
        assert server.count("*.tiff") == 2
        # cache=False: neither read nor written.
        grid, _ = site_grid(xembed.sites.as_site(sites[3101]), buffer=0)
        monkeypatch.setattr(cog, "_HEADERS", {})
        server.reset()
        plan = cog.plan_mosaic(server.url, grid, YEARS, cache=False)
        cog.MosaicReader(grid, YEARS, plan, cache=False)[:]
        assert server.count("*.tiff") > 8


def test_a_second_open_reads_nothing_remote_with_the_real_cache(
    sample_root, sites, local, monkeypatch, tmp_path
):
    """The persistent cache end to end: a new process opening the site again asks nothing."""
    from xembed.sources import index as mirror_index

    monkeypatch.setenv("XEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XEMBED_CACHE_BYTES", "1G")
    monkeypatch.setattr(tiff, "MEMORY", tiff.TileMemory(0))  # only the disk cache keeps tiles
    with serve_mirror(sample_root) as server:
        first = xembed.open_embeddings(sites[3101], YEARS, source="cog", root=server.url)
        assert same(first.embeddings.values, local[3101])
        # As in a new process: nothing remembered in memory, only the cache folder.
        monkeypatch.setattr(cog, "_HEADERS", {})
        monkeypatch.setattr(mirror_index, "_TABLES", {})
        server.reset()
        again = xembed.open_embeddings(sites[3101], YEARS, source="cog", root=server.url)
        assert same(again.embeddings.values, local[3101])
        assert server.requests == []
        # A truncated entry on disk is detected and fetched again, never returned.
        entry = max((tmp_path / "cache" / "ranges").rglob("*.bin"), key=lambda p: p.stat().st_size)
        entry.write_bytes(entry.read_bytes()[:-100])
        monkeypatch.setattr(cog, "_HEADERS", {})
        third = xembed.open_embeddings(sites[3101], YEARS, source="cog", root=server.url)
        assert same(third.embeddings.values, local[3101])
        assert 1 <= server.count("*.tiff") <= 2


def test_tile_memory_shares_in_flight_and_recent_tiles():
    memory = tiff.TileMemory(max_bytes=10)
    assert memory.claim("a") == ("mine", None)
    state, future = memory.claim("a")  # another chunk wants it meanwhile
    assert state == "wait" and not future.done()
    memory.settle("a", None)  # the fetch failed: the waiter fetches it itself
    assert future.result() is None
    assert memory.claim("a") == ("mine", None)  # nothing kept: the next one fetches
    memory.settle("a", b"123456")
    assert memory.claim("a") == ("have", b"123456")
    assert memory.claim("b") == ("mine", None)
    memory.settle("b", b"7890")
    memory.claim("a")  # used last: "b" is the least recently used
    assert memory.claim("c") == ("mine", None)
    memory.settle("c", b"xy")  # 12 bytes > 10: "b" goes
    assert memory.claim("b") == ("mine", None)
    assert memory.claim("a")[0] == memory.claim("c")[0] == "have"
