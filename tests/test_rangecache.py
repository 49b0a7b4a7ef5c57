"""The persistent cache of fetched byte ranges (issue 11, item 6): xembed.sources.rangecache."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re
import time
from pathlib import Path

import pytest

from xembed.sources.rangecache import (
    DEFAULT_MAX_BYTES,
    RangeCache,
    cache_bytes_from_env,
    default_cache,
)

URL = "https://mirror.example/2024/13N/xjejfvrbm1fbu1ecw-0000000000-0000008192.tiff"
ETAG = '"4a1f-18c9"'
TILE = bytes(range(256)) * 64  # 16 KiB standing in for one compressed tile


def entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.bin"))


def test_hit_and_miss(tmp_path: Path) -> None:
    cache = RangeCache(tmp_path, max_bytes=10**6)
    assert cache.get(URL, ETAG, 4096, len(TILE)) is None
    cache.put(URL, ETAG, 4096, TILE)
    assert cache.get(URL, ETAG, 4096, len(TILE)) == TILE
    # Anything else in the key is another entry.
    assert cache.get(URL, ETAG, 4097, len(TILE)) is None
    assert cache.get(URL, ETAG, 4096, len(TILE) - 1) is None
    assert cache.get(URL, '"a-new-version"', 4096, len(TILE)) is None
    assert cache.get(URL.replace("13N", "14N"), ETAG, 4096, len(TILE)) is None
    # Another process (another object on the folder) sees it too.
    assert RangeCache(tmp_path, max_bytes=10**6).get(URL, ETAG, 4096, len(TILE)) == TILE


def test_headers_are_kept_with_their_validator(tmp_path: Path) -> None:
    cache = RangeCache(tmp_path, max_bytes=10**6)
    assert cache.get_header(URL) is None
    cache.put_header(URL, ETAG, b"II*\x00" + TILE)
    assert cache.get_header(URL) == (ETAG, b"II*\x00" + TILE)
    cache.put_header(URL, '"v2"', b"II*\x00")  # a newer header replaces the old one
    assert cache.get_header(URL) == ('"v2"', b"II*\x00")
    assert cache.get(URL, '"v2"', 0, 4) is None  # headers and ranges never mix


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:-1] + bytes([b[-1] ^ 1]), id="last-byte-flipped"),
        pytest.param(lambda b: b[:40] + bytes([b[40] ^ 0x80]) + b[41:], id="key-byte-flipped"),
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:10], id="truncated-in-header"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b + b"\x00", id="trailing-byte"),
    ],
)
def test_a_damaged_entry_is_a_miss_and_is_removed(tmp_path: Path, damage) -> None:
    cache = RangeCache(tmp_path, max_bytes=10**6)
    cache.put(URL, ETAG, 0, TILE)
    (path,) = entries(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    assert cache.get(URL, ETAG, 0, len(TILE)) is None  # never the damaged bytes
    assert not path.exists()
    cache.put(URL, ETAG, 0, TILE)  # what the reader does on a miss: fetch and keep again
    assert cache.get(URL, ETAG, 0, len(TILE)) == TILE


def test_a_damaged_header_entry_is_a_miss(tmp_path: Path) -> None:
    cache = RangeCache(tmp_path, max_bytes=10**6)
    cache.put_header(URL, ETAG, TILE)
    (path,) = entries(tmp_path)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    assert cache.get_header(URL) is None
    assert entries(tmp_path) == []


def test_eviction_keeps_the_bound_and_drops_the_least_recently_used(tmp_path: Path) -> None:
    probe = RangeCache(tmp_path / "probe", max_bytes=10**6)
    probe.put(URL, ETAG, 0, TILE)
    size = entries(tmp_path / "probe")[0].stat().st_size  # one entry on disk
    cache = RangeCache(tmp_path / "c", max_bytes=10 * size + size // 2)
    for i in range(10):
        cache.put(URL, ETAG, i * len(TILE), TILE)
    assert cache.info()["entries"] == 10  # under the bound: nothing evicted
    assert cache.get(URL, ETAG, 0, len(TILE)) == TILE  # the oldest is used again
    cache.put(URL, ETAG, 10 * len(TILE), TILE)  # over the bound
    info = cache.info()
    assert info["bytes"] <= cache.max_bytes
    assert info["entries"] == 9  # down to 90% of the bound
    kept = [cache.get(URL, ETAG, i * len(TILE), len(TILE)) is not None for i in range(11)]
    assert kept == [True, False, False] + [True] * 8  # entries 1 and 2 were least recent


def test_eviction_counts_what_other_processes_wrote(tmp_path: Path) -> None:
    entry = len(TILE) + 200  # a little more than one entry on disk
    other = RangeCache(tmp_path, max_bytes=4 * entry)
    for i in range(3):
        other.put(URL, ETAG, i, TILE)
    cache = RangeCache(tmp_path, max_bytes=4 * entry)  # another process, same folder
    cache.put(URL, ETAG, 10, TILE)  # its first write scans the folder: 4 entries fit
    cache.put(URL, ETAG, 11, TILE)  # 5 do not: the other process's oldest go first
    assert sum(p.stat().st_size for p in entries(tmp_path)) <= 4 * entry
    found = [cache.get(URL, ETAG, i, len(TILE)) is not None for i in (0, 1, 2, 10, 11)]
    assert found == [False, False, True, True, True]


def test_info_and_clear(tmp_path: Path) -> None:
    cache = RangeCache(tmp_path, max_bytes=10**6)
    assert cache.info() == {"entries": 0, "bytes": 0, "max_bytes": 10**6, "root": str(tmp_path)}
    cache.put(URL, ETAG, 0, TILE)
    cache.put_header(URL, ETAG, b"header")
    on_disk = sum(p.stat().st_size for p in entries(tmp_path))
    assert cache.info()["entries"] == 2 and cache.info()["bytes"] == on_disk
    assert cache.clear() == on_disk
    assert cache.info()["entries"] == 0 and entries(tmp_path) == []
    assert RangeCache(tmp_path / "never-written", max_bytes=1).clear() == 0


def test_a_crashed_writer_leaves_nothing_that_reads_back(tmp_path: Path) -> None:
    cache = RangeCache(tmp_path, max_bytes=10**6)
    cache.put(URL, ETAG, 0, TILE)
    (path,) = entries(tmp_path)
    # What a writer killed mid-write leaves: a partial temporary beside the entry.
    partial = path.with_name(f".{path.name}.12345-deadbeef.tmp")
    partial.write_bytes(path.read_bytes()[:100])
    path.unlink()
    assert cache.get(URL, ETAG, 0, len(TILE)) is None
    assert cache.info()["entries"] == 0
    assert partial.exists()  # recent: perhaps a live writer's, left alone
    hours_ago = time.time() - 2 * 3600
    os.utime(partial, (hours_ago, hours_ago))
    cache.info()  # scans remove temporaries a crashed writer left long ago
    assert not partial.exists()


def _write_many(root: str, payload: bytes, rounds: int) -> None:
    cache = RangeCache(root, max_bytes=10**9)
    for _ in range(rounds):
        cache.put(URL, ETAG, 0, payload)


def _read_many(root: str, payload: bytes, rounds: int) -> None:
    cache = RangeCache(root, max_bytes=10**9)
    for _ in range(rounds):
        found = cache.get(URL, ETAG, 0, len(payload))
        if found is not None and found != payload:
            raise SystemExit(3)  # a torn or foreign entry came back


def test_processes_writing_one_key_at_once_leave_a_valid_entry(tmp_path: Path) -> None:
    payload = os.urandom(1 << 20)  # large enough that writes overlap
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_write_many, args=(str(tmp_path), payload, 40)) for _ in range(3)
    ]
    workers.append(context.Process(target=_read_many, args=(str(tmp_path), payload, 200)))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    cache = RangeCache(tmp_path, max_bytes=10**9)
    assert cache.get(URL, ETAG, 0, len(payload)) == payload
    assert len(entries(tmp_path)) == 1
    assert list(tmp_path.rglob("*.tmp")) == []  # every temporary renamed or removed


def test_default_cache_lives_in_the_cache_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XEMBED_CACHE", str(tmp_path))
    monkeypatch.delenv("XEMBED_CACHE_BYTES", raising=False)
    cache = default_cache()
    assert cache is not None and cache is default_cache()  # one per process
    assert cache.root == tmp_path / "ranges" and cache.max_bytes == DEFAULT_MAX_BYTES
    monkeypatch.setenv("XEMBED_CACHE_BYTES", "0")
    assert default_cache() is None  # disabled


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", DEFAULT_MAX_BYTES),
        ("123456", 123456),
        ("500M", 500_000_000),
        ("2G", 2_000_000_000),
        ("2gb", 2_000_000_000),
        ("1.5 G", 1_500_000_000),
        ("64K", 64_000),
        ("0", 0),
    ],
)
def test_cache_size_from_the_environment(monkeypatch, text: str, expected: int) -> None:
    monkeypatch.setenv("XEMBED_CACHE_BYTES", text)
    assert cache_bytes_from_env() == expected


@pytest.mark.parametrize("text", ["lots", "-1", "5 GiB", "1e9", "2 G B", "G"])
def test_bad_cache_sizes_are_refused_with_the_forms_accepted(monkeypatch, text: str) -> None:
    monkeypatch.setenv("XEMBED_CACHE_BYTES", text)
    with pytest.raises(
        ValueError,
        match=rf"XEMBED_CACHE_BYTES={re.escape(repr(text))} is not a size; set it to a number of "
        r"bytes, or a "
        r"number with K, M, G or T \(e\.g\. 500M, 2G; decimal units\), or 0 to disable",
    ):
        default_cache()


def test_a_cache_needs_a_positive_bound(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"max_bytes must be a whole number of bytes > 0, not 0"):
        RangeCache(tmp_path, max_bytes=0)


def test_a_cache_that_cannot_be_written_is_only_a_miss(tmp_path: Path, caplog) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")  # so nothing can be written below it
    cache = RangeCache(blocked / "ranges", max_bytes=10**6)
    cache.put(URL, ETAG, 0, TILE)  # a full disk or a read-only folder must not fail a read
    cache.put(URL, ETAG, 1, TILE)
    assert cache.get(URL, ETAG, 0, len(TILE)) is None
    warnings = [r for r in caplog.records if "could not keep fetched bytes" in r.getMessage()]
    assert len(warnings) == 1  # said once, not per entry


def test_a_cache_pickles_as_its_folder_and_bound(tmp_path: Path) -> None:
    cache = RangeCache(tmp_path, max_bytes=10**6)
    cache.put(URL, ETAG, 0, TILE)
    copy = pickle.loads(pickle.dumps(cache))  # what a dask worker receives
    assert (copy.root, copy.max_bytes) == (tmp_path, 10**6)
    assert copy.get(URL, ETAG, 0, len(TILE)) == TILE
    assert pickle.loads(pickle.dumps(cache)) is copy  # one object per folder per process
