"""The reader contract every source implements, and the one place a cube is assembled.

A source turns a site into a lazily indexed ``(year, band, y, x)`` float32
array over the site's grid (a :class:`CubeStack`); :func:`site_cube` wraps it
in the cube schema. Sources import this module and never each other (except
``sample``, which writes the mirror format with ``mirror``), in the manner of
xarray's ``backends/common.py``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers .rio, used to write the CRS)
import xarray as xr
from dask.base import tokenize

from xembed.errors import SiteError
from xembed.grid import Grid, coverage_fraction, target_grid, utm_zone_name
from xembed.schema import (
    ATTRIBUTION,
    BANDS,
    COLLECTION,
    FIRST_YEAR,
    LICENSE,
    last_possible_year,
)
from xembed.sites import Site, as_site

__all__ = [
    "DEFAULT_CHUNKS",
    "INDEX_COLUMNS",
    "CubeStack",
    "SiteRequest",
    "build_cube",
    "chunk_sizes",
    "lazy_array",
    "normalize_chunks",
    "normalize_years",
    "site_cube",
    "site_grid",
    "site_request",
]

#: All years and all bands in one chunk, space tiled: cross-year analyses
#: then need no rechunk, and a task reads one window of each year's file.
#: 8 years x 64 bands x 256 x 256 float32 = 134 MB per chunk.
DEFAULT_CHUNKS: dict[str, int] = {"year": -1, "band": -1, "y": 256, "x": 256}

#: Columns the mirror's index must have (``geometry`` is optional: the WGS84
#: bounds stand in for the footprint when it is missing). The reader
#: (``cog``) checks them, the writer (``mirror``) writes them.
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


def normalize_years(years: int | Iterable[int]) -> tuple[int, ...]:
    """Years as a tuple of ints within the collection, each once.

    Whole numbers of any numeric type are accepted (``2020.0``, numpy
    integers); fractions, text and bytes are refused, never truncated.

    Examples
    --------
    >>> normalize_years(range(2018, 2021))
    (2018, 2019, 2020)
    >>> normalize_years(2020)
    (2020,)
    >>> normalize_years([2020.5])
    Traceback (most recent call last):
    ...
    ValueError: years [2020.5] hold 2020.5, which is not a whole number; years are integers, ...
    """
    fix = "years are integers, e.g. 2020, [2018, 2020] or range(2018, 2025)"
    if isinstance(years, (str, bytes)):
        raise ValueError(f"years {years!r} is a {type(years).__name__}, not a number; {fix}")
    try:
        items: list[Any] = [years] if _is_number(years) else list(years)  # type: ignore[arg-type]
    except TypeError as err:
        raise ValueError(f"years {years!r} is a {type(years).__name__}; {fix}") from err
    out: list[int] = []
    for y in items:
        shown = y.item() if isinstance(y, np.generic) else y  # 2019.5, not np.float64(2019.5)
        if not _is_number(y):
            kind = "bytes" if isinstance(y, bytes) else f"a {type(y).__name__}"
            raise ValueError(
                f"years {years!r} hold {shown!r}, which is {kind}, not a number; {fix}"
            )
        if not float(y).is_integer():
            raise ValueError(f"years {years!r} hold {shown!r}, which is not a whole number; {fix}")
        out.append(int(y))
    if not out:
        raise ValueError("years is empty; pass e.g. range(2018, 2025)")
    if len(set(out)) != len(out):
        raise ValueError(f"years {out} repeat a year; pass each year once")
    bad = [y for y in out if y < FIRST_YEAR or y > last_possible_year()]
    if bad:
        raise ValueError(
            f"years {bad} are outside the collection, which starts in {FIRST_YEAR} and "
            f"cannot go past {last_possible_year()}; pass years from {FIRST_YEAR} on, e.g. "
            f"range({FIRST_YEAR}, {last_possible_year()})"
        )
    return tuple(out)


def _is_number(value: Any) -> bool:
    """A real number that is not a bool (``True`` is no year)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def normalize_chunks(
    chunks: Mapping[str, int] | int | None, default: Mapping[str, int] = DEFAULT_CHUNKS
) -> dict[str, int]:
    """``chunks=`` as a full ``{dim: size}`` mapping over ``default`` (an int sets y and x).

    Examples
    --------
    >>> normalize_chunks(512)
    {'year': -1, 'band': -1, 'y': 512, 'x': 512}
    >>> normalize_chunks({"year": 1})["year"]
    1
    """
    merged = dict(default)
    if chunks is None:
        return merged
    if isinstance(chunks, (int, np.integer)):
        merged.update(y=int(chunks), x=int(chunks))
        return merged
    unknown = sorted(set(chunks) - set(merged))
    if unknown:
        raise ValueError(
            f"chunks has unknown dimensions {unknown}; expected some of {list(merged)}"
        )
    merged.update({k: int(v) for k, v in chunks.items()})
    return merged


def chunk_sizes(spec: Mapping[str, int], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunk sizes of a ``(year, band, y, x)`` array of ``shape``: -1 or 0 mean whole.

    Examples
    --------
    >>> chunk_sizes(DEFAULT_CHUNKS, (8, 64, 100, 1000))
    (8, 64, 100, 256)
    """
    return tuple(
        shape[i] if spec[dim] in (-1, 0) else min(spec[dim], shape[i])
        for i, dim in enumerate(("year", "band", "y", "x"))
    )


class CubeStack:
    """What the sources' lazy readers share: a ``(year, band, y, x)`` float32
    array over ``grid`` for ``years``, indexed by dask one chunk at a time.

    Subclasses (dataclasses) provide ``grid`` and ``years`` and read in
    ``__getitem__`` after :meth:`expand_key`.
    """

    grid: Grid
    years: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.years), len(BANDS), self.grid.height, self.grid.width)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return 4

    def expand_key(self, key: Any) -> tuple[tuple[Any, ...], tuple[int, ...]]:
        """``key`` as 4 entries with integers made length-1 slices, and the axes to squeeze.

        >>> stack = CubeStack()
        >>> stack.grid = Grid("EPSG:32722", west=0.0, north=100.0, width=4, height=3)
        >>> stack.years = (2020, 2021)
        >>> key, squeeze = stack.expand_key((-1, slice(2, 4)))
        >>> key[:2], len(key), squeeze
        ((slice(1, 2, None), slice(2, 4, None)), 4, (0,))
        """
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (4 - len(key))
        squeeze = tuple(i for i, k in enumerate(key) if isinstance(k, (int, np.integer)))
        expanded = list(key)
        for axis in squeeze:
            size, index = self.shape[axis], int(key[axis])
            if not -size <= index < size:
                raise IndexError(f"index {index} is out of bounds for axis {axis} of size {size}")
            index %= size
            expanded[axis] = slice(index, index + 1)
        return tuple(expanded), squeeze


def lazy_array(reader: Any, chunks: Any, *, token: Any = None, prefix: str = "embeddings-") -> Any:
    """One dask task per chunk of ``reader`` (``shape``, ``dtype``, ``__getitem__``).

    The name is a hash of ``token`` (default: the reader) and the chunks, so
    the same site, years and files give the same graph. ``asarray=False``:
    each task indexes the reader, which reads only that chunk.
    """
    return da.from_array(
        reader,
        chunks=chunks,
        name=prefix + tokenize(reader if token is None else token, chunks),
        meta=np.empty((0, 0, 0, 0), dtype=np.float32),
        asarray=False,
    )


def site_grid(site: Site, *, buffer: float = 0.0) -> tuple[Grid, Any]:
    """:func:`xembed.grid.target_grid` of a site, its errors prefixed with the site's id."""
    try:
        return target_grid(site.geometry, buffer=buffer)
    except SiteError as err:
        raise SiteError(f"site {site.id!r}: {err}") from err


@dataclass(frozen=True)
class SiteRequest:
    """A checked request for a site's cube: what every source is given to read."""

    site: Site
    years: tuple[int, ...]
    grid: Grid
    geometry: Any  # the site's polygon in the grid's CRS
    chunks: tuple[int, ...]  # dask chunk sizes of the (year, band, y, x) array
    buffer: float

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.years), len(BANDS), self.grid.height, self.grid.width)


def site_request(
    where: Any,
    years: int | Iterable[int],
    *,
    buffer: float = 0.0,
    chunks: Mapping[str, int] | int | None = None,
    id_field: str | None = None,
) -> SiteRequest:
    """Check the arguments every source takes and compute the site's grid.

    ``where`` is anything :func:`xembed.sites.as_site` takes (``id_field``
    picks the id column of a site file or frame).

    Raises
    ------
    ValueError
        For bad years, buffer or chunks.
    xembed.errors.SiteError
        For a site xembed cannot grid (see :func:`xembed.grid.target_grid`).
    """
    site = as_site(where, id_field=id_field)
    years = normalize_years(years)
    spec = normalize_chunks(chunks)
    if buffer < 0:
        raise ValueError(f"buffer must be >= 0 metres, got {buffer!r}")
    grid, geometry = site_grid(site, buffer=buffer)
    shape = (len(years), len(BANDS), grid.height, grid.width)
    return SiteRequest(site, years, grid, geometry, chunk_sizes(spec, shape), float(buffer))


def site_cube(
    request: SiteRequest,
    reader: CubeStack,
    *,
    clip: bool,
    attrs: Mapping[str, Any],
    token: Any = None,
    prefix: str = "embeddings-",
) -> xr.Dataset:
    """The lazy cube of ``request`` read through ``reader`` (chunked as requested)."""
    data = lazy_array(reader, request.chunks, token=token, prefix=prefix)
    return build_cube(
        data,
        request.grid,
        request.geometry,
        request.years,
        site=request.site,
        clip=clip,
        buffer=request.buffer,
        attrs={**attrs, "buffer_m": request.buffer},
    )


def build_cube(
    data: da.Array,
    grid: Grid,
    geometry: Any,
    years: tuple[int, ...],
    *,
    site: Site,
    clip: bool,
    attrs: Mapping[str, Any],
    buffer: float = 0.0,
) -> xr.Dataset:
    """Wrap a lazy ``(year, band, y, x)`` array in the cube schema.

    Every source calls this, so every source returns the same cube. With
    ``clip``, pixels with no part inside ``geometry`` grown by ``buffer``
    metres are masked (the context a buffer adds is kept); ``coverage`` is
    always that of ``geometry`` itself.

    Raises
    ------
    SiteError
        If the site covers no pixel at all (coverage 0 everywhere, e.g. a
        sliver far thinner than a pixel): it has nothing to average. A site
        smaller than a pixel is fine: its cube has pixels with fractional
        coverage.
    """
    coverage = coverage_fraction(geometry, grid)
    if not coverage.any():
        raise SiteError(
            f"site {site.id!r} covers no {grid.res:g} m pixel: its coverage is 0 in every "
            f"pixel of its {grid.height} x {grid.width} grid (area {geometry.area:.3g} m² in "
            f"{grid.crs.to_string()}), so it has no pixels to average; check the geometry "
            "(a sliver or a collapsed ring?), or give it an area, e.g. buffer it by a few "
            "metres in its UTM zone (xembed.grid.utm_crs, xembed.grid.project)"
        )
    coords = {
        "year": ("year", np.asarray(years, dtype=np.int64)),
        "band": ("band", np.asarray(BANDS)),
        "y": ("y", grid.y, {"units": "metre", "standard_name": "projection_y_coordinate"}),
        "x": ("x", grid.x, {"units": "metre", "standard_name": "projection_x_coordinate"}),
    }
    embeddings = xr.DataArray(
        data,
        dims=("year", "band", "y", "x"),
        coords=coords,
        name="embeddings",
        attrs={"long_name": "AlphaEarth Foundations embedding", "units": "1"},
    )
    cov = xr.DataArray(
        coverage,
        dims=("y", "x"),
        coords={"y": coords["y"], "x": coords["x"]},
        name="coverage",
        attrs={"long_name": "fraction of the pixel inside the site polygon", "units": "1"},
    )
    if clip:
        keep = cov > 0
        if buffer > 0:
            grown = coverage_fraction(geometry.buffer(buffer), grid)
            keep = xr.DataArray(grown > 0, dims=("y", "x"), coords=cov.coords)
        # Lazy: a dask `where` against an in-memory mask.
        embeddings = embeddings.where(keep)
    ds = xr.Dataset({"embeddings": embeddings, "coverage": cov})
    ds.attrs = {
        "title": "AlphaEarth Foundations satellite embeddings",
        "collection": COLLECTION,
        "version": "V1",
        "site_id": str(site.id),
        "site_start_year": -1 if site.start_year is None else int(site.start_year),
        "site_geometry_wkt": site.geometry.wkt,
        "utm_zone": utm_zone_name(grid.crs),
        "buffer_m": float(attrs.get("buffer_m", 0.0)),
        "clipped": int(clip),
        "license": LICENSE,
        "attribution": ATTRIBUTION,
        **{k: v for k, v in attrs.items() if k != "buffer_m"},
    }
    ds = ds.rio.write_crs(grid.crs)
    return ds.rio.write_transform(grid.transform)
