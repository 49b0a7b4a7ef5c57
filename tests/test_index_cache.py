"""The kept copy of a remote mirror index: used for a day, then revalidated (issue 11, item 5).

The mirror is served by ``xembed.testing.serve_mirror`` (``ETag`` /
``Last-Modified``, ``304 Not Modified`` to conditional requests); time is
faked by replacing ``xembed.sources.index.now``, never slept.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from xembed.errors import ReadError, SourceError
from xembed.sources import cog
from xembed.sources import index as mirror_index
from xembed.testing import serve_mirror

DAY = mirror_index.MAX_AGE
INDEX = "aef_index.parquet"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Clock:
    """A fake clock, an empty cache folder, and no index remembered by this process."""
    fake = Clock()
    monkeypatch.setattr(mirror_index, "now", fake)
    monkeypatch.setenv("XEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mirror_index, "_TABLES", {})
    return fake


@pytest.fixture
def mirror(tmp_path: Path, mini_mirror: tuple[Path, pd.DataFrame]) -> Path:
    """A copy of the mini mirror (years 2019, 2020) that tests may change."""
    return Path(shutil.copytree(mini_mirror[0], tmp_path / "mirror"))


def new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget what this process remembers; the kept copy on disk stays."""
    monkeypatch.setattr(mirror_index, "_TABLES", {})


def kept_copies() -> list[Path]:
    return sorted((Path(os.environ["XEMBED_CACHE"]) / "index").glob("*.index"))


def index_requests(server) -> list[int]:
    return [r.status for r in server.requests if r.path == INDEX]


def add_year(mirror: Path, year: int) -> None:
    """Publish ``year`` on the server: the index gains rows (its ETag changes)."""
    table = pd.read_parquet(mirror / INDEX)
    extra = table[table["year"] == 2020].assign(year=year)
    pd.concat([table, extra], ignore_index=True).to_parquet(mirror / INDEX)


def test_the_kept_copy_serves_a_new_process_without_a_request(clock, mirror, monkeypatch):
    with serve_mirror(mirror) as server:
        assert cog.available_years(server.url) == [2019, 2020]
        assert cog.available_years(server.url) == [2019, 2020]  # remembered
        new_process(monkeypatch)
        clock.now += DAY - 60  # still within the day
        assert cog.available_years(server.url) == [2019, 2020]  # from the copy on disk
        assert index_requests(server) == [200]
    assert len(kept_copies()) == 1


def test_after_a_day_the_copy_is_revalidated_and_a_304_keeps_it(clock, mirror, monkeypatch):
    with serve_mirror(mirror) as server:
        first = cog.load_index(server.url)
        clock.now += DAY + 1
        again = cog.load_index(server.url)
        assert again is first  # unchanged: the parsed table stands
        assert index_requests(server) == [200, 304]
        assert server.bytes_sent(INDEX) == (mirror / INDEX).stat().st_size  # once
        # The check is recorded on disk: another process trusts it for a day more.
        new_process(monkeypatch)
        clock.now += DAY - 60
        cog.load_index(server.url)
        assert index_requests(server) == [200, 304]


def test_a_changed_index_is_downloaded_again_after_a_day(clock, mirror, monkeypatch):
    with serve_mirror(mirror) as server:
        assert cog.available_years(server.url) == [2019, 2020]
        add_year(mirror, 2021)
        clock.now += DAY / 2
        assert cog.available_years(server.url) == [2019, 2020]  # not asked yet
        clock.now += DAY / 2 + 1
        assert cog.available_years(server.url) == [2019, 2020, 2021]
        assert index_requests(server) == [200, 200]


def test_a_missing_year_revalidates_at_once(clock, mirror):
    with serve_mirror(mirror) as server:
        assert cog.available_years(server.url, wanted=[2019]) == [2019, 2020]
        add_year(mirror, 2021)
        clock.now += 3600  # an hour: the copy is fresh, but lacks the year asked for
        assert cog.available_years(server.url, wanted=[2020, 2021]) == [2019, 2020, 2021]
        assert index_requests(server) == [200, 200]
        # A year the server does not have either: one check (304), then the caller's error.
        clock.now += 3600
        assert 2022 not in cog.available_years(server.url, wanted=[2022])
        assert index_requests(server) == [200, 200, 304]
        # Asked again at once: the copy was just checked, the server is not asked again.
        clock.now += 10
        assert 2022 not in cog.available_years(server.url, wanted=[2022])
        assert index_requests(server) == [200, 200, 304]


def test_resolve_source_sees_a_year_published_since_the_copy(clock, mirror):
    from xembed.cube import resolve_source

    with serve_mirror(mirror) as server:
        resolve_source("cog", root=server.url, years=(2019,))
        add_year(mirror, 2021)
        clock.now += 3600
        assert resolve_source("cog", root=server.url, years=(2021,)).root == server.url
        assert index_requests(server) == [200, 200]


def test_revalidation_retries_like_every_remote_read(clock, mirror, monkeypatch):
    monkeypatch.setattr(cog, "RETRY", cog.RetryPolicy(attempts=3, backoff=0.01))
    with serve_mirror(mirror) as server:
        cog.load_index(server.url)
        server.faults = [{"path_glob": INDEX, "nth": [1], "status": 503}]
        clock.now += DAY + 1
        cog.load_index(server.url)
        assert index_requests(server) == [200, 503, 304]
        server.faults = [{"path_glob": INDEX, "status": 503}]
        clock.now += DAY + 1
        with pytest.raises(ReadError, match=r"aef_index\.parquet.*HTTP 503.*gave up after 3"):
            cog.load_index(server.url)


def test_a_damaged_copy_is_fetched_again_never_read(clock, mirror, monkeypatch):
    with serve_mirror(mirror) as server:
        table = cog.load_index(server.url)
        (kept,) = kept_copies()
        blob = bytearray(kept.read_bytes())
        blob[-100] ^= 0xFF  # one flipped bit in the parquet bytes
        kept.write_bytes(bytes(blob))
        new_process(monkeypatch)
        again = cog.load_index(server.url)
        pd.testing.assert_frame_equal(
            again.drop(columns="footprint"), table.drop(columns="footprint")
        )
        kept.write_bytes(kept.read_bytes()[:-10])  # cut short
        new_process(monkeypatch)
        cog.load_index(server.url)
        assert index_requests(server) == [200, 200, 200]


def test_remote_index_paths_leaving_the_mirror_are_refused(clock, mirror):
    table = pd.read_parquet(mirror / INDEX)
    table["path"] = "../../elsewhere/" + table["path"]
    table.to_parquet(mirror / INDEX)
    with (
        serve_mirror(mirror) as server,
        pytest.raises(
            SourceError,
            match=r"lists the file '\.\./\.\./elsewhere/2019/.*outside the mirror folder",
        ),
    ):
        cog.read_index(server.url)


def test_an_index_that_cannot_be_kept_is_still_read(clock, mirror, monkeypatch, tmp_path, caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("XEMBED_CACHE", str(blocked))
    with serve_mirror(mirror) as server:
        assert cog.available_years(server.url) == [2019, 2020]
    assert "could not keep the mirror index" in caplog.text
