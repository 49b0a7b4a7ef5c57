"""A persistent, size-bounded cache of byte ranges fetched from remote mirror files.

Mirror files never change once published, so what was fetched once -- a file
header, the compressed (ZSTD) bytes of an internal tile -- can be kept and
used again by the next notebook run, the next process or a neighbouring site.
Entries live under ``xembed._util.cache_dir() / "ranges"`` (the
``XEMBED_CACHE`` folder), keyed by URL + validator (the file's ETag or
Last-Modified, so a replaced file never reads back stale bytes) + range.

Safety
------
- Every entry holds its key, its length and a BLAKE2b checksum of its bytes:
  a corrupt, truncated or foreign entry is deleted on read and reported as a
  miss, never returned.
- Entries are written to a temporary sibling and renamed into place
  (:func:`xembed._util.atomic_write`), so a crash mid-write leaves nothing
  that reads back, and several processes can share the folder: two writers
  of one key both write whole, equal files and the last rename wins.
- The folder is held under ``max_bytes`` by evicting the least recently used
  entries (use is recorded by touching an entry's modification time on every
  hit). A process counts what it writes and rescans the folder when its count
  passes the bound, so with several writers the folder may exceed the bound
  by what they wrote since their last scan, until the next scan. An entry
  another process evicted first is simply gone: fine.

The size bound comes from ``XEMBED_CACHE_BYTES`` (default 5 GB; ``0``
disables the cache); see :func:`default_cache`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import threading
import time
from pathlib import Path
from typing import Any

from xembed._util import atomic_write, cache_dir

__all__ = ["DEFAULT_MAX_BYTES", "RangeCache", "cache_bytes_from_env", "default_cache"]

logger = logging.getLogger(__name__)

#: The default bound of :func:`default_cache`: 5 GB (decimal).
DEFAULT_MAX_BYTES = 5_000_000_000

_MAGIC = b"XRC1"
# magic, key length, meta length, data length, BLAKE2b-128 of key + meta + data
_HEAD = struct.Struct("<4sIIQ16s")
_SUFFIX = ".bin"
_LOW_WATER = 0.9  # evict down to this share of the bound, so scans stay rare
_STALE_TEMP = 3600.0  # seconds after which a temporary file is a crashed writer's
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([KMGT]?)B?\s*$", re.IGNORECASE)


def cache_bytes_from_env() -> int:
    """The cache bound from ``XEMBED_CACHE_BYTES``: bytes, or a number with K, M, G or T.

    Units are decimal (``2G`` is 2,000,000,000 bytes); a trailing ``B`` is
    allowed (``2GB``). Unset or empty: :data:`DEFAULT_MAX_BYTES`. ``0``
    disables the cache.

    Raises
    ------
    ValueError
        If the variable is set to anything else, naming it and the forms accepted.

    Examples
    --------
    >>> import os
    >>> os.environ["XEMBED_CACHE_BYTES"] = "1.5G"
    >>> cache_bytes_from_env()
    1500000000
    >>> os.environ["XEMBED_CACHE_BYTES"] = "lots"
    >>> cache_bytes_from_env()
    Traceback (most recent call last):
    ...
    ValueError: environment variable XEMBED_CACHE_BYTES='lots' is not a size; set it to ...
    >>> del os.environ["XEMBED_CACHE_BYTES"]
    """
    text = os.environ.get("XEMBED_CACHE_BYTES", "")
    if not text.strip():
        return DEFAULT_MAX_BYTES
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(
            f"environment variable XEMBED_CACHE_BYTES={text!r} is not a size; set it to a "
            "number of bytes, or a number with K, M, G or T (e.g. 500M, 2G; decimal units), "
            "or 0 to disable the cache"
        )
    return int(float(match[1]) * _UNITS[match[2].upper()])


_DEFAULTS: dict[tuple[Path, int], RangeCache] = {}
_DEFAULTS_LOCK = threading.Lock()


def default_cache() -> RangeCache | None:
    """The process-wide cache: ``cache_dir() / "ranges"``, bounded by ``XEMBED_CACHE_BYTES``.

    Returns ``None`` when the cache is disabled (``XEMBED_CACHE_BYTES=0``).
    The same object is returned while ``XEMBED_CACHE`` and
    ``XEMBED_CACHE_BYTES`` stay the same (read at every call).

    Raises
    ------
    ValueError
        If ``XEMBED_CACHE_BYTES`` is not a size (see :func:`cache_bytes_from_env`).

    Examples
    --------
    >>> import os
    >>> before = os.environ.get("XEMBED_CACHE_BYTES")
    >>> os.environ["XEMBED_CACHE_BYTES"] = "0"
    >>> default_cache() is None
    True
    >>> os.environ["XEMBED_CACHE_BYTES"] = "2G"
    >>> default_cache().max_bytes
    2000000000
    >>> _ = os.environ.pop("XEMBED_CACHE_BYTES") if before is None else os.environ.update(
    ...     XEMBED_CACHE_BYTES=before)
    """
    max_bytes = cache_bytes_from_env()
    if max_bytes <= 0:
        return None
    return _shared(cache_dir() / "ranges", max_bytes)


def _shared(root: str | os.PathLike[str], max_bytes: int) -> RangeCache:
    """The one cache object of this process for ``root`` and ``max_bytes``."""
    key = (Path(root), max_bytes)
    with _DEFAULTS_LOCK:
        cache = _DEFAULTS.get(key)
        if cache is None:
            cache = _DEFAULTS[key] = RangeCache(*key)
        return cache


def _digest(*parts: bytes | memoryview) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part)
    return h.digest()


class RangeCache:
    """Byte ranges of remote files kept on disk, least recently used out first.

    Parameters
    ----------
    root : str or path
        The cache folder (created on the first write).
    max_bytes : int
        The bound on the entries' total size, in bytes (> 0).

    Examples
    --------
    >>> import tempfile
    >>> cache = RangeCache(tempfile.mkdtemp(), max_bytes=10_000)
    >>> url, etag = "https://example.org/2024/13N/a.tiff", '"5f-1a"'
    >>> cache.get(url, etag, 100, 4) is None
    True
    >>> cache.put(url, etag, 100, b"ZSTD")
    >>> cache.get(url, etag, 100, 4)
    b'ZSTD'
    >>> cache.get(url, '"other-version"', 100, 4) is None
    True
    >>> cache.put_header(url, etag, b"II*\\x00...")
    >>> cache.get_header(url)
    ('"5f-1a"', b'II*\\x00...')
    >>> cache.info()["entries"], cache.clear() > 0, cache.info()["bytes"]
    (2, True, 0)
    """

    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(
                f"RangeCache max_bytes must be a whole number of bytes > 0, not {max_bytes!r} "
                "(to disable caching, do not make a cache: default_cache() is None then)"
            )
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._total: int | None = None  # this process's estimate; None: scan first
        self._warned = False

    def __repr__(self) -> str:
        return f"RangeCache({str(self.root)!r}, max_bytes={self.max_bytes})"

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        # Pickled (e.g. to dask workers) as its folder and bound; each process then
        # shares one object per folder, so its running size count is not rebuilt per task.
        return _shared, (str(self.root), self.max_bytes)

    # ---------------------------------------------------------------- public API

    def get(self, url: str, validator: str, start: int, length: int) -> bytes | None:
        """The ``length`` bytes at ``start`` of ``url`` (as ``validator``), or None."""
        found = self._read(self._range_key(url, validator, start, length))
        if found is None or len(found[1]) != length:
            return None
        return found[1]

    def put(self, url: str, validator: str, start: int, data: bytes) -> None:
        """Keep ``data``, the bytes at ``start`` of ``url`` (as ``validator``)."""
        self._write(self._range_key(url, validator, start, len(data)), b"", bytes(data))

    def get_header(self, url: str) -> tuple[str, bytes] | None:
        """(validator, header bytes) kept for ``url``, or None."""
        found = self._read(self._header_key(url))
        if found is None:
            return None
        return found[0].decode(), found[1]

    def put_header(self, url: str, validator: str, data: bytes) -> None:
        """Keep the header bytes of ``url`` and its validator (trusted: files are immutable)."""
        self._write(self._header_key(url), validator.encode(), bytes(data))

    def info(self) -> dict[str, Any]:
        """``entries``, ``bytes`` (their total size), ``max_bytes`` and ``root``."""
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        with self._lock:
            self._total = total
        return {
            "entries": len(entries),
            "bytes": total,
            "max_bytes": self.max_bytes,
            "root": str(self.root),
        }

    def clear(self) -> int:
        """Delete every entry (and leftover temporary files); return the bytes freed."""
        freed = 0
        for _, size, path in self._entries(temporaries=True):
            try:
                path.unlink()
            except FileNotFoundError:
                continue  # another process removed it first
            freed += size
        with self._lock:
            self._total = 0
        return freed

    # ---------------------------------------------------------------- entries

    @staticmethod
    def _range_key(url: str, validator: str, start: int, length: int) -> bytes:
        return f"range\n{url}\n{validator}\n{int(start)}\n{int(length)}".encode()

    @staticmethod
    def _header_key(url: str) -> bytes:
        return f"header\n{url}".encode()

    def _path(self, key: bytes) -> Path:
        name = hashlib.blake2b(key, digest_size=16).hexdigest()
        return self.root / name[:2] / (name + _SUFFIX)

    def _read(self, key: bytes) -> tuple[bytes, bytes] | None:
        """(meta, data) of the entry for ``key``; a damaged entry is deleted: None."""
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except OSError:  # none (most often), or unreadable: a miss either way
            return None
        found = self._decode(blob, key)
        if found is None:
            path.unlink(missing_ok=True)  # corrupt, truncated or foreign: fetch afresh
            return None
        self._touch(path)  # record the use: eviction goes by modification time
        return found

    @staticmethod
    def _touch(path: Path) -> None:
        stamp = time.time_ns()
        try:
            os.utime(path, ns=(stamp, stamp))
        except FileNotFoundError:
            pass  # evicted meanwhile by another process: the bytes read are whole

    @staticmethod
    def _decode(blob: bytes, key: bytes) -> tuple[bytes, bytes] | None:
        if len(blob) < _HEAD.size:
            return None
        magic, key_len, meta_len, data_len, digest = _HEAD.unpack_from(blob)
        body = memoryview(blob)[_HEAD.size :]
        if magic != _MAGIC or len(body) != key_len + meta_len + data_len:
            return None
        if bytes(body[:key_len]) != key or _digest(body) != digest:
            return None
        meta = bytes(body[key_len : key_len + meta_len])
        return meta, bytes(body[key_len + meta_len :])

    def _write(self, key: bytes, meta: bytes, data: bytes) -> None:
        head = _HEAD.pack(_MAGIC, len(key), len(meta), len(data), _digest(key, meta, data))
        path = self._path(key)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                f.write(head)
                f.write(key)
                f.write(meta)
                f.write(data)

        try:
            atomic_write(path, write)
        except OSError as err:  # a full disk or a read-only folder must not fail the read
            if not self._warned:
                self._warned = True
                logger.warning("could not keep fetched bytes in %s (%s); reading on", path, err)
            return
        self._touch(path)  # a precise stamp: the file system's own may be coarse
        size = _HEAD.size + len(key) + len(meta) + len(data)
        with self._lock:
            if self._total is not None:
                self._total += size
            over = self._total is None or self._total > self.max_bytes
        if over:
            self._evict()

    def _entries(self, *, temporaries: bool = False) -> list[tuple[int, int, Path]]:
        """(mtime in ns, size, path) of every entry; stale temporaries are removed."""
        found = []
        stale_before = time.time_ns() - int(_STALE_TEMP * 1e9)
        try:
            shards = [d for d in os.scandir(self.root) if d.is_dir()]
        except FileNotFoundError:
            return []
        for shard in shards:
            try:
                items = list(os.scandir(shard.path))
            except FileNotFoundError:
                continue
            for item in items:
                try:
                    st = item.stat()
                except FileNotFoundError:
                    continue
                if item.name.endswith(_SUFFIX):
                    found.append((st.st_mtime_ns, st.st_size, Path(item.path)))
                elif item.name.endswith(".tmp"):
                    if temporaries:
                        found.append((st.st_mtime_ns, st.st_size, Path(item.path)))
                    elif st.st_mtime_ns < stale_before:  # left by a crashed writer
                        Path(item.path).unlink(missing_ok=True)
        return found

    def _evict(self) -> None:
        """Scan the folder; drop least recently used entries down to the low-water mark."""
        with self._lock:
            entries = sorted(self._entries())
            total = sum(size for _, size, _ in entries)
            if total > self.max_bytes:
                target = int(self.max_bytes * _LOW_WATER)
                for _, size, path in entries:
                    if total <= target:
                        break
                    path.unlink(missing_ok=True)  # gone already: another process evicted it
                    total -= size
            self._total = total
