"""The public Cloud-Optimized GeoTIFF mirror of the embeddings.

Layout (DESIGN.md section 1): ``{root}/aef_index.parquet`` (or ``.csv``) with
one row per file, files at ``{year}/{zone}/{id}-{yOff}-{xOff}.tiff``: int8,
64 bands, nodata -128, stored **bottom-up** (positive y pixel size).

Reading is planned eagerly from metadata only (the index and file headers)
and executed lazily: one dask task per chunk reads, for every year, just the
window of each file that the chunk needs, mosaics the files (later rows on
top, nodata transparent), and de-quantises once.

Faults
------
Remote reads (the index download, each file header, each window) retry
transient failures -- HTTP 5xx and 429, timeouts, stalled transfers,
connection resets, bodies cut short -- with exponential backoff, within the
budget of :data:`RETRY` (a :class:`RetryPolicy`; environment variables
``XEMBED_RETRY_ATTEMPTS``, ``XEMBED_RETRY_BACKOFF``,
``XEMBED_RETRY_MAX_BACKOFF`` and ``XEMBED_HTTP_TIMEOUT`` set it at import).
A read that still fails, and any failed read of a local file (not retried:
a truncated file stays truncated), raises :class:`ReadError` naming the file.
Nothing is ever filled with zeros or NaN in place of data that could not be
read.

xembed's loop is the only one that retries: GDAL's own HTTP retries are off
(``GDAL_HTTP_MAX_RETRY=0``), so the budget does not multiply, and the loop
also covers what GDAL does not retry. Each retry opens the file with
``CPL_VSIL_CURL_NON_CACHED`` set for it, because a failure can poison
``/vsicurl/``'s process-wide cache: a failed ``HEAD`` is remembered as "no
such file", and a body cut short is remembered as the end of the file, so
without this a retry would fail again without sending a request.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import io
import logging
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import shapely

from xembed._util import atomic_write, cache_dir, transformer
from xembed.errors import DataNotFoundError, ReadError, SourceError
from xembed.grid import Grid
from xembed.schema import BANDS, NODATA, dequantize
from xembed.sources.common import INDEX_COLUMNS, CubeStack
from xembed.sources.retry import RetryPolicy

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
    "plan_mosaic",
    "read_index",
    "with_hrefs",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Source Cooperative's public, anonymous copy of the mirror.
DEFAULT_ROOT = "s3://us-west-2.opendata.source.coop/tge-labs/aef/v1/annual"
_REMOTE_SCHEMES = ("http", "https", "s3", "gs")
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

# GDAL settings for every read (timeouts come from RETRY, see RetryPolicy.gdal_options):
# - no directory listings (one request per file header instead of many);
# - GDAL does not retry: xembed's loop does (one budget, and it also covers
#   truncated bodies, which GDAL takes for the end of the file);
# - parallel range requests, consecutive ranges merged;
# - a tile that cannot be read is an error, never a block of zeros (GDAL's
#   GTIFF_IGNORE_READ_ERRORS=YES would fill it with zeros: pin it off).
GDAL_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff",
    "GDAL_HTTP_MAX_RETRY": "0",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GTIFF_IGNORE_READ_ERRORS": "NO",
}


class _Corrupt(OSError):
    """A file opened, but its header is not what a mirror file has (e.g. cut short)."""


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


def _is_loopback(url: str) -> bool:
    return urllib.parse.urlsplit(url).hostname in _LOOPBACK_HOSTS


def _transient_status(status: int) -> bool:
    """Worth retrying: server errors, "too many requests", request timeouts."""
    return status >= 500 or status in (408, 429)


def _wait(policy: RetryPolicy, failures: int, href: str, what: str, cause: str) -> None:
    delay = policy.delay(failures) * random.uniform(0.5, 1.0)
    logger.info(
        "reading the %s of %s failed (attempt %d of %d: %s); retrying in %.2f s",
        what,
        href,
        failures,
        policy.attempts,
        cause,
        delay,
    )
    time.sleep(delay)


def _gave_up(what: str, href: str, cause: str, attempts: int, started: float) -> str:
    return (
        f"could not read the {what} of {href!r}: {cause} (gave up after {attempts} attempts "
        f"in {time.monotonic() - started:.1f} s). The server kept failing: try again later, "
        "or allow more attempts (XEMBED_RETRY_ATTEMPTS, or xembed.sources.cog.RETRY)"
    )


def _fetch(url: str) -> bytes:
    """The bytes at ``url`` (``s3://``, ``gs://`` or ``https://``), retrying per :data:`RETRY`.

    Raises
    ------
    SourceError
        If the server refuses the URL (HTTP 4xx other than 408 and 429).
    ReadError
        If the download kept failing (5xx, timeouts, resets, short bodies).
    """
    policy = RETRY
    target = https_url(url)
    # A local server is reached directly, never through a proxy set in the environment.
    handlers = [urllib.request.ProxyHandler({})] if _is_loopback(target) else []
    opener = urllib.request.build_opener(*handlers)
    started = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        status = None
        try:
            with opener.open(target, timeout=policy.timeout) as response:
                data = response.read()  # http.client.IncompleteRead if cut short
                expected = response.headers.get("Content-Length")
                if expected is not None and len(data) != int(expected):
                    raise http.client.IncompleteRead(data, int(expected) - len(data))
                return bytes(data)
        except urllib.error.HTTPError as err:
            err.close()
            status, cause = err.code, f"HTTP {err.code} {err.reason}"
        except (OSError, http.client.HTTPException) as err:  # timeouts, resets, short bodies
            cause = f"{type(err).__name__}: {err}"
        # Raised outside the except blocks, so not chained: see _retrying.
        if status is not None and not _transient_status(status):
            raise SourceError(
                f"could not read {url!r}: {cause}; check that root= is the mirror's top "
                "folder (the one holding aef_index.parquet) and that it is public"
            )
        if attempt < policy.attempts:
            _wait(policy, attempt, url, "file", cause)
    raise ReadError(
        _gave_up("file", url, cause, policy.attempts, started), href=url, attempts=policy.attempts
    )


def _causes(err: BaseException) -> str:
    """GDAL's messages behind a rasterio error, outermost first (rasterio 1.4 chains them)."""
    messages: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if text and "See previous exception" not in text and text not in messages:
            messages.append(text)
        current = current.__cause__ or current.__context__
    return "; ".join(messages) or type(err).__name__


def _refused(cause: str) -> bool:
    """The server refused the file (HTTP 4xx but 408/429): retrying cannot help."""
    codes = [int(c) for c in re.findall(r"HTTP response code: (\d{3})", cause)]
    return any(400 <= c < 500 and not _transient_status(c) for c in codes)


def _retrying(href: str, what: str, action: Callable[[Mapping[str, str]], _T]) -> _T:
    """Run ``action(gdal_env)`` on ``href``, retrying remote failures per :data:`RETRY`.

    Local files are tried once: their failures (truncated, corrupt) are permanent.
    """
    import rasterio
    from rasterio._err import CPLE_BaseError

    policy = RETRY
    remote = _is_remote(href)
    attempts = policy.attempts if remote else 1
    started = time.monotonic()
    first = ""
    for attempt in range(1, attempts + 1):
        env = {**GDAL_ENV, **policy.gdal_options()} if remote else dict(GDAL_ENV)
        if attempt > 1:
            # Bypass, and on close drop, what /vsicurl/ cached for this file: the
            # failure may have left "no such file" or a too-short size there.
            # (GDAL splits this option at ':', so it disables caching of every
            # /vsicurl/ URL in this thread while the retry runs: harmless.)
            env["CPL_VSIL_CURL_NON_CACHED"] = gdal_path(href)
        try:
            return action(env)
        except (rasterio.errors.RasterioError, CPLE_BaseError, _Corrupt) as err:
            cause = _causes(err)
            if remote and "not recognized as being in a supported" in cause:
                cause += " (GDAL says so of a URL whose header it could not fetch)"
        # Raised outside the except block, so not chained: the message carries
        # GDAL's words, and rasterio's exceptions (which do not survive the
        # pickling dask.distributed does to a task's error) stay behind.
        if not remote:
            raise ReadError(
                f"could not read the {what} of {href!r}: {cause}. The file is unreadable, "
                "truncated or corrupt: copy it again from the mirror (its size must match "
                "the mirror's)",
                href=href,
            )
        if _refused(cause):
            raise ReadError(
                f"could not read the {what} of {href!r}: {cause} (not retried: the server "
                "refuses it). Check that the mirror at root= holds this file and that the "
                "index matches the mirror",
                href=href,
                attempts=attempt,
            )
        first = first or cause
        if attempt == attempts:
            if cause != first:  # GDAL's last words can hide the cause ("not recognized")
                cause = f"{cause} (first failure: {first})"
            raise ReadError(
                _gave_up(what, href, cause, attempt, started), href=href, attempts=attempt
            )
        _wait(policy, attempt, href, what, cause)
    raise AssertionError("unreachable")  # pragma: no cover


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
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache_dir() / "index" / f"{digest}.parquet"


@functools.lru_cache(maxsize=8)
def _read_index_cached(location: str, fmt: str, stamp: float) -> pd.DataFrame:
    source: str | io.BytesIO = location
    cached: Path | None = None
    if _is_remote(location):
        # Kept on disk, except from a local server (as fast as the disk; a
        # copy would only go stale).
        cached = None if _is_loopback(https_url(location)) else _remote_cache_path(location)
        if cached is not None and cached.is_file():
            source = str(cached)
        else:
            data = _fetch(location)
            if cached is not None:
                atomic_write(cached, lambda tmp: tmp.write_bytes(data))
            source = io.BytesIO(data)
    try:
        if fmt == "parquet":
            table = pd.read_parquet(source)
        else:
            table = pd.read_csv(source)
    except Exception as err:
        where = repr(location)
        if cached is not None and cached.is_file():
            cached.unlink(missing_ok=True)  # a damaged copy: fetch afresh next time
            where += f" (its cached copy {str(cached)!r}, now removed: try again)"
        raise SourceError(f"could not read the mirror index {where}: {err}") from err
    missing = [c for c in INDEX_COLUMNS if c not in table.columns]
    if missing:
        raise SourceError(
            f"mirror index {location!r} lacks the columns {missing}; expected "
            f"{list(INDEX_COLUMNS)} (use the mirror's aef_index.parquet unchanged)"
        )
    if "geometry" in table.columns:
        geoms = table["geometry"]
        if fmt == "parquet":
            footprint = shapely.from_wkb(geoms.to_numpy())
        else:
            footprint = shapely.from_wkt(geoms.astype(str).to_numpy())
    else:
        footprint = shapely.box(
            table["wgs84_west"], table["wgs84_south"], table["wgs84_east"], table["wgs84_north"]
        )
    table = table.drop(columns=["geometry"], errors="ignore").assign(footprint=footprint)
    table["year"] = table["year"].astype(int)
    return table


def load_index(root: str) -> pd.DataFrame:
    location, fmt = _index_location(root)
    stamp = 0.0 if _is_remote(location) else os.stat(location).st_mtime
    return _read_index_cached(location, fmt, stamp)


def with_hrefs(root: str, table: pd.DataFrame) -> pd.DataFrame:
    hrefs = [_resolve(root, row.path, row.year, row.utm_zone) for row in table.itertuples()]
    table = table.assign(href=hrefs)
    if not _is_remote(root):
        table = table[table["href"].notna()]
    return table.reset_index(drop=True)


def read_index(root: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a mirror's index, with a resolved ``href`` per file.

    ``root`` is a local folder or an ``s3://``, ``gs://`` or ``https://``
    prefix. Paths in the index may be relative to the index's folder or
    absolute URLs. For a local folder only files present on disk are kept,
    found either at their relative path or, for absolute upstream URLs, at
    ``{root}/{year}/{zone}/{file name}``: a local copy of part of the mirror
    with the upstream index copied unchanged opens as it is, and never
    reaches for the network.

    Returns
    -------
    pandas.DataFrame
        The index columns plus ``href`` (local path or URL) and ``footprint``
        (shapely polygons in EPSG:4326).

    Examples
    --------
    >>> from xembed.sources.sample import sample_root
    >>> index = read_index(sample_root())
    >>> sorted(index["utm_zone"].unique())
    ['22S', '23S']
    """
    root = str(root).rstrip("/")
    return with_hrefs(root, load_index(root))


def available_years(root: str | os.PathLike[str]) -> list[int]:
    """The years a mirror holds files for (for a local folder: files on disk).

    Examples
    --------
    >>> from xembed.sources.sample import sample_root
    >>> available_years(sample_root())
    [2017, 2018, 2019, 2020, 2021, 2022, 2023, 2024]
    """
    root = str(root).rstrip("/")
    table = load_index(root) if _is_remote(root) else read_index(root)
    return sorted(int(y) for y in table["year"].unique())


def _resolve(root: str, path: str, year: int, zone: str) -> str | None:
    path = str(path)
    if _is_remote(root):
        return path if _is_remote(path) else f"{root}/{path.lstrip('/')}"
    if _is_remote(path) or os.path.isabs(path):
        name = path.rsplit("/", 1)[-1]
        candidates = [os.path.join(root, str(year), str(zone), name)]
        if not _is_remote(path):
            candidates.insert(0, path)
    else:
        candidates = [os.path.join(root, path)]
    return next((c for c in candidates if os.path.isfile(c)), None)


@dataclass(frozen=True)
class Tile:
    """What a read needs to know about one file, taken from its header."""

    href: str
    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int


@functools.lru_cache(maxsize=4096)
def _tile(href: str) -> Tile:
    """The header of one file (retried per :data:`RETRY`; cached once read).

    Raises
    ------
    ReadError
        If the header cannot be read (see :func:`_retrying`).
    SourceError
        If the file is not a 64-band int8 embedding file.
    """
    import rasterio

    def header(env: Mapping[str, str]) -> Tile:
        with rasterio.Env(**env), rasterio.open(gdal_path(href)) as src:
            if src.crs is None:
                raise _Corrupt("the header has no coordinate reference system (cut short?)")
            if src.count != len(BANDS) or src.dtypes[0] != "int8":
                raise SourceError(
                    f"{href!r} has {src.count} bands of {src.dtypes[0]}; expected "
                    f"{len(BANDS)} int8 bands as in the embedding mirror"
                )
            t = src.transform
            return Tile(
                href, src.crs.to_string(), (t.a, t.b, t.c, t.d, t.e, t.f), src.width, src.height
            )

    return _retrying(href, "header", header)


def plan_mosaic(
    root: str | os.PathLike[str], grid: Grid, years: Sequence[int]
) -> tuple[tuple[Tile, ...], ...]:
    """Which files, in mosaic order, cover ``grid`` in each year.

    Only metadata is read: the index and the headers of the selected files.

    Raises
    ------
    DataNotFoundError
        If some requested year has no file that touches the grid.
    """
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
    plan: list[tuple[Tile, ...]] = []
    empty: list[int] = []
    for year in years:
        tiles = []
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
            tiles.append(_tile(str(href)))
        if not tiles:
            empty.append(int(year))
        plan.append(tuple(tiles))
    if empty:
        index = read_index(root)  # what is really there (a local copy may be partial)
        covered = sorted(index["year"].unique().tolist())
        w, s, e, n = box.bounds
        where = f"lon {w:.4f}..{e:.4f}, lat {s:.4f}..{n:.4f}"
        raise DataNotFoundError(
            f"no embedding files in {str(root)!r} cover the site ({where}) for years {empty}; "
            f"the source has years {covered} and a footprint of lon "
            f"{index['wgs84_west'].min():.3f}..{index['wgs84_east'].max():.3f}, lat "
            f"{index['wgs84_south'].min():.3f}..{index['wgs84_north'].max():.3f}: pick a site "
            "and years inside it, or another source"
        )
    return tuple(plan)


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


def _read_tile(tile: Tile, band_index: np.ndarray, src_rows: np.ndarray, src_cols: np.ndarray):
    """Gather int8 values of ``tile`` at (src_rows, src_cols); -128 outside it.

    Raises
    ------
    ReadError
        If the window cannot be read (remote reads are retried first, see
        :data:`RETRY`); never returns zeros or nodata in place of unread data.
    """
    import rasterio
    from rasterio.windows import Window

    separable = src_rows.ndim == 1
    inside_r = (src_rows >= 0) & (src_rows < tile.height)
    inside_c = (src_cols >= 0) & (src_cols < tile.width)
    if separable:
        shape = (len(band_index), src_rows.size, src_cols.size)
        if not inside_r.any() or not inside_c.any():
            return None
        r_sel, c_sel = src_rows[inside_r], src_cols[inside_c]
    else:
        shape = (len(band_index), *src_rows.shape)
        inside = inside_r & inside_c
        if not inside.any():
            return None
        r_sel, c_sel = src_rows[inside], src_cols[inside]
    r0, r1 = int(r_sel.min()), int(r_sel.max()) + 1
    c0, c1 = int(c_sel.min()), int(c_sel.max()) + 1
    window = Window(c0, r0, c1 - c0, r1 - r0)
    indexes = [int(b) + 1 for b in band_index]

    def read(env: Mapping[str, str]) -> np.ndarray:
        with rasterio.Env(**env), rasterio.open(gdal_path(tile.href)) as src:
            return src.read(indexes=indexes, window=window)

    what = f"window rows {r0}:{r1}, cols {c0}:{c1} ({len(indexes)} bands)"
    block = _retrying(tile.href, what, read)
    out = np.full(shape, NODATA, dtype=np.int8)
    if separable:
        dst_r, dst_c = np.flatnonzero(inside_r), np.flatnonzero(inside_c)
        runs = [_as_run(i) for i in (dst_r, dst_c, r_sel - r0, c_sel - c0)]
        if all(isinstance(run, slice) for run in runs):
            # Same lattice (the usual case): plain slices copy ~70x faster than gathers.
            out[:, runs[0], runs[1]] = block[:, runs[2], runs[3]]
        else:
            out[:, dst_r[:, None], dst_c[None, :]] = block[
                :, (r_sel - r0)[:, None], (c_sel - c0)[None, :]
            ]
    else:
        out[:, inside] = block[:, r_sel - r0, c_sel - c0]
    return out


def _as_run(index: np.ndarray) -> slice | np.ndarray:
    """``index`` as a slice if it is a run of step +1 or -1 (bottom-up files), else itself.

    >>> _as_run(np.array([4, 3, 2, 1, 0]))
    slice(4, None, -1)
    >>> _as_run(np.array([2, 3, 5]))
    array([2, 3, 5])
    """
    n = index.size
    if n == 0:
        return index
    start = int(index[0])
    step = 1 if n == 1 else int(index[1]) - start
    if step not in (1, -1) or int(index[-1]) != start + step * (n - 1):
        return index
    if n > 2 and not np.array_equal(np.diff(index), np.full(n - 1, step)):
        return index
    stop = start + step * n
    return slice(start, None if stop < 0 else stop, step)


@dataclass(frozen=True)
class MosaicReader(CubeStack):
    """A lazily indexed ``(year, band, y, x)`` float32 array over a mirror.

    Indexing it reads and mosaics only what the key selects; dask wraps it
    with one task per chunk (``dask.array.from_array``).
    """

    grid: Grid
    years: tuple[int, ...]
    plan: tuple[tuple[Tile, ...], ...]

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        # Deterministic names: the same site, years and files give the same graph.
        grid = (self.grid.crs.to_string(), self.grid.west, self.grid.north, self.grid.shape)
        return ("xembed.MosaicReader", grid, self.years, self.plan)

    def __getitem__(self, key: Any) -> np.ndarray:
        key, squeeze = self.expand_key(key)
        year_index = np.arange(self.shape[0])[key[0]]
        band_index = np.arange(self.shape[1])[key[1]]
        rows, cols = key[2], key[3]
        grid_crs = self.grid.crs.to_string()
        height = len(range(*rows.indices(self.grid.height)))
        width = len(range(*cols.indices(self.grid.width)))
        out = np.empty((len(year_index), len(band_index), height, width), dtype=np.float32)
        for i, y in enumerate(year_index):
            mosaic = np.full((len(band_index), height, width), NODATA, dtype=np.int8)
            for tile in self.plan[y]:
                src_rows, src_cols = _source_indices(tile, self.grid, rows, cols, grid_crs)
                values = _read_tile(tile, band_index, src_rows, src_cols)
                if values is not None:
                    # Later files on top, nodata transparent (Earth Engine's mosaic()).
                    np.copyto(mosaic, values, where=values != NODATA)
            out[i] = dequantize(mosaic)
        return out.squeeze(axis=tuple(squeeze)) if squeeze else out
