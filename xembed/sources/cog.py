"""The public Cloud-Optimized GeoTIFF mirror of the embeddings.

Layout (DESIGN.md section 1): ``{root}/aef_index.parquet`` (or ``.csv``) with
one row per file, files at ``{year}/{zone}/{id}-{yOff}-{xOff}.tiff``: int8,
64 bands, nodata -128, stored **bottom-up** (positive y pixel size).

Reading is planned eagerly from metadata only (the index and file headers)
and executed lazily: one dask task per chunk reads, for every year, just the
window of each file that the chunk needs, mosaics the files (later rows on
top, nodata transparent), and de-quantises once.
"""

from __future__ import annotations

import functools
import hashlib
import os
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyproj
import shapely

from xembed.errors import DataNotFoundError, SourceError
from xembed.grid import Grid
from xembed.schema import BANDS, NODATA, dequantize

__all__ = [
    "DEFAULT_ROOT",
    "INDEX_COLUMNS",
    "MosaicReader",
    "available_years",
    "https_url",
    "plan_mosaic",
    "read_index",
]

#: Source Cooperative's public, anonymous copy of the mirror.
DEFAULT_ROOT = "s3://us-west-2.opendata.source.coop/tge-labs/aef/v1/annual"
#: Columns the index must have (``geometry`` is optional: the WGS84 bounds
#: stand in for the footprint when it is missing).
INDEX_COLUMNS = (
    "path",
    "crs",
    "year",
    "utm_zone",
    "utm_west",
    "utm_south",
    "utm_east",
    "utm_north",
    "wgs84_west",
    "wgs84_south",
    "wgs84_east",
    "wgs84_north",
)
_REMOTE_SCHEMES = ("http", "https", "s3", "gs")

# GDAL settings for anonymous cloud reads: no directory listings (one request
# per file header instead of many), unsigned requests, retries on 5xx.
_GDAL_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
}


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


def _gdal_path(href: str) -> str:
    return "/vsicurl/" + https_url(href) if _is_remote(href) else href


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(https_url(url), timeout=60) as response:
            return bytes(response.read())
    except OSError as err:
        raise SourceError(f"could not read {url!r}: {err}") from err


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
    from xembed.sources.sample import cache_dir

    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache_dir() / "index" / f"{digest}.parquet"


@functools.lru_cache(maxsize=8)
def _read_index_cached(location: str, fmt: str, stamp: float) -> pd.DataFrame:
    if _is_remote(location):
        cached = _remote_cache_path(location)
        if not cached.is_file():
            data = _fetch(location)
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, cached)
        location = str(cached)
    try:
        if fmt == "parquet":
            table = pd.read_parquet(location)
        else:
            table = pd.read_csv(location)
    except Exception as err:
        raise SourceError(f"could not read the mirror index {location!r}: {err}") from err
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


def _load_index(root: str) -> pd.DataFrame:
    location, fmt = _index_location(root)
    stamp = 0.0 if _is_remote(location) else os.stat(location).st_mtime
    return _read_index_cached(location, fmt, stamp)


def _with_hrefs(root: str, table: pd.DataFrame) -> pd.DataFrame:
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
    return _with_hrefs(root, _load_index(root))


def available_years(root: str | os.PathLike[str]) -> list[int]:
    """The years a mirror holds files for (for a local folder: files on disk).

    Examples
    --------
    >>> from xembed.sources.sample import sample_root
    >>> available_years(sample_root())
    [2017, 2018, 2019, 2020, 2021, 2022, 2023, 2024]
    """
    root = str(root).rstrip("/")
    table = _load_index(root) if _is_remote(root) else read_index(root)
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
    import rasterio

    try:
        with rasterio.Env(**_GDAL_ENV), rasterio.open(_gdal_path(href)) as src:
            if src.count != len(BANDS) or src.dtypes[0] != "int8":
                raise SourceError(
                    f"{href!r} has {src.count} bands of {src.dtypes[0]}; expected "
                    f"{len(BANDS)} int8 bands as in the embedding mirror"
                )
            t = src.transform
            return Tile(
                href, src.crs.to_string(), (t.a, t.b, t.c, t.d, t.e, t.f), src.width, src.height
            )
    except rasterio.errors.RasterioIOError as err:
        raise SourceError(f"could not open {href!r}: {err}") from err


def _grid_lonlat_box(grid: Grid) -> shapely.Polygon:
    to_wgs84 = pyproj.Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    return shapely.box(*to_wgs84.transform_bounds(*grid.bounds, densify_pts=21))


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
    index = _load_index(root)
    box = _grid_lonlat_box(grid)
    chosen = index[index["year"].isin(list(years))]
    # Resolve file locations only for the few rows that matter.
    chosen = _with_hrefs(root, chosen[shapely.intersects(chosen["footprint"].to_numpy(), box)])
    grid_crs = grid.crs.to_string()
    plan: list[tuple[Tile, ...]] = []
    empty: list[int] = []
    for year in years:
        rows = chosen[chosen["year"] == year].sort_values("path")
        tiles = []
        for row in rows.itertuples():
            # Same-zone files are filtered exactly by their UTM bounds.
            if str(row.crs) == grid_crs and not (
                row.utm_west < grid.east
                and row.utm_east > grid.west
                and row.utm_south < grid.north
                and row.utm_north > grid.south
            ):
                continue
            tiles.append(_tile(str(row.href)))
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
    transformer = _transformer(grid_crs, tile.crs)
    xx, yy = np.meshgrid(xs, ys)
    sx, sy = transformer.transform(xx, yy)
    return np.floor((sy - f) / e).astype(np.int64), np.floor((sx - c) / a).astype(np.int64)


@functools.lru_cache(maxsize=64)
def _transformer(src: str, dst: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(src, dst, always_xy=True)


def _read_tile(tile: Tile, band_index: np.ndarray, src_rows: np.ndarray, src_cols: np.ndarray):
    """Gather int8 values of ``tile`` at (src_rows, src_cols); -128 outside it."""
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
    try:
        with rasterio.Env(**_GDAL_ENV), rasterio.open(_gdal_path(tile.href)) as src:
            block = src.read(indexes=[int(b) + 1 for b in band_index], window=window)
    except rasterio.errors.RasterioIOError as err:
        raise SourceError(f"could not read {window} of {tile.href!r}: {err}") from err
    out = np.full(shape, NODATA, dtype=np.int8)
    if separable:
        out[:, np.flatnonzero(inside_r)[:, None], np.flatnonzero(inside_c)[None, :]] = block[
            :, (r_sel - r0)[:, None], (c_sel - c0)[None, :]
        ]
    else:
        out[:, inside] = block[:, r_sel - r0, c_sel - c0]
    return out


@dataclass(frozen=True)
class MosaicReader:
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

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.years), len(BANDS), self.grid.height, self.grid.width)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return 4

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (4 - len(key))
        year_index = np.arange(self.shape[0])[key[0]]
        band_index = np.arange(self.shape[1])[key[1]]
        rows, cols = key[2], key[3]
        squeeze = [i for i, k in enumerate(key) if isinstance(k, (int, np.integer))]
        year_index, band_index = np.atleast_1d(year_index), np.atleast_1d(band_index)
        rows = slice(rows, rows + 1) if isinstance(rows, (int, np.integer)) else rows
        cols = slice(cols, cols + 1) if isinstance(cols, (int, np.integer)) else cols
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
