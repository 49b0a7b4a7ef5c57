"""Faults on reads: retries with backoff, a bounded budget, errors that name the file.

The HTTP tests serve the sample mirror from ``xembed.testing.serve_mirror`` on
127.0.0.1 and inject failures into chosen requests. Faults are switched on
after ``open_embeddings`` (which reads the index and the file headers), so
they hit the range reads that computing the cube makes inside dask tasks;
the header tests fault the opening itself. Reads run concurrently (up to 64
requests in flight), so several faults hit requests in flight at once.
"""

from __future__ import annotations

import dataclasses
import http.client
import logging
import pickle
import shutil
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import dask
import numpy as np
import pytest
import rasterio
import shapely

import xembed
from xembed.errors import SourceError, XembedError
from xembed.sources import cog, tiff
from xembed.sources.cog import ReadError, RetryPolicy
from xembed.testing import Fault, MirrorRequest, serve_mirror

YEARS = (2018, 2019, 2020)
#: Tiny delays, so that a test spends its time reading, not sleeping.
POLICY = RetryPolicy(attempts=5, backoff=0.001, max_backoff=0.004, timeout=1)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> RetryPolicy:
    monkeypatch.setattr(cog, "RETRY", POLICY)
    return POLICY


@pytest.fixture(scope="module")
def sites() -> dict[int, xembed.Site]:
    # 3101 lies in one file per year; 3103 straddles the UTM zone boundary.
    return {int(s.id): s for s in xembed.demo_sites() if int(s.id) in (3101, 3103)}


@pytest.fixture(scope="module")
def local(sample_root: Path, sites: dict[int, xembed.Site]) -> dict[int, np.ndarray]:
    """The reference: the same sites read from the folder directly."""
    return {
        rid: xembed.open_embeddings(site, YEARS, source=sample_root).embeddings.values
        for rid, site in sites.items()
    }


def force_gdal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read every file through the GDAL fallback, as if its layout did not fit."""

    def unsupported(data: bytes, size: int) -> tiff.TiffLayout:
        return dataclasses.replace(tiff.parse_layout(data, size), unsupported="test")

    monkeypatch.setattr(cog, "parse_layout", unsupported)
    monkeypatch.setattr(cog, "_HEADERS", {})


def retries_logged(caplog: pytest.LogCaptureFixture, name: str = "") -> int:
    return sum(
        r.name.startswith("xembed.sources.")
        and "retrying" in r.getMessage()
        and name in r.getMessage()
        for r in caplog.records
    )


# ----------------------------------------------------------------------------- clean reads


def test_clean_http_read_equals_local_read(sample_root, sites, local):
    with serve_mirror(sample_root) as server:
        for rid, site in sites.items():
            ds = xembed.open_embeddings(site, YEARS, source="cog", root=server.url)
            assert ds.attrs["source_root"] == server.url
            np.testing.assert_array_equal(ds.embeddings.values, local[rid])
        assert np.isnan(local[3101]).any() and not np.isnan(local[3101]).all()
        assert server.count(faulted=True) == 0
        assert {r.status for r in server.requests} <= {200, 206}
        assert (
            0
            < server.bytes_sent("*.tiff")
            < 0.5 * sum(p.stat().st_size for p in sample_root.glob("20*/*/*.tiff"))
        )
        # The range reader did the reading: no HEAD, every file request a ranged GET.
        assert server.count("*.tiff", method="HEAD") == 0
        assert all(r.range for r in server.requests if r.path.endswith(".tiff"))


# ----------------------------------------------------------------------------- transient faults


@pytest.mark.parametrize(
    "fault",
    [{"status": 503}, {"reset": True}, {"truncate": 100}, {"status": 429}],
    ids=["503", "reset", "truncated", "429"],
)
def test_transient_faults_on_window_reads_are_retried(sample_root, sites, local, fault, caplog):
    caplog.set_level(logging.INFO, logger="xembed.sources")
    with serve_mirror(sample_root) as server:
        ds = xembed.open_embeddings(sites[3103], YEARS, source="cog", root=server.url)
        server.reset()
        server.faults = {"path_glob": "*.tiff", "nth": [1, 2, 3], **fault}
        values = ds.embeddings.values  # the threaded scheduler: reads run in dask tasks
        assert server.count(faulted=True) == 3
    np.testing.assert_array_equal(values, local[3103])
    assert retries_logged(caplog) >= 1


def test_slow_responses_time_out_and_are_retried(sample_root, sites, local, caplog):
    caplog.set_level(logging.INFO, logger="xembed.sources")
    with serve_mirror(sample_root) as server:
        ds = xembed.open_embeddings(sites[3101], YEARS, source="cog", root=server.url)
        server.faults = {"path_glob": "*.tiff", "nth": [1, 2], "delay": 2.5}
        start = time.monotonic()
        values = ds.embeddings.values
        elapsed = time.monotonic() - start
    np.testing.assert_array_equal(values, local[3101])
    # Each stalled request is dropped after POLICY.timeout (1 s), not after 2.5 s.
    assert elapsed < 2 * 2.5


@pytest.mark.parametrize("reader", ["ranges", "gdal"])
def test_a_truncated_body_is_fetched_again(sample_root, sites, local, reader, monkeypatch):
    """A body cut short is retried, never used, and leaves nothing stale behind.

    The GDAL fallback: GDAL takes a body cut short for the end of the file,
    and caches that; without bypassing /vsicurl/'s cache on retry, every
    later attempt fails without a request.
    """
    if reader == "gdal":
        force_gdal(monkeypatch)
    with serve_mirror(sample_root) as server:
        ds = xembed.open_embeddings(sites[3101], YEARS, source="cog", root=server.url)
        server.reset()
        server.faults = {"path_glob": "*.tiff", "nth": 1, "truncate": 100}
        with dask.config.set(scheduler="synchronous"):
            values = ds.embeddings.values
        assert server.requests[0].sent == 100 and server.count(faulted=True) == 1
        # Later plain (cached) reads of the same file see the whole file again.
        again = xembed.open_embeddings(sites[3101], YEARS, source="cog", root=server.url)
        np.testing.assert_array_equal(again.embeddings.values, local[3101])
    np.testing.assert_array_equal(values, local[3101])


# ----------------------------------------------------------------------------- persistent faults


def test_persistent_500_gives_up_after_the_budget_naming_the_file(sample_root, sites, caplog):
    caplog.set_level(logging.INFO, logger="xembed.sources")
    with serve_mirror(sample_root) as server:
        ds = xembed.open_embeddings(sites[3101], YEARS, source="cog", root=server.url)
        server.reset()
        server.faults = {"path_glob": "*.tiff", "ranged": True, "status": 500}
        start = time.monotonic()
        with dask.config.set(scheduler="synchronous"), pytest.raises(ReadError) as info:
            ds.embeddings.compute()
        elapsed = time.monotonic() - start
        requests = list(server.requests)
    err = info.value
    name = Path(str(err.href)).name
    assert name.endswith(".tiff") and str(err.href).startswith(server.url)
    assert name in str(err)
    assert f"gave up after {POLICY.attempts} attempts" in str(err)
    assert "XEMBED_RETRY_ATTEMPTS" in str(err)
    assert err.attempts == POLICY.attempts
    assert isinstance(err, XembedError) and isinstance(err, OSError)
    mine = [r for r in requests if r.path.endswith(name)]
    # Every range read that started was tried exactly the budget, and no more
    # (the others were cancelled); the header checked at open is not re-read.
    tries = Counter(r.range for r in mine)
    assert tries and set(tries.values()) == {POLICY.attempts}
    assert not any((r.range or "").startswith("bytes=0-") for r in mine)
    assert all(r.status == 500 and r.method == "GET" for r in mine)
    assert retries_logged(caplog, name) == len(tries) * (POLICY.attempts - 1)
    assert elapsed < 10
    # dask.distributed pickles a task's error with its causes (tblib): GDAL's
    # exceptions would not survive that, so the error carries their words only.
    pytest.importorskip("tblib.pickling_support").install(err)
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), str(back), back.href, back.attempts) == (
        ReadError,
        str(err),
        err.href,
        err.attempts,
    )


def test_persistent_truncation_is_an_error_not_zeros(sample_root, sites):
    with serve_mirror(sample_root) as server:
        ds = xembed.open_embeddings(sites[3103], YEARS, source="cog", root=server.url)
        server.faults = {"path_glob": "*.tiff", "ranged": True, "truncate": 64}
        with pytest.raises(
            ReadError, match=r"could not read the window .* of 'http://127\.0\.0\.1"
        ):
            ds.embeddings.compute()  # raised inside a dask task of the threaded scheduler
        assert server.count(faulted=True) >= POLICY.attempts


def test_a_file_the_server_lacks_fails_at_once_naming_it(sample_root, sites):
    with serve_mirror(sample_root) as server:
        server.faults = {"path_glob": "*.tiff", "status": 404}
        with pytest.raises(ReadError, match=r"header of 'http://.*\.tiff': HTTP 404 .*not retried"):
            xembed.open_embeddings(sites[3101], YEARS, source="cog", root=server.url)
        files = {r.path for r in server.requests if r.path.endswith(".tiff")}
        assert server.count("*.tiff") == len(files)  # refused: each asked once, not retried


# ----------------------------------------------------------------------------- the index


def test_index_fetch_is_retried(sample_root, sites, local):
    faults = [
        {"path_glob": "aef_index.parquet", "nth": 1, "status": 503},
        {"path_glob": "aef_index.parquet", "nth": 2, "truncate": 10},
        {"path_glob": "aef_index.parquet", "nth": 3, "reset": True},
    ]
    with serve_mirror(sample_root, faults=faults) as server:
        ds = xembed.open_embeddings(sites[3101], YEARS, source="cog", root=server.url)
        assert server.count("aef_index.parquet") == 4
        np.testing.assert_array_equal(ds.embeddings.values, local[3101])


def test_index_that_keeps_failing_or_is_missing(sample_root, sites):
    with serve_mirror(sample_root, faults={"path_glob": "*.parquet", "status": 502}) as server:
        with pytest.raises(
            ReadError, match=r"aef_index\.parquet.*HTTP 502.*gave up after 5 attempts"
        ):
            xembed.open_embeddings(sites[3101], YEARS, source="cog", root=server.url)
        assert server.count("aef_index.parquet") == POLICY.attempts
    with serve_mirror(sample_root) as server:
        with pytest.raises(SourceError, match=r"HTTP 404 .*root= is the mirror's top folder"):
            xembed.open_embeddings(sites[3101], YEARS, source="cog", root=server.url + "/2019")
        assert len(server.requests) == 1


# ----------------------------------------------------------------------------- local files


@pytest.fixture
def partial_copy(tmp_path: Path, sample_root: Path, sites) -> Path:
    """The index and the 2019 files under site 3101 (a local copy may be partial)."""
    index = cog.read_index(sample_root)
    box = shapely.box(*sites[3101].geometry.bounds)
    rows = index[(index["year"] == 2019) & shapely.intersects(index["footprint"], box)]
    shutil.copy(sample_root / "aef_index.parquet", tmp_path)
    for path in rows["path"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_root / path, tmp_path / path)
    return tmp_path


#: Metres around site 3101 that take in the whole 1.6 km file it lies in.
BUFFER = 1700


def one_file(root: Path) -> Path:
    (path,) = root.glob("2019/*/*.tiff")
    return path


@pytest.mark.parametrize("reader", ["ranges", "gdal"])
@pytest.mark.parametrize("cut", ["tail", "half"])
def test_truncated_local_file_is_an_error_naming_it(partial_copy, sites, cut, reader, monkeypatch):
    if reader == "gdal":
        force_gdal(monkeypatch)
    path = one_file(partial_copy)
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.truncate(size - 1 if cut == "tail" else size // 2)
    # The header bytes are intact; a buffer makes the cube read every tile of the
    # file. The range reader refuses it at open (its tile table points past the
    # end); GDAL when reading. A user setting that would turn GDAL's read errors
    # into zeros is overridden.
    with rasterio.Env(GTIFF_IGNORE_READ_ERRORS="YES"), pytest.raises(ReadError) as info:
        xembed.open_embeddings(
            sites[3101], [2019], source=partial_copy, buffer=BUFFER
        ).embeddings.compute()
    assert info.value.href == str(path)
    assert f"{str(path)!r}" in str(info.value) and "truncated or corrupt" in str(info.value)
    assert "copy it again from the mirror" in str(info.value)
    assert info.value.attempts == 1  # a local file is not retried


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_local_file_with_a_cut_header_fails_at_open(partial_copy, sites):
    path = one_file(partial_copy)
    with open(path, "r+b") as file:
        file.truncate(3000)  # inside the TIFF header
    with pytest.raises(ReadError, match=rf"header of '{path}'.*truncated or corrupt"):
        xembed.open_embeddings(sites[3101], [2019], source=partial_copy)


def test_corrupt_tile_data_is_an_error_naming_the_file(partial_copy, sites):
    path = one_file(partial_copy)
    size = path.stat().st_size
    with open(path, "r+b") as file:  # the full-resolution tiles are at the end (COG layout)
        file.seek(size - 5000)
        file.write(b"\0" * 4000)
    ds = xembed.open_embeddings(sites[3101], [2019], source=partial_copy, buffer=BUFFER)
    with pytest.raises(ReadError, match=rf"of '{path}': .*ZSTD"):
        ds.embeddings.compute()


# ----------------------------------------------------------------------------- the pieces


def test_read_error_survives_pickling():
    err = ReadError("could not read 'x.tiff'", href="x.tiff", attempts=3)
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), str(back), back.href, back.attempts) == (ReadError, str(err), "x.tiff", 3)


def test_retry_policy_from_environment(monkeypatch):
    monkeypatch.setenv("XEMBED_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("XEMBED_HTTP_TIMEOUT", "2.5")
    policy = RetryPolicy.from_env()
    assert (policy.attempts, policy.timeout, policy.budget) == (2, 2.5, 0.5)
    assert policy.gdal_options()["GDAL_HTTP_LOW_SPEED_TIME"] == "3"
    monkeypatch.setenv("XEMBED_RETRY_ATTEMPTS", "many")
    with pytest.raises(ValueError, match="XEMBED_RETRY_ATTEMPTS='many' is not a whole number"):
        RetryPolicy.from_env()


def get(url: str, range_: str | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, method=method)
    if range_:
        request.add_header("Range", range_)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


def test_mirror_server_ranges(tmp_path):
    data = bytes(range(256)) * 4
    (tmp_path / "2019").mkdir()
    (tmp_path / "2019" / "a.tiff").write_bytes(data)
    (tmp_path.parent / "secret.txt").write_text("no")
    with serve_mirror(tmp_path, prefix="") as server:
        url = server.url + "/2019/a.tiff"
        assert get(url)[0::2] == (200, data)
        status, headers, body = get(url, "bytes=10-19")
        assert (status, headers["Content-Range"], body) == (206, "bytes 10-19/1024", data[10:20])
        assert get(url, "bytes=-4")[2] == data[-4:]
        assert get(url, "bytes=1000-")[2] == data[1000:]
        status, headers, body = get(url, "bytes=0-1,8-9")
        assert status == 206 and headers["Content-Type"].startswith("multipart/byteranges")
        assert b"Content-Range: bytes 8-9/1024\r\n\r\n" + data[8:10] in body
        assert get(url, "bytes=5000-")[0] == 416
        status, headers, body = get(url, method="HEAD")
        assert (status, headers["Content-Length"], body) == (200, "1024", b"")
        assert get(server.url + "/../secret.txt")[0] == 404
        assert get(server.url + "/2019/missing.tiff")[0] == 404
        assert [r.status for r in server.requests] == [200, 206, 206, 206, 206, 416, 200, 404, 404]


def test_mirror_server_faults(tmp_path):
    (tmp_path / "a.tiff").write_bytes(b"x" * 1000)
    seen: list[MirrorRequest] = []

    def every_third(request: MirrorRequest) -> Fault | None:
        seen.append(request)
        return Fault(status=500) if request.number % 3 == 0 else None

    with serve_mirror(tmp_path, faults={"nth": [2], "truncate": 10}) as server:
        url = server.url + "/a.tiff"
        assert get(url)[0] == 200
        with pytest.raises(http.client.IncompleteRead):
            get(url)
        with pytest.raises(ValueError, match=r"unknown fault rule keys \['stauts'\]"):
            server.faults = {"stauts": 503}
        server.faults = [{"path_glob": "*.parquet", "status": 503}, every_third]
        assert [get(url)[0] for _ in range(3)] == [500, 200, 200]
        assert [r.number for r in seen] == [3, 4, 5]
        server.faults = {"reset": True}
        with pytest.raises((ConnectionError, urllib.error.URLError, http.client.HTTPException)):
            get(url)
        assert server.count(faulted=True) == 3
        server.reset()
        assert server.requests == []
