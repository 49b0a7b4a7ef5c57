"""``xembed cache info`` / ``xembed cache clear`` (issue 11, item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xembed.cli import main
from xembed.sources import index, rangecache

URL = "https://mirror.example/2024/13N/a-0000000000-0000000000.tiff"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An XEMBED_CACHE folder holding two fetched ranges, one index copy and sample data."""
    monkeypatch.setenv("XEMBED_CACHE", str(tmp_path))
    monkeypatch.setenv("XEMBED_CACHE_BYTES", "2G")
    ranges = rangecache.default_cache()
    assert ranges is not None
    ranges.put(URL, '"v1"', 0, b"\x28\xb5\x2f\xfd" * 1000)
    ranges.put_header(URL, '"v1"', b"II*\x00" * 100)
    copy = index.IndexCopy(b"PAR1" * 500, '"e1"', None, 0.0)
    index.write_copy(index.kept_folder() / "0123456789abcdef.index", copy)
    (tmp_path / "sample-v1").mkdir()
    (tmp_path / "sample-v1" / "aef_index.parquet").write_bytes(b"the bundled sample")
    return tmp_path


def test_cache_info(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"cache folder: {cache} (XEMBED_CACHE)"
    assert out[1].startswith("fetched byte ranges: 2 entries, 4.") and out[1].endswith(
        "kB of 2.0 GB"
    )
    assert out[2] == "mirror indexes: 1 kept, 2.1 kB (revalidated daily)"


def test_cache_clear_keeps_the_sample(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    on_disk = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    sample = (cache / "sample-v1" / "aef_index.parquet").stat().st_size
    assert main(["cache", "clear"]) == 0
    freed = on_disk - sample
    assert capsys.readouterr().out == (
        f"freed {freed / 1e3:.1f} kB from {cache} (fetched byte ranges and mirror indexes)\n"
    )
    left = [p for p in cache.rglob("*") if p.is_file()]
    assert left == [cache / "sample-v1" / "aef_index.parquet"]
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "fetched byte ranges: 0 entries, 0 B of 2.0 GB" in out
    assert "mirror indexes: 0 kept, 0 B" in out


def test_cache_info_when_disabled(cache: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XEMBED_CACHE_BYTES", "0")
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "fetched byte ranges: 2 entries, 4." in out  # what an earlier run left
    assert "(disabled: XEMBED_CACHE_BYTES=0)" in out
    assert main(["cache", "clear"]) == 0  # still clears what is there
    assert not list((cache / "ranges").rglob("*.bin"))


def test_bad_cache_size_is_a_usage_error(cache: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XEMBED_CACHE_BYTES", "five gigs")
    assert main(["cache", "info"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xembed cache: environment variable XEMBED_CACHE_BYTES='five gigs' is")
    assert "e.g. 500M, 2G" in err


def test_unknown_cache_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["cache", "purge"])
    assert exit_.value.code == 2
    assert "invalid choice: 'purge' (choose from" in capsys.readouterr().err


def test_cache_clear_failure_exits_1(cache: Path, monkeypatch, capsys) -> None:
    def refuse(self: rangecache.RangeCache) -> int:
        raise PermissionError(13, "Permission denied", str(self.root))

    monkeypatch.setattr(rangecache.RangeCache, "clear", refuse)
    assert main(["cache", "clear"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"xembed cache: could not clear the cache in {cache}: [Errno 13]")


def test_cache_clear_quiet(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "clear", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert not list((cache / "ranges").rglob("*.bin"))
