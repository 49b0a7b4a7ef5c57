"""Soak: many sites read over a misbehaving network never give silently wrong numbers.

About 200 small sites are extracted with :func:`xembed.extract` over HTTP
from ``xembed.testing.serve_mirror`` while it injects a mix of faults at
random (seeded): 5 % HTTP 503, 1 % bodies cut to half, 1 % connection
resets, a few stalls longer than the read timeout, and header reads (a file's
first byte range) cut short at 1,000-12,000 bytes, the cut that GDAL once
took for a whole header with all-zero or all-nodata tiles. The table is
compared site by site, exactly, with the same extraction from the local
folder: every row must be equal, and every site-year missing from the
table must be listed in ``attrs["errors"]``.

Also here: the mirror server itself under load (many concurrent
connections, latency, request log, conditional requests), which the soak
and ``benchmarks/remote.py`` rely on.
"""

from __future__ import annotations

import http.client
import random
import re
import threading
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import xembed
from xembed.sources import cog
from xembed.sources.cog import RetryPolicy
from xembed.testing import Fault, MirrorRequest, random_sites, serve_mirror

SITES = 200
YEARS = (2019, 2020)
#: Quick retries and a short timeout: the soak spends its time reading.
POLICY = RetryPolicy(attempts=5, backoff=0.001, max_backoff=0.004, timeout=1)
STALL = 3.0  # seconds: longer than POLICY.timeout, so a stalled read is dropped and retried


class MixedFaults:
    """A seeded fault rule: the soak's mix, decided request by request."""

    def __init__(self, root: Path, seed: int = 20261207) -> None:
        self.root = root
        self.random = random.Random(seed)
        self.kinds: dict[str, int] = {}

    def half(self, request: MirrorRequest) -> int:
        """Half the body the server will send (of a multi-range body: 1,000 bytes)."""
        path = self.root / request.path
        size = path.stat().st_size if path.is_file() else 0
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.range or "")
        if request.range is None:
            return size // 2
        if match is None:
            return 1000
        stop = min(int(match[2]) + 1 if match[2] else size, size)
        return max(stop - int(match[1]), 0) // 2

    def __call__(self, request: MirrorRequest) -> Fault | None:
        # Random at the soak's rates, plus one of each kind in every 100
        # requests, so that every kind is met whatever the reader's count.
        draw, nth = self.random.random(), request.number % 100
        get = request.method == "GET"
        header = get and (request.range or "").startswith("bytes=0-")  # a file's first bytes
        if header and request.path.endswith(".tiff") and self.random.random() < 0.25:
            kind, fault = "header cut", Fault(truncate=self.random.randint(1000, 12000))
        elif draw < 0.05 or nth == 10:
            kind, fault = "503", Fault(status=503)
        elif get and (draw < 0.06 or nth == 20):
            kind, fault = "body cut to half", Fault(truncate=self.half(request))
        elif draw < 0.07 or nth == 30:
            kind, fault = "reset", Fault(reset=True)
        elif request.number % 250 == 150:  # rare: each costs a timeout
            kind, fault = "stall", Fault(delay=STALL)
        else:
            return None
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return fault


def _claims(errors: pd.DataFrame) -> set[str]:
    """How the reference words "this site-year has no data" (its errors, read locally)."""
    return {" ".join(str(e).split()[:3]) for e in errors["error"]}


def compare(expected: pd.DataFrame, got: pd.DataFrame) -> dict[str, int]:
    """Site by site, year by year, exactly: what was right, wrong, missing and listed.

    A site-year the reference has rows for, listed among the faulted run's
    errors with the reference's own words for "no data there", is wrong: a
    fault passed off as nodata.
    """
    errors = got.attrs["errors"]
    claims = _claims(expected.attrs["errors"])
    failed = set(errors.loc[errors["year"].isna(), "site_id"])
    why = {(e.site_id, e.year): str(e.error) for e in errors.itertuples(index=False)}
    wrong_sites: set[object] = set()
    wrong = listed = unlisted = 0
    for (site_id, year), want in expected.groupby(["site_id", "year"], sort=False):
        have = got[(got["site_id"] == site_id) & (got["year"] == year)]
        if have.empty:
            reason = why.get((site_id, year), "read error" if site_id in failed else None)
            if reason is None:
                unlisted += len(want)
            elif " ".join(reason.split()[:3]) in claims:
                wrong += len(want)
                wrong_sites.add(site_id)
            else:
                listed += len(want)
            continue
        try:
            pd.testing.assert_frame_equal(
                have.reset_index(drop=True), want.reset_index(drop=True), check_exact=True
            )
        except AssertionError:
            wrong += len(want)
            wrong_sites.add(site_id)
    keys = ["site_id", "year", "stat"]
    asked = set(expected[keys].itertuples(index=False))
    wrong += sum(key not in asked for key in got[keys].itertuples(index=False))  # unasked rows
    return {
        "sites": expected["site_id"].nunique(),
        "rows expected": len(expected),
        "rows returned": len(got),
        "wrong rows": wrong,
        "sites with wrong rows": len(wrong_sites),
        "missing rows listed in errors": listed,
        "missing rows not listed": unlisted,
        "errors listed": len(errors),
    }


@pytest.mark.slow
def test_soak_mixed_faults_never_give_silently_wrong_rows(sample_root, monkeypatch, tmp_path):
    monkeypatch.setattr(cog, "RETRY", POLICY)
    monkeypatch.setenv("XEMBED_CACHE", str(tmp_path / "cache"))  # nothing cached from before
    sites = random_sites(sample_root, SITES, seed=11, area_ha=(1.0, 5.0))
    faults = MixedFaults(sample_root)
    with warnings.catch_warnings():  # extract warns of failed site-years: compared below
        warnings.simplefilter("ignore", UserWarning)
        expected = xembed.extract(sites, YEARS, source=sample_root, progress=False)
        with serve_mirror(sample_root, faults=faults) as server:
            got = xembed.extract(sites, YEARS, source="cog", root=server.url, progress=False)
            requests = len(server.requests)
    # Locally every site-year reads; a few lie on nodata (rows or errors, as the API says).
    assert len(expected) + len(expected.attrs["errors"]) == SITES * len(YEARS)
    counts = compare(expected, got)
    report = ", ".join(f"{k}: {v}" for k, v in counts.items())
    injected = ", ".join(f"{k}: {v}" for k, v in sorted(faults.kinds.items()))
    print(f"\nsoak: {report}\nrequests: {requests}; faults injected: {injected}")
    assert {"503", "reset", "body cut to half", "header cut", "stall"} <= set(faults.kinds), (
        injected
    )
    assert counts["wrong rows"] == 0, report
    assert counts["missing rows not listed"] == 0, report


# ----------------------------------------------------------------------------- the server


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


def test_server_answers_many_concurrent_connections_and_logs_them(tmp_path):
    data = bytes(range(256)) * 64
    (tmp_path / "a.tiff").write_bytes(data)
    n, latency = 200, 1.0  # long enough for all 200 to connect on a busy machine
    results: list[bytes] = []
    barrier = threading.Barrier(n)

    def fetch(i: int) -> None:
        barrier.wait()
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", f"{path}/a.tiff", headers={"Range": f"bytes={i}-{i + 9}"})
        results.append(conn.getresponse().read())
        conn.close()

    with serve_mirror(tmp_path, latency=latency) as server:
        host, port = server.url.split("/")[2].split(":")
        path = "/" + server.url.split("/", 3)[3]
        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        requests = list(server.requests)
        # All at once: each waited `latency` while the others were in flight.
        assert server.peak_in_flight() > n // 2
        assert server.rounds() < 5
        assert server.bytes_sent() == 10 * n and server.count("*.tiff") == n
    assert sorted(results) == sorted(data[i : i + 10] for i in range(n))
    assert all(r.status == 206 and r.ended - r.started >= latency for r in requests)


def test_server_logs_sequential_rounds_and_throttles(tmp_path):
    (tmp_path / "b.tiff").write_bytes(bytes(200_000))
    with serve_mirror(tmp_path, rate=1e6) as server:
        for _ in range(3):
            assert _get(server.url + "/b.tiff")[0] == 200
        assert (server.rounds(), server.peak_in_flight()) == (3, 1)
        assert server.rounds("*.parquet") == 0
        # 200 kB at 1 MB/s: each answer took at least 0.2 s.
        assert all(r.ended - r.started >= 0.2 for r in server.requests)
        server.reset()
        assert (server.rounds(), server.peak_in_flight(), server.bytes_sent()) == (0, 0, 0)


def test_server_answers_conditional_requests_with_304(tmp_path):
    path = tmp_path / "aef_index.parquet"
    path.write_bytes(b"version 1")
    with serve_mirror(tmp_path) as server:
        url = server.url + "/aef_index.parquet"
        status, headers, body = _get(url)
        assert (status, headers["Content-Length"], body) == (200, "9", b"version 1")
        etag, modified = headers["ETag"], headers["Last-Modified"]
        assert _get(url, {"If-None-Match": etag})[0::2] == (304, b"")
        assert _get(url, {"If-None-Match": f'"other", W/{etag}'})[0] == 304
        assert _get(url, {"If-Modified-Since": modified})[0] == 304
        # If-None-Match wins over the date; an unknown tag means changed.
        assert _get(url, {"If-None-Match": '"other"', "If-Modified-Since": modified})[0] == 200
        path.write_bytes(b"version 22")  # a new index: new validators
        status, headers, body = _get(url, {"If-None-Match": etag})
        assert (status, body) == (200, b"version 22") and headers["ETag"] != etag
        assert _get(url, {"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"})[0] == 200
        ranged = _get(url, {"Range": "bytes=0-3", "If-None-Match": headers["ETag"]})
        assert ranged[0] == 304
        assert [r.status for r in server.requests] == [200, 304, 304, 304, 200, 200, 200, 304]
    assert np.all([r.sent == 0 for r in server.requests if r.status == 304])
