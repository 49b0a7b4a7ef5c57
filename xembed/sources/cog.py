"""The public Cloud-Optimized GeoTIFF mirror of the embeddings.

Layout (DESIGN.md section 1): ``{root}/aef_index.parquet`` (or ``.csv``) with
one row per file, files at ``{year}/{zone}/{id}-{yOff}-{xOff}.tiff``: int8,
64 bands, nodata -128, stored **bottom-up** (positive y pixel size).

Reading is planned eagerly from metadata only (the index and the file
headers, all files at once) and executed lazily: one dask task per chunk
reads, for every year, just the window of each file that the chunk needs --
the (band, internal tile) byte ranges, adjacent ones merged, all fetched
concurrently (:mod:`xembed.sources.tiff`, :mod:`xembed.sources.ranges`) --
mosaics the files (later rows on top, nodata transparent), and de-quantises
once. Files in a layout other than the mirror's are read through GDAL
(:mod:`xembed.sources.gdalread`) with the same results. At most
:func:`max_requests` requests are in flight per process (default 64;
``XEMBED_MAX_REQUESTS`` or :func:`set_max_requests` change it).

Faults
------
Remote reads (the index download, each file header, each byte range) retry
transient failures -- HTTP 5xx, 408 and 429, timeouts, stalled transfers,
connection resets, bodies cut short, answers that do not match what they
declare -- with exponential backoff, within the budget of :data:`RETRY` (a
:class:`RetryPolicy`; environment variables ``XEMBED_RETRY_ATTEMPTS``,
``XEMBED_RETRY_BACKOFF``, ``XEMBED_RETRY_MAX_BACKOFF`` and
``XEMBED_HTTP_TIMEOUT`` set it at import), each request with its own budget.
A read that still fails, and any failed read of a local file (not retried:
a truncated file stays truncated), raises :class:`ReadError` naming the file.
Every header is validated (complete tile tables, dimensions, 64 int8 bands,
CRS and extent against the index) before any of its bytes is used. Nothing
is ever filled with zeros or NaN in place of data that could not be read.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import posixpath
import threading
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyproj
import shapely

from xembed._util import transformer
from xembed.errors import DataNotFoundError, ReadError, SourceError
from xembed.grid import Grid
from xembed.schema import BANDS, NODATA, PIXEL_SIZE, dequantize
from xembed.sources import gdalread
from xembed.sources import index as mirror_index
from xembed.sources.common import INDEX_COLUMNS, CubeStack
from xembed.sources.gdalread import GDAL_ENV
from xembed.sources.ranges import (
    Invalid,
    Remote,
    fetch_prefixes,
    max_requests,
    set_max_requests,
)
from xembed.sources.retry import RetryPolicy
from xembed.sources.tiff import TiffLayout, Window, header_bytes, parse_layout, read_windows
from xembed.sources.windows import scatter, window_of

__all__ = [
    "DEFAULT_ROOT",
    "GDAL_ENV",
    "INDEX_COLUMNS",
    "RETRY",
    "MosaicReader",
    "ReadError",
    "RetryPolicy",
    "available_years",
    "gdal_path",
    "https_url",
    "load_index",
    "max_requests",
    "plan_mosaic",
    "prefetch_headers",
    "read_index",
    "set_max_requests",
    "with_hrefs",
]

logger = logging.getLogger(__name__)

#: Source Cooperative's public, anonymous copy of the mirror.
DEFAULT_ROOT = "s3://us-west-2.opendata.source.coop/tge-labs/aef/v1/annual"
_REMOTE_SCHEMES = ("http", "https", "s3", "gs")

#: The retry policy of every remote read; replace it to change the budget, e.g.
#: ``xembed.sources.cog.RETRY = RetryPolicy(attempts=8)`` (dask.distributed
#: workers read the ``XEMBED_*`` environment variables instead).
RETRY = RetryPolicy.from_env()


def _is_remote(path: str) -> bool:
    return urllib.parse.urlsplit(str(path)).scheme in _REMOTE_SCHEMES


def https_url(url: str) -> str:
    """The anonymous HTTPS address of an ``s3://``, ``gs://`` or ``https://`` URL.

    Public buckets answer unsigned HTTPS requests, so one code path (GDAL's
    ``/vsicurl/``) serves all three without credentials.

    Examples
    --------
    >>> https_url("s3://us-west-2.opendata.source.coop/tge-labs/aef/v1/annual/x.tiff")
    'https://s3.us-west-2.amazonaws.com/us-west-2.opendata.source.coop/tge-labs/aef/v1/annual/x.tiff'
    >>> https_url("gs://alphaearth_foundations/satellite_embedding/v1/annual/a.tiff")
    'https://storage.googleapis.com/alphaearth_foundations/satellite_embedding/v1/annual/a.tiff'
    """
    parts = urllib.parse.urlsplit(url)
    key = parts.path.lstrip("/")
    if parts.scheme == "s3":
        bucket = parts.netloc
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region is None and bucket.startswith("us-west-2."):
            region = "us-west-2"
        if "." in bucket or region:
            # Path-style: virtual-host names with dots break TLS name checks.
            return f"https://s3.{region or 'us-east-1'}.amazonaws.com/{bucket}/{key}"
        return f"https://{bucket}.s3.amazonaws.com/{key}"
    if parts.scheme == "gs":
        return f"https://storage.googleapis.com/{parts.netloc}/{key}"
    if parts.scheme in ("http", "https"):
        return url
    raise SourceError(f"unsupported URL scheme in {url!r}; expected s3://, gs:// or https://")


def gdal_path(href: str) -> str:
    return "/vsicurl/" + https_url(href) if _is_remote(href) else href


def _index_location(root: str) -> tuple[str, str]:
    """(location, format) of the index under ``root``: parquet, else csv."""
    root = str(root).rstrip("/")
    if _is_remote(root):
        return f"{root}/aef_index.parquet", "parquet"
    folder = Path(root)
    if not folder.is_dir():
        raise SourceError(
            f"mirror folder {root!r} does not exist; pass the folder that holds "
            "aef_index.parquet, or source='sample' for the bundled demo data"
        )
    for name, fmt in (("aef_index.parquet", "parquet"), ("aef_index.csv", "csv")):
        if (folder / name).is_file():
            return str(folder / name), fmt
    raise SourceError(
        f"no aef_index.parquet or aef_index.csv in {root!r}; a mirror folder needs the "
        "index at its top (copy it from the mirror unchanged)"
    )


def _remote_cache_path(url: str) -> Path:
    """Where the copy of the remote index at ``url`` is kept (see :mod:`.index`)."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return mirror_index.kept_folder() / f"{digest}.index"


@functools.lru_cache(maxsize=8)
def _read_index_cached(location: str, fmt: str, stamp: tuple[int, int]) -> pd.DataFrame:
    """The local index at ``location`` as of ``stamp`` (modification time in ns, size)."""
    return mirror_index.parse(location, fmt, location)


def load_index(root: str, *, max_age: float | None = None) -> pd.DataFrame:
    """The index of the mirror at ``root``, checked, with a ``footprint`` column.

    A local index is read again when its file changes. A remote one is kept
    (in memory and under ``cache_dir() / "index"``) and revalidated with the
    server once it was last checked more than ``max_age`` seconds ago
    (default :data:`xembed.sources.index.MAX_AGE`, a day).
    """
    location, fmt = _index_location(root)
    if _is_remote(location):
        age = mirror_index.MAX_AGE if max_age is None else max_age
        kept = _remote_cache_path(location)
        return mirror_index.remote_table(location, https_url(location), kept, RETRY, age)
    st = os.stat(location)
    return _read_index_cached(location, fmt, (st.st_mtime_ns, st.st_size))


def with_hrefs(root: str, table: pd.DataFrame) -> pd.DataFrame:
    hrefs = [_resolve(root, row.path, row.year, row.utm_zone) for row in table.itertuples()]
    table = table.assign(href=hrefs)
    if not _is_remote(root):
        table = table[table["href"].notna()]
    return table.reset_index(drop=True)


def read_index(root: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a mirror's index, with a resolved ``href`` per file.

    ``root`` is a local folder or an ``s3://``, ``gs://`` or ``https://``
    prefix. Paths in the index may be relative to the index's folder (never
    leaving it) or absolute URLs. For a local folder only files present on
    disk are kept, found either at their relative path or, for absolute
    upstream URLs, at ``{root}/{year}/{zone}/{file name}``: a local copy of
    part of the mirror with the upstream index copied unchanged opens as it
    is, and never reaches for the network.

    Returns
    -------
    pandas.DataFrame
        The index columns plus ``href`` (local path or URL) and ``footprint``
        (shapely polygons in EPSG:4326).

    Raises
    ------
    xembed.errors.SourceError
        For an index that cannot be read or holds what no mirror index does
        (text in number columns, years that are not whole, footprints that
        are not geometries, paths leaving the mirror folder).

    Examples
    --------
    >>> from xembed.sources.sample import sample_root
    >>> index = read_index(sample_root())
    >>> sorted(index["utm_zone"].unique())
    ['22S', '23S']
    """
    root = str(root).rstrip("/")
    return with_hrefs(root, load_index(root))


def available_years(
    root: str | os.PathLike[str], *, wanted: Iterable[int] | None = None
) -> list[int]:
    """The years a mirror holds files for (for a local folder: files on disk).

    Parameters
    ----------
    root : str or path
        The mirror (local folder or URL).
    wanted : iterable of int, optional
        The years the caller needs. If the kept copy of a remote index lacks
        one, it is revalidated with the server at once (unless it was checked
        within the last minute): a year may have been published since.

    Examples
    --------
    >>> from xembed.sources.sample import sample_root
    >>> available_years(sample_root())
    [2017, 2018, 2019, 2020, 2021, 2022, 2023, 2024]
    """
    root = str(root).rstrip("/")
    remote = _is_remote(root)
    table = load_index(root) if remote else read_index(root)
    if remote and wanted is not None and not set(wanted) <= set(table["year"]):
        table = load_index(root, max_age=mirror_index.MIN_AGE)
    return sorted(int(y) for y in table["year"].unique())


def _resolve(root: str, path: str, year: int, zone: str) -> str | None:
    path = str(path)
    url = _is_remote(path)
    relative = not url and not os.path.isabs(path)
    if relative:
        normal = posixpath.normpath(path.replace("\\", "/"))
        outside = normal == ".." or normal.startswith("../")
    else:  # an absolute local path of a local mirror must lie inside its folder
        inside = os.path.abspath(path).startswith(os.path.abspath(root) + os.sep)
        outside = not url and not _is_remote(root) and not inside
    if outside:
        raise SourceError(
            f"the index of mirror {root!r} lists the file {path!r} (year {year}), which lies "
            "outside the mirror folder; index paths must stay inside it (relative to the "
            "index's folder, without '..') or be absolute URLs. Use the mirror's "
            "aef_index.parquet unchanged"
        )
    if _is_remote(root):
        return path if url else f"{root}/{path.lstrip('/')}"
    if url:  # an upstream URL: the local copy at the mirror's layout
        candidates = [os.path.join(root, str(year), str(zone), path.rsplit("/", 1)[-1])]
    else:
        candidates = [os.path.join(root, path)]  # (an absolute path stays as it is)
    return next((c for c in candidates if os.path.isfile(c)), None)


@dataclass(frozen=True)
class Tile:
    """What a read needs to know about one file, taken from its header.

    ``size`` and ``validator`` (ETag or Last-Modified) are what the server
    declared when the header was read; ``layout`` holds the tile tables of
    a file read by byte ranges, ``None`` for one read through GDAL.
    """

    href: str
    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int
    size: int | None = None
    validator: str | None = None
    layout: TiffLayout | None = field(default=None, compare=False, repr=False)

    @property
    def source(self) -> Remote:
        return _source(self.href, self.size, self.validator)


def _source(href: str, size: int | None = None, validator: str | None = None) -> Remote:
    """Where the bytes of ``href`` come from: its HTTPS URL, or the local file."""
    return Remote(href, https_url(href) if _is_remote(href) else None, size, validator)


# Headers read by this process (mirror files never change): href -> Tile.
_HEADERS: dict[str, Tile] = {}
_HEADERS_LOCK = threading.Lock()


def _range_cache(enabled: bool) -> Any:
    """The persistent cache of fetched byte ranges, or ``None`` (off, or not installed)."""
    if not enabled:
        return None
    try:
        from xembed.sources import rangecache
    except ImportError:
        return None
    return rangecache.default_cache()


def _first_bytes(wanted: Mapping[str, tuple[str, tuple[float, ...]]], source: Remote) -> int:
    """The header bytes to read first from a file of ``bounds`` (the index's, in metres)."""
    west, south, east, north = wanted[source.href][1]
    return header_bytes(round((east - west) / PIXEL_SIZE), round((north - south) / PIXEL_SIZE))


def _check_header(layout: TiffLayout, crs: str, bounds: tuple[float, ...]) -> None:
    """Raise :class:`Invalid` unless ``layout`` is a mirror file's where the index puts it."""
    if layout.bands != len(BANDS) or layout.dtype != "int8":
        raise Invalid(
            f"the header says {layout.bands} bands of {layout.dtype}; expected "
            f"{len(BANDS)} int8 bands as in the embedding mirror"
        )
    if layout.epsg is None or layout.transform is None:
        return  # read through GDAL
    if str(crs).upper() != f"EPSG:{layout.epsg}" and pyproj.CRS(crs).to_epsg() != layout.epsg:
        raise Invalid(f"the header says EPSG:{layout.epsg}, the index {crs}")
    a, _, c, _, e, f = layout.transform
    xs, ys = sorted((c, c + a * layout.width)), sorted((f, f + e * layout.height))
    west, south, east, north = bounds
    if not (xs[0] < east and xs[1] > west and ys[0] < north and ys[1] > south):
        raise Invalid(
            f"the header puts the file at x {xs[0]}..{xs[1]}, y {ys[0]}..{ys[1]}; the index "
            f"at x {west}..{east}, y {south}..{north}"
        )


def _headers(wanted: Mapping[str, tuple[str, tuple[float, ...]]], cache: bool) -> dict[str, Tile]:
    """The header of every file of ``wanted`` (href -> the index's CRS and bounds).

    Headers not read before are read concurrently: one ranged GET each (two
    if the tile tables lie past the bytes :func:`~xembed.sources.tiff.header_bytes`
    expects from the index's extent),
    every one validated before use; from the range cache when it holds them.
    """
    with _HEADERS_LOCK:
        out = {href: _HEADERS[href] for href in wanted if href in _HEADERS}
    store = _range_cache(cache)

    def parse(source: Remote, data: bytes, size: int) -> TiffLayout:
        layout = parse_layout(data, size)
        _check_header(layout, *wanted[source.href])
        return layout

    todo = []
    for href in wanted:
        if href in out:
            continue
        source = _source(href)
        hit = store.get_header(source.url) if store is not None and source.url else None
        if hit is not None:
            validator, blob = hit
            size, prefix = int.from_bytes(blob[:8], "little"), blob[8:]
            try:
                out[href] = _tile_of(source, parse(source, prefix, size), size, validator)
                continue
            except Invalid:
                pass  # a stale or damaged entry: read the header again
        todo.append(source)
    first = functools.partial(_first_bytes, wanted)
    for source, (layout, prefix, size, validator) in zip(
        todo, fetch_prefixes(todo, first, parse, RETRY), strict=True
    ):
        if store is not None and source.url and validator:
            store.put_header(source.url, validator, size.to_bytes(8, "little") + prefix)
        out[source.href] = _tile_of(source, layout, size, validator)
    with _HEADERS_LOCK:
        _HEADERS.update(out)
    return out


def _tile_of(source: Remote, layout: TiffLayout, size: int, validator: str) -> Tile:
    href, validator_ = source.href, (validator or None) if source.url else None
    if layout.unsupported is not None:
        logger.debug("reading %s through GDAL: %s", href, layout.unsupported)
        crs, transform, width, height = gdalread.read_header(href, gdal_path(href), RETRY)
        return Tile(href, crs, transform, width, height, size, validator_)
    assert layout.transform is not None
    crs = f"EPSG:{layout.epsg}"
    return Tile(href, crs, layout.transform, layout.width, layout.height, size, validator_, layout)


def _chosen_rows(
    root: str, grid: Grid, years: Sequence[int]
) -> list[list[tuple[str, tuple[str, tuple[float, ...]]]]]:
    """Per year, ``(href, (crs, utm bounds))`` of the index rows of the files over ``grid``."""
    root = str(root).rstrip("/")
    index = load_index(root)
    box = shapely.box(*grid.lonlat_bounds)
    chosen = index[index["year"].isin(list(years))]
    # Resolve file locations only for the few rows that matter.
    chosen = with_hrefs(root, chosen[shapely.intersects(chosen["footprint"].to_numpy(), box)])
    grid_crs = grid.crs.to_string()
    # Plain tuples of the columns used, sorted by path (the mosaic order):
    # pandas selections per year cost more than the rest of the plan.
    columns = ["year", "crs", "utm_west", "utm_east", "utm_south", "utm_north", "href"]
    chosen = chosen.sort_values("path", kind="stable")
    records = list(zip(*(chosen[c].tolist() for c in columns), strict=True))
    chosen_rows: list[list[tuple[str, tuple[str, tuple[float, ...]]]]] = []
    for year in years:
        rows: list[tuple[str, tuple[str, tuple[float, ...]]]] = []
        for file_year, crs, west, east, south, north, href in records:
            # Same-zone files are filtered exactly by their UTM bounds.
            if file_year != year or (
                str(crs) == grid_crs
                and not (
                    west < grid.east
                    and east > grid.west
                    and south < grid.north
                    and north > grid.south
                )
            ):
                continue
            rows.append((str(href), (str(crs), (west, south, east, north))))
        chosen_rows.append(rows)
    return chosen_rows


def prefetch_headers(
    root: str | os.PathLike[str], grids: Sequence[Grid], years: Sequence[int], *, cache: bool = True
) -> None:
    """Read the headers of every file over any of ``grids`` at once, for later plans.

    Many sites planned one by one would wait a round trip each for their
    files' headers; read together, the round trips overlap. Problems (no
    file, a bad header) are left for :func:`plan_mosaic` to report per grid.
    """
    root = str(root).rstrip("/")
    wanted: dict[str, tuple[str, tuple[float, ...]]] = {}
    for grid in grids:
        for rows in _chosen_rows(root, grid, years):
            wanted.update(rows)
    with contextlib.suppress(Invalid, ReadError, OSError):
        _headers(wanted, cache)


def plan_mosaic(
    root: str | os.PathLike[str], grid: Grid, years: Sequence[int], *, cache: bool = True
) -> tuple[tuple[Tile, ...], ...]:
    """Which files, in mosaic order, cover ``grid`` in each year.

    Only metadata is read: the index and the headers of the selected files,
    all at once (``cache=False``: not from the persistent range cache).

    Raises
    ------
    DataNotFoundError
        If some requested year has no file that touches the grid.
    ReadError
        If a header cannot be read, or is not a mirror file's (after retries).
    """
    root = str(root).rstrip("/")
    chosen_rows = _chosen_rows(root, grid, years)
    empty = [int(year) for year, rows in zip(years, chosen_rows, strict=True) if not rows]
    if empty:
        index = read_index(root)  # what is really there (a local copy may be partial)
        covered = sorted(index["year"].unique().tolist())
        w, s, e, n = grid.lonlat_bounds
        where = f"lon {w:.4f}..{e:.4f}, lat {s:.4f}..{n:.4f}"
        raise DataNotFoundError(
            f"no embedding files in {str(root)!r} cover the site ({where}) for years {empty}; "
            f"the source has years {covered} and a footprint of lon "
            f"{index['wgs84_west'].min():.3f}..{index['wgs84_east'].max():.3f}, lat "
            f"{index['wgs84_south'].min():.3f}..{index['wgs84_north'].max():.3f}: pick a site "
            "and years inside it, or another source"
        )
    headers = _headers(dict(row for rows in chosen_rows for row in rows), cache)
    return tuple(tuple(headers[href] for href, _ in rows) for rows in chosen_rows)


def _source_indices(tile: Tile, grid: Grid, rows: slice, cols: slice, grid_crs: str):
    """Source (row, col) of the pixel containing each destination centre.

    Same CRS: two 1-D index vectors (the read is separable, and exact for
    grids on the same 10 m lattice). Other CRS (a neighbouring UTM zone):
    2-D index arrays from an exact pyproj transform of every centre, i.e.
    nearest-neighbour warping.
    """
    a, _, c, _, e, f = tile.transform
    xs = grid.x[cols]
    ys = grid.y[rows]
    if tile.crs == grid_crs:
        return np.floor((ys - f) / e).astype(np.int64), np.floor((xs - c) / a).astype(np.int64)
    to_tile = transformer(grid_crs, tile.crs)
    xx, yy = np.meshgrid(xs, ys)
    sx, sy = to_tile.transform(xx, yy)
    return np.floor((sy - f) / e).astype(np.int64), np.floor((sx - c) / a).astype(np.int64)


def _read_blocks(
    wants: Sequence[tuple[Tile, tuple[int, int, int, int]]], bands: tuple[int, ...], cache: bool
) -> list[np.ndarray]:
    """The int8 ``(bands, rows, cols)`` window of each (file, window), all read at once.

    Files in the mirror's layout are read by byte ranges, concurrently
    (:func:`xembed.sources.tiff.read_windows`); others through GDAL.

    Raises
    ------
    ReadError
        If a window cannot be read (remote reads are retried first, see
        :data:`RETRY`); never returns zeros or nodata in place of unread data.
    """
    policy = RETRY  # read at call time: users replace it
    ranged = [i for i, (tile, _) in enumerate(wants) if tile.layout is not None]
    windows = []
    for i in ranged:
        tile, (r0, r1, c0, c1) = wants[i]
        assert tile.layout is not None
        windows.append(Window(tile.source, tile.layout, bands, r0, r1, c0, c1))
    blocks: list[Any] = [None] * len(wants)
    store = _range_cache(cache) if any(w.source.url for w in windows) else None
    for i, block in zip(ranged, read_windows(windows, policy, store), strict=True):
        blocks[i] = block
    for i, (tile, (r0, r1, c0, c1)) in enumerate(wants):
        if tile.layout is None:
            path = gdal_path(tile.href)
            blocks[i] = gdalread.read_window(tile.href, path, bands, (r0, r1), (c0, c1), policy)
    return blocks


@dataclass(frozen=True)
class MosaicReader(CubeStack):
    """A lazily indexed ``(year, band, y, x)`` float32 array over a mirror.

    Indexing it reads and mosaics only what the key selects, every year and
    file at once (their byte ranges concurrently); dask wraps it with one
    task per chunk (``dask.array.from_array``). ``cache=False`` bypasses the
    persistent cache of fetched byte ranges.
    """

    grid: Grid
    years: tuple[int, ...]
    plan: tuple[tuple[Tile, ...], ...]
    cache: bool = True

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        # Deterministic names: the same site, years and files give the same graph.
        grid = (self.grid.crs.to_string(), self.grid.west, self.grid.north, self.grid.shape)
        files = tuple(
            tuple((t.href, t.crs, t.transform, t.width, t.height, t.size, t.validator) for t in ts)
            for ts in self.plan
        )
        return ("xembed.MosaicReader", grid, self.years, files)

    def __getitem__(self, key: Any) -> np.ndarray:
        key, squeeze = self.expand_key(key)
        year_index = np.arange(self.shape[0])[key[0]]
        band_index = np.arange(self.shape[1])[key[1]]
        rows, cols = key[2], key[3]
        grid_crs = self.grid.crs.to_string()
        height = len(range(*rows.indices(self.grid.height)))
        width = len(range(*cols.indices(self.grid.width)))
        wants = []  # (year position, file, source rows, source cols, window), mosaic order
        for i, y in enumerate(year_index):
            for tile in self.plan[y]:
                src_rows, src_cols = _source_indices(tile, self.grid, rows, cols, grid_crs)
                window = window_of(tile.height, tile.width, src_rows, src_cols)
                if window is not None:
                    wants.append((i, tile, src_rows, src_cols, window))
        bands = tuple(int(b) for b in band_index)
        blocks = _read_blocks([(w[1], w[4]) for w in wants], bands, self.cache)
        out = np.empty((len(year_index), len(band_index), height, width), dtype=np.float32)
        mosaic = np.empty((len(band_index), height, width), dtype=np.int8)
        for i in range(len(year_index)):
            mosaic.fill(NODATA)
            for (j, tile, src_rows, src_cols, window), block in zip(wants, blocks, strict=True):
                if j == i:
                    r0, c0 = window[0], window[2]
                    values = scatter(block, tile.height, tile.width, src_rows, src_cols, r0, c0)
                    # Later files on top, nodata transparent (Earth Engine's mosaic()).
                    np.copyto(mosaic, values, where=values != NODATA)
            out[i] = dequantize(mosaic)
        return out.squeeze(axis=tuple(squeeze)) if squeeze else out
