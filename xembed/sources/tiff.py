"""The mirror's GeoTIFFs read without GDAL: the header from bytes, tiles by range.

:func:`parse_layout` reads the first (full-resolution) image of a classic or
BigTIFF file from its first bytes: size, tiling, bands, compression, the
geotransform and CRS, and the complete tile offset and byte count tables.
Anything cut short or inconsistent raises :class:`~xembed.sources.ranges.Invalid`
(so the header is fetched again), or :class:`~xembed.sources.ranges.NeedMore`
when tag values lie past the bytes given. :func:`read_windows` then reads the
int8 windows of many files at once: the (band, tile) byte ranges they need,
adjacent ones merged, all fetched concurrently and decoded (ZSTD or none).

Only the layout the mirror uses takes this path (tiled, band-separate,
8-bit signed, no predictor, ZSTD or uncompressed, nodata -128, pixel-is-area
georeferencing with an EPSG code); :attr:`TiffLayout.unsupported` says why
another file does not, and the reader then falls back to GDAL.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from xembed.sources.ranges import Invalid, Job, NeedMore, Remote, fetch_jobs, merge_ranges
from xembed.sources.retry import RetryPolicy

__all__ = [
    "HEADER_BYTES",
    "MEMORY",
    "TiffLayout",
    "TileMemory",
    "Window",
    "header_bytes",
    "parse_layout",
    "read_windows",
]

#: Bytes read first from every file, at least: the IFDs of a small file and their tables.
HEADER_BYTES = 16 * 1024


def header_bytes(width: int, height: int, bands: int = 64, tile: int = 1024) -> int:
    """Bytes to read first from a ``width`` x ``height`` px file: its IFDs and tile tables.

    :data:`HEADER_BYTES` plus 16 bytes (a BigTIFF offset and byte count) per
    band per tile of the mirror's ``tile`` px, so the first request holds the
    whole header of a mirror file without fetching much past it (files with
    smaller tiles ask for the rest in one more request).

    Examples
    --------
    >>> header_bytes(8192, 8192) // 1024  # the mirror's files: 64 KiB of tables
    80
    >>> header_bytes(160, 160) // 1024  # the sample's
    17
    """
    tiles = -(-width // tile) * -(-height // tile)
    return HEADER_BYTES + 16 * bands * tiles


NODATA = -128
_ZSTD, _NONE = 50000, 1
# TIFF field types: numpy dtype (without byte order)
_TYPES = {1: "u1", 2: "u1", 3: "u2", 4: "u4", 5: "u4", 6: "i1", 7: "u1", 8: "i2", 9: "i4",
          10: "i4", 11: "f4", 12: "f8", 16: "u8", 17: "i8", 18: "u8"}  # fmt: skip
_PAIRS = (5, 10)  # rationals: two integers per value
_WIDTH, _HEIGHT, _BITS, _COMPRESSION = 256, 257, 258, 259
_STRIP_OFFSETS, _SAMPLES, _PLANAR, _PREDICTOR = 273, 277, 284, 317
_TILE_WIDTH, _TILE_HEIGHT, _TILE_OFFSETS, _TILE_COUNTS = 322, 323, 324, 325
_SAMPLE_FORMAT, _PIXEL_SCALE, _TIEPOINT, _MATRIX = 339, 33550, 33922, 34264
_GEOKEYS, _NODATA = 34735, 42113
_WANTED = frozenset(
    {_WIDTH, _HEIGHT, _BITS, _COMPRESSION, _STRIP_OFFSETS, _SAMPLES, _PLANAR, _PREDICTOR,
     _TILE_WIDTH, _TILE_HEIGHT, _TILE_OFFSETS, _TILE_COUNTS, _SAMPLE_FORMAT, _PIXEL_SCALE,
     _TIEPOINT, _MATRIX, _GEOKEYS, _NODATA}
)  # fmt: skip


@dataclass(frozen=True, eq=False)
class TiffLayout:
    """The first image of a GeoTIFF: what reading its tiles by range needs.

    ``offsets`` and ``counts`` have shape ``(bands, tiles down, tiles
    across)`` for band-separate files. ``unsupported`` is ``None`` when the
    file fits the range path, else why not (it is then read with GDAL).
    """

    width: int
    height: int
    bands: int
    dtype: str
    transform: tuple[float, float, float, float, float, float] | None
    epsg: int | None
    tile_width: int
    tile_height: int
    compression: int
    offsets: np.ndarray
    counts: np.ndarray
    size: int
    unsupported: str | None


@dataclass(frozen=True)
class Window:
    """Rows ``r0:r1`` and columns ``c0:c1`` of ``bands`` of one file to read."""

    source: Remote
    layout: TiffLayout
    bands: tuple[int, ...]
    r0: int
    r1: int
    c0: int
    c1: int


def _tags(data: bytes, size: int) -> dict[int, np.ndarray]:
    """The wanted tags of the first IFD, as arrays (ASCII as uint8)."""
    if len(data) < 16:
        if size >= 16:
            raise NeedMore(16)
        raise Invalid(f"not a TIFF file ({size} bytes)")
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[:2]))
    if order is None:
        raise Invalid("not a TIFF file (no byte order mark)")
    (magic,) = struct.unpack(order + "H", data[2:4])
    if magic not in (42, 43):
        raise Invalid(f"not a TIFF file (magic number {magic})")
    big = magic == 43
    inline = 8 if big else 4
    count_fmt, entry = ("Q", 20) if big else ("H", 12)
    offset_fmt = order + ("Q" if big else "I")
    (ifd,) = struct.unpack(offset_fmt, data[8:16] if big else data[4:8])
    head = ifd + struct.calcsize(count_fmt)
    if ifd < 8 or head > size:
        raise Invalid(f"the first IFD offset {ifd} lies outside the file")
    if head > len(data):
        raise NeedMore(head)
    (n,) = struct.unpack(order + count_fmt, data[ifd:head])
    end = head + n * entry
    if n == 0 or end > size:
        raise Invalid(f"the first IFD ({n} entries) does not fit in the file")
    if end > len(data):
        raise NeedMore(end)
    out: dict[int, np.ndarray] = {}
    missing = 0
    for i in range(n):
        raw = data[head + i * entry : head + (i + 1) * entry]
        tag, kind = struct.unpack(order + "HH", raw[:4])
        (count,) = struct.unpack(order + ("Q" if big else "I"), raw[4 : 4 + inline])
        if tag not in _WANTED:
            continue
        if kind not in _TYPES:
            raise Invalid(f"tag {tag} has unknown field type {kind}")
        dtype = np.dtype(order + _TYPES[kind])
        values = count * (2 if kind in _PAIRS else 1)
        nbytes = values * dtype.itemsize
        if nbytes <= inline:
            start = head + i * entry + 4 + inline
        else:
            (start,) = struct.unpack(offset_fmt, raw[4 + inline :])
        if start + nbytes > size:
            raise Invalid(f"tag {tag} points to bytes {start}-{start + nbytes} past the file end")
        if start + nbytes > len(data):
            missing = max(missing, start + nbytes)
            continue
        out[tag] = np.frombuffer(data, dtype, values, start)
    if missing:
        raise NeedMore(missing)
    return out


def _geo(tags: dict[int, np.ndarray]) -> tuple[tuple | None, int | None, str | None]:
    """(geotransform as GDAL computes it, EPSG code, why unsupported or None)."""
    keys = tags.get(_GEOKEYS)
    geokeys = {}
    if keys is not None and keys.size >= 4:
        for k in range(int(keys[3])):
            key, location, _, value = (int(v) for v in keys[4 + 4 * k : 8 + 4 * k])
            if location == 0:
                geokeys[key] = value
    if geokeys.get(1025, 1) != 1:  # RasterPixelIsPoint: GDAL shifts by half a pixel
        return None, None, "pixel-is-point georeferencing"
    epsg = geokeys.get(3072) or geokeys.get(2048)
    if not epsg or epsg == 32767:
        return None, None, "a CRS without an EPSG code"
    if _MATRIX in tags and tags[_MATRIX].size == 16:
        m = tags[_MATRIX].astype(float)
        return (m[0], m[1], m[3], m[4], m[5], m[7]), int(epsg), None
    if _PIXEL_SCALE in tags and _TIEPOINT in tags and tags[_TIEPOINT].size == 6:
        sx, sy = (float(v) for v in tags[_PIXEL_SCALE][:2])
        i, j, _, x, y, _ = (float(v) for v in tags[_TIEPOINT])
        return (sx, 0.0, x - i * sx, 0.0, -sy, y - j * -sy), int(epsg), None
    return None, None, "no geotransform (a single tie point and scale, or a matrix)"


def parse_layout(data: bytes, size: int) -> TiffLayout:
    """The layout of the first image of a TIFF, from the file's first bytes.

    Raises
    ------
    NeedMore
        If tag values lie past ``data`` (fetch up to ``stop`` and call again).
    Invalid
        If the bytes are not a consistent TIFF header (e.g. cut short), or a
        tile points past the ``size`` bytes of the file.
    """
    tags = _tags(data, size)

    def one(tag: int, default: int | None = None) -> int:
        if tag not in tags:
            if default is None:
                raise Invalid(f"the header lacks TIFF tag {tag}")
            return default
        return int(tags[tag][0])

    width, height, bands = one(_WIDTH), one(_HEIGHT), one(_SAMPLES, 1)
    bits = tags.get(_BITS, np.array([1]))
    sample_format = one(_SAMPLE_FORMAT, 1)
    dtype = f"{'int' if sample_format == 2 else 'uint' if sample_format == 1 else 'float'}"
    dtype += str(int(bits[0])) if bits.size and (bits == bits[0]).all() else "?"
    transform, epsg, unsupported = _geo(tags)
    tiled = _TILE_OFFSETS in tags
    planar, compression = one(_PLANAR, 1), one(_COMPRESSION, 1)
    nodata = bytes(tags.get(_NODATA, np.zeros(0, "u1"))).rstrip(b"\0 ").decode("latin-1")
    why = [
        (not tiled, "stripped, not tiled"),
        (planar != 2 and bands > 1, "pixel-interleaved bands"),
        (compression not in (_ZSTD, _NONE), f"compression {compression}"),
        (one(_PREDICTOR, 1) != 1, "a predictor"),
        (dtype != "int8", f"{dtype} pixels"),
        (nodata != str(NODATA), f"nodata {nodata or 'unset'}"),
    ]
    unsupported = next((reason for bad, reason in why if bad), unsupported)
    offsets = counts = np.zeros((0, 0, 0), np.uint64)
    tile_w = tile_h = 0
    if tiled:
        tile_w, tile_h = one(_TILE_WIDTH), one(_TILE_HEIGHT)
        if tile_w < 1 or tile_h < 1 or width < 1 or height < 1:
            raise Invalid(f"{width} x {height} px in tiles of {tile_w} x {tile_h}")
        planes = bands if planar == 2 else 1
        shape = (planes, -(-height // tile_h), -(-width // tile_w))
        expected = shape[0] * shape[1] * shape[2]
        if _TILE_COUNTS not in tags:
            raise Invalid("the header lacks the tile byte counts")
        got = (tags[_TILE_OFFSETS].size, tags[_TILE_COUNTS].size)
        if got != (expected, expected):
            raise Invalid(f"tile tables of {got} entries, expected {expected} each")
        offsets = tags[_TILE_OFFSETS].astype(np.uint64).reshape(shape)
        counts = tags[_TILE_COUNTS].astype(np.uint64).reshape(shape)
        if (offsets + counts > np.uint64(size)).any():
            raise Invalid(f"a tile lies past the end of the file ({size} bytes)")
    return TiffLayout(
        width, height, bands, dtype, transform, epsg, tile_w, tile_h, compression,
        offsets, counts, size, unsupported,
    )  # fmt: skip


def _decoder(compression: int) -> Any:
    if compression == _ZSTD:
        from numcodecs import Zstd

        return Zstd()
    return None


class TileMemory:
    """Compressed tiles this process fetched, shared by the chunks that need them.

    A tile wanted by several chunks at once is fetched by the first (the
    others wait for its bytes: one request), and the last ``max_bytes`` of
    tiles stay in memory for chunks that come later (least recently used
    out first). Tiles at the edge of a chunk, or a 1024 px tile under 16
    chunks of 256 px, are so fetched once.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._done: OrderedDict[tuple, bytes] = OrderedDict()
        self._pending: dict[tuple, Future[bytes | None]] = {}
        self._bytes = 0

    def claim(self, key: tuple) -> tuple[str, Any]:
        """``("have", bytes)``, ``("wait", future)`` or ``("mine", None)``: fetch it."""
        with self._lock:
            if key in self._done:
                self._done.move_to_end(key)
                return "have", self._done[key]
            if key in self._pending:
                return "wait", self._pending[key]
            self._pending[key] = Future()
            return "mine", None

    def settle(self, key: tuple, data: bytes | None) -> None:
        """The bytes of a claimed tile (``None``: its fetch failed; waiters fetch it)."""
        with self._lock:
            future = self._pending.pop(key, None)
            if data is not None and key not in self._done and len(data) <= self.max_bytes:
                self._done[key] = data
                self._bytes += len(data)
                while self._bytes > self.max_bytes:
                    self._bytes -= len(self._done.popitem(last=False)[1])
        if future is not None:
            future.set_result(data)


#: Compressed tiles shared between chunks of this process (remote files only).
MEMORY = TileMemory(256 * 2**20)


def read_windows(windows: Sequence[Window], policy: RetryPolicy, cache: Any = None) -> list:
    """The int8 ``(bands, r1 - r0, c1 - c0)`` block of every window, read at once.

    Every (window, band, tile) byte range is fetched once (also across
    chunks read at the same time: :data:`MEMORY`); ranges that touch in a
    file are merged into one request (never across a gap); all requests run
    concurrently (:func:`~xembed.sources.ranges.fetch_jobs`). A tile that
    fails to decode is fetched again (remote) or fails (local). Tiles with
    no bytes (sparse) read as nodata, as GDAL reads them. ``cache`` is a
    persistent range cache (``get``/``put``) for remote files, or ``None``.
    """
    blocks = [np.empty((len(w.bands), w.r1 - w.r0, w.c1 - w.c0), np.int8) for w in windows]
    mine: list[tuple[Window, list]] = []
    waits: list[tuple[Window, tuple, Future[bytes | None]]] = []
    claimed: list[tuple] = []
    for window, block in zip(windows, blocks, strict=True):
        pieces = []
        for piece in _pieces(window, block, cache):
            if not window.source.url:
                pieces.append(piece)
                continue
            key = _key(window, piece[0], piece[1])
            state, value = MEMORY.claim(key)
            if state == "have":
                _place(window.layout, value, piece[2])
            elif state == "wait":
                waits.append((window, piece, value))
            else:
                claimed.append(key)
                pieces.append(piece)
        mine.append((window, pieces))
    try:
        fetch_jobs(_jobs(mine, cache), policy)
    finally:
        for key in claimed:  # not fetched (an error): whoever waits fetches it
            MEMORY.settle(key, None)
    again: dict[int, tuple[Window, list]] = {}
    for window, piece, future in waits:
        data = future.result()
        if data is None:  # the chunk that fetched it failed: try it here
            again.setdefault(id(window), (window, []))[1].append(piece)
        else:
            _place(window.layout, data, piece[2])
    fetch_jobs(_jobs(list(again.values()), None), policy)
    return blocks


def _key(window: Window, start: int, length: int) -> tuple:
    return (window.source.url, window.source.validator, start, length)


def _jobs(wanted: Sequence[tuple[Window, list]], cache: Any) -> list[Job]:
    """One job per merged range of each window's pieces ``(start, length, place)``."""
    jobs = []
    for window, pieces in wanted:
        merged = merge_ranges([(start, length) for start, length, _ in pieces])
        for start, length, members in merged:
            parts = [(pieces[i][0] - start, pieces[i][1], pieces[i][2]) for i in members]
            what = (
                f"window rows {window.r0}:{window.r1}, cols {window.c0}:{window.c1} "
                f"({len(window.bands)} bands): bytes {start}-{start + length - 1}"
            )
            consume = _consumer(window, start, parts, cache)
            jobs.append(Job(window.source, start, length, consume, what))
    return jobs


def _pieces(window: Window, block: np.ndarray, cache: Any) -> list:
    """(start, length, place) of each tile the window needs and no cache holds."""
    layout = window.layout
    th, tw = layout.tile_height, layout.tile_width
    pieces = []
    for i, band in enumerate(window.bands):
        for tr in range(window.r0 // th, (window.r1 - 1) // th + 1):
            for tc in range(window.c0 // tw, (window.c1 - 1) // tw + 1):
                # Where this tile's rows/cols land in the block, and which of them.
                rr = slice(max(window.r0, tr * th), min(window.r1, (tr + 1) * th))
                cc = slice(max(window.c0, tc * tw), min(window.c1, (tc + 1) * tw))
                dst = (i, slice(rr.start - window.r0, rr.stop - window.r0),
                       slice(cc.start - window.c0, cc.stop - window.c0))  # fmt: skip
                src = (slice(rr.start - tr * th, rr.stop - tr * th),
                       slice(cc.start - tc * tw, cc.stop - tc * tw))  # fmt: skip
                start = int(layout.offsets[band, tr, tc])
                length = int(layout.counts[band, tr, tc])
                if length == 0:
                    block[dst] = NODATA  # a sparse tile: GDAL reads it as nodata
                    continue
                place = (block, dst, src)
                if cache is not None and window.source.validator:
                    data = cache.get(window.source.url, window.source.validator, start, length)
                    if data is not None and _place(layout, data, place, quiet=True):
                        continue
                pieces.append((start, length, place))
    return pieces


def _place(layout: TiffLayout, data: bytes, place: tuple, quiet: bool = False) -> bool:
    """Decode one tile and copy its part into the block; False (or Invalid) if it is bad."""
    block, dst, src = place
    expected = layout.tile_height * layout.tile_width
    try:
        decoder = _decoder(layout.compression)
        raw = decoder.decode(data) if decoder is not None else data
        if len(raw) != expected:
            raise ValueError(f"{len(raw)} bytes where a tile has {expected}")
    except Exception as err:
        if quiet:
            return False
        name = "ZSTD" if layout.compression == _ZSTD else "uncompressed"
        raise Invalid(f"a tile does not decode ({name}): {err}") from None
    tile = np.frombuffer(raw, np.int8).reshape(layout.tile_height, layout.tile_width)
    block[dst] = tile[src]
    return True


def _consumer(window: Window, start: int, parts: list, cache: Any):
    """Decode and place every tile of one merged range; share and keep them."""

    def consume(data: bytes) -> None:
        for offset, length, place in parts:
            _place(window.layout, data[offset : offset + length], place)
        if not window.source.url:
            return
        for offset, length, _ in parts:
            piece = data[offset : offset + length]
            MEMORY.settle(_key(window, start + offset, length), piece)
            if cache is not None and window.source.validator:
                cache.put(window.source.url, window.source.validator, start + offset, piece)

    return consume
