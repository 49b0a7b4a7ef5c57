"""Pixels for ``image:computePixels``, read from the mirror files.

Mosaics are composited as Earth Engine does (later files on top, masked
pixels transparent) and resampled to the requested grid by nearest neighbour
(the source pixel that contains each destination pixel centre), exactly as
:mod:`xembed.sources.cog` does.
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyproj

from xembed._util import transformer
from xembed.schema import NODATA, dequantize
from xembed.testing.earthengine.model import ApiError, Constant, File, Image, Source, Unmask


@dataclass(frozen=True)
class RequestGrid:
    crs: str
    west: float
    north: float
    res: float
    width: int
    height: int

    @functools.cached_property
    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        x = self.west + self.res * (np.arange(self.width) + 0.5)
        y = self.north - self.res * (np.arange(self.height) + 0.5)
        return x, y


def parse_grid(grid: Mapping[str, Any]) -> RequestGrid:
    try:
        dims = grid["dimensions"]
        t = grid["affineTransform"]
        crs = grid["crsCode"]
        width, height = int(dims["width"]), int(dims["height"])
        sx, shx, tx = float(t["scaleX"]), float(t.get("shearX", 0)), float(t["translateX"])
        shy, sy, ty = float(t.get("shearY", 0)), float(t["scaleY"]), float(t["translateY"])
    except (KeyError, TypeError, ValueError) as err:
        raise ApiError(400, f"malformed computePixels grid {dict(grid)!r}: {err}") from None
    if shx or shy or sy != -sx or sx <= 0:
        raise ApiError(
            400,
            f"the fake serves only north-up, square-pixel grids (scaleY == -scaleX, no shear); "
            f"got {dict(t)!r}",
        )
    if width <= 0 or height <= 0 or width * height > 32768 * 32768:
        raise ApiError(400, f"bad grid dimensions {width} x {height}")
    return RequestGrid(str(crs), tx, ty, sx, width, height)


#: Files whose 64 bands hold at most this many bytes are read whole and kept
#: in memory (the sample's are 2.4 MB): a window's 64 band requests then read
#: each file once. Bigger files (the real mirror's 4 GB) are read by window.
_WHOLE_FILE_BYTES = 64 * 2**20
#: Memory the whole-file cache may use.
_CACHE_BYTES = 512 * 2**20


class _FileCache:
    """A thread-safe, byte-bounded LRU of whole files (int8, bands x rows x cols)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, href: str) -> np.ndarray:
        with self._lock:
            if href in self._data:
                self._data[href] = self._data.pop(href)  # most recently used last
                return self._data[href]
            loading = self._loading.setdefault(href, threading.Lock())
        with loading:  # one reader per file; the others wait for it
            with self._lock:
                if href in self._data:
                    return self._data[href]
            import rasterio

            with rasterio.open(href) as src:
                data = src.read()
            with self._lock:
                self._data[href] = data
                self._loading.pop(href, None)
                while (
                    sum(a.nbytes for a in self._data.values()) > self.capacity
                    and len(self._data) > 1
                ):
                    self._data.pop(next(iter(self._data)))
            return data


_FILES = _FileCache(_CACHE_BYTES)


@dataclass(frozen=True)
class _Header:
    transform: tuple[float, ...]
    width: int
    height: int
    count: int


@functools.lru_cache(maxsize=4096)
def _header(href: str) -> _Header:
    import rasterio

    with rasterio.open(href) as src:
        t = src.transform
        return _Header((t.a, t.b, t.c, t.d, t.e, t.f), src.width, src.height, src.count)


@functools.lru_cache(maxsize=64)
def _same_crs(a: str, b: str) -> bool:
    return pyproj.CRS.from_user_input(a) == pyproj.CRS.from_user_input(b)


@functools.lru_cache(maxsize=1024)
def _source_pixels(
    crs: str, header: _Header, grid: RequestGrid
) -> tuple[np.ndarray, np.ndarray] | None:
    """Source (rows, cols) of the file pixel that holds each destination centre.

    The rule of the COG reader: the pixel containing the destination pixel
    centre, transformed exactly (pyproj) when the file is in another UTM
    zone. ``None`` if no centre falls in the file. Cached by the file's
    grid, which every year's file at that place shares, so a window's
    requests (64 bands x years) transform its centres once per place.
    """
    a, _, c, _, e, f = header.transform
    xs, ys = grid.centres
    if _same_crs(crs, grid.crs):
        rows = np.floor((ys - f) / e).astype(np.int64)[:, None]
        cols = np.floor((xs - c) / a).astype(np.int64)[None, :]
        rows, cols = (np.ascontiguousarray(v) for v in np.broadcast_arrays(rows, cols))
    else:
        # Cheap rejection first: the window's (densified) bounds in the file's CRS.
        west, north = grid.west, grid.north
        east, south = west + grid.res * grid.width, north - grid.res * grid.height
        bx0, by0, bx1, by1 = transformer(grid.crs, crs).transform_bounds(
            west, south, east, north, densify_pts=21
        )
        fx = sorted((c, c + a * header.width))
        fy = sorted((f, f + e * header.height))
        margin = 2 * grid.res
        if (
            bx1 < fx[0] - margin
            or bx0 > fx[1] + margin
            or by1 < fy[0] - margin
            or by0 > fy[1] + margin
        ):
            return None
        xx, yy = np.meshgrid(xs, ys)
        sx, sy = transformer(grid.crs, crs).transform(xx, yy)
        rows = np.floor((sy - f) / e).astype(np.int64)
        cols = np.floor((sx - c) / a).astype(np.int64)
    inside = (rows >= 0) & (rows < header.height) & (cols >= 0) & (cols < header.width)
    if not inside.any():
        return None
    return rows, cols


def _read_mosaic(files: tuple[File, ...], bands: list[int], grid: RequestGrid) -> np.ndarray:
    """int8 ``(len(bands), height, width)`` mosaic on ``grid``: later files on top, -128 empty."""
    out = np.full((len(bands), grid.height, grid.width), NODATA, dtype=np.int8)
    for file in files:
        header = _header(file.href)
        found = _source_pixels(file.crs, header, grid)
        if found is None:
            continue
        rows, cols = found
        inside = (rows >= 0) & (rows < header.height) & (cols >= 0) & (cols < header.width)
        r, c = rows[inside], cols[inside]
        if header.width * header.height * header.count <= _WHOLE_FILE_BYTES:
            block = _FILES.get(file.href)[bands]
            r0 = c0 = 0
        else:
            import rasterio
            from rasterio.windows import Window

            r0, r1, c0, c1 = int(r.min()), int(r.max()) + 1, int(c.min()), int(c.max()) + 1
            with rasterio.open(file.href) as src:
                block = src.read(
                    indexes=[b + 1 for b in bands], window=Window(c0, r0, c1 - c0, r1 - r0)
                )
        values = np.full(out.shape, NODATA, dtype=np.int8)
        values[:, inside] = block[:, r - r0, c - c0]
        # Earth Engine's mosaic(): later images on top, masked pixels transparent.
        np.copyto(out, values, where=values != NODATA)
    return out


def compute_pixels(image: Image, grid: RequestGrid) -> bytes:
    """The ``.npy`` bytes of a structured array, one float32 field per band."""
    if not image.bands:
        raise ApiError(400, "computePixels: the image has no bands")
    planes: dict[int, np.ndarray] = {}
    # Read each mosaic once for all the bands the request takes from it.
    wanted: dict[tuple[File, ...], set[int]] = {}
    for band in image.bands:
        source = _innermost(band.pixels)
        if isinstance(source, Source):
            wanted.setdefault(source.files, set()).add(source.band)
    mosaics: dict[tuple[tuple[File, ...], int], np.ndarray] = {}
    for files, band_set in wanted.items():
        order = sorted(band_set)
        values = dequantize(_read_mosaic(files, order, grid))
        for i, b in enumerate(order):
            mosaics[files, b] = values[i]
    for i, band in enumerate(image.bands):
        planes[i] = _evaluate_pixels(band.pixels, grid, mosaics)
    names = [b.name for b in image.bands]
    if len(set(names)) != len(names):
        raise ApiError(400, f"computePixels: duplicate band names {names}")
    out = np.empty((grid.height, grid.width), dtype=[(n, "<f4") for n in names])
    for i, name in enumerate(names):
        out[name] = planes[i]
    buffer = io.BytesIO()
    np.save(buffer, out, allow_pickle=False)
    return buffer.getvalue()


def _innermost(pixels: Any) -> Any:
    while isinstance(pixels, Unmask):
        pixels = pixels.inner
    return pixels


def _evaluate_pixels(
    pixels: Any, grid: RequestGrid, mosaics: Mapping[Any, np.ndarray]
) -> np.ndarray:
    """float32 plane with NaN where masked."""
    if isinstance(pixels, Source):
        return mosaics[pixels.files, pixels.band]
    if isinstance(pixels, Constant):
        value = np.nan if pixels.masked else pixels.value
        return np.full((grid.height, grid.width), value, dtype=np.float32)
    if isinstance(pixels, Unmask):
        inner = _evaluate_pixels(pixels.inner, grid, mosaics)
        return np.where(np.isnan(inner), np.float32(pixels.value), inner).astype(np.float32)
    raise ApiError(400, f"cannot compute pixels of {pixels!r}")
