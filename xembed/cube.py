"""``open_embeddings``: one entry point, one cube schema, whatever the source."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers .rio, used to write the CRS)
import shapely
import xarray as xr
from dask.base import tokenize

from xembed.errors import DataNotFoundError, SiteError, SourceError
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

__all__ = ["DEFAULT_CHUNKS", "SOURCES", "open_embeddings"]

#: All years and all bands in one chunk, space tiled: cross-year analyses
#: then need no rechunk, and a task reads one window of each year's file.
#: 8 years x 64 bands x 256 x 256 float32 = 134 MB per chunk.
DEFAULT_CHUNKS: dict[str, int] = {"year": -1, "band": -1, "y": 256, "x": 256}
#: Names ``source=`` accepts (besides a path to a local mirror folder).
SOURCES = ("sample", "cog", "ee")


def _normalize_years(years: int | Iterable[int]) -> tuple[int, ...]:
    if isinstance(years, (int, np.integer)):
        years = [int(years)]
    try:
        out = tuple(int(y) for y in years)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"years must be an int, a range or an iterable of ints, got {years!r}"
        ) from err
    if not out:
        raise ValueError("years is empty; pass e.g. range(2018, 2025)")
    if len(set(out)) != len(out):
        raise ValueError(f"years {list(out)} repeat a year; pass each year once")
    bad = [y for y in out if y < FIRST_YEAR or y > last_possible_year()]
    if bad:
        raise ValueError(
            f"years {bad} are outside the collection, which starts in {FIRST_YEAR} and "
            f"cannot go past {last_possible_year()}; pass years from {FIRST_YEAR} on, e.g. "
            f"range({FIRST_YEAR}, {last_possible_year()})"
        )
    return out


def _normalize_chunks(chunks: Mapping[str, int] | int | None) -> dict[str, int]:
    merged = dict(DEFAULT_CHUNKS)
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


def _chunk_sizes(spec: Mapping[str, int], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunk sizes of a ``(year, band, y, x)`` array of ``shape``: -1 or 0 mean whole."""
    return tuple(
        shape[i] if spec[dim] in (-1, 0) else min(spec[dim], shape[i])
        for i, dim in enumerate(("year", "band", "y", "x"))
    )


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


def _mirror_source(
    source: str | os.PathLike[str], root: str | os.PathLike[str] | None, years: Iterable[int]
) -> tuple[str, str]:
    """(kind, root) of a mirror source that has every one of ``years``."""
    from xembed.sources import cog

    kind, mirror = _resolve_source(source, root)
    available = cog.available_years(mirror)
    missing = [y for y in years if y not in available]
    if missing:
        raise ValueError(
            f"years {missing} are not in source {kind!r} ({mirror}); available years: {available}"
        )
    return kind, mirror


def _resolve_source(
    source: str | os.PathLike[str], root: str | os.PathLike[str] | None
) -> tuple[str, str]:
    """(kind, root) for a ``source=`` argument."""
    from xembed.sources import cog, sample

    if isinstance(source, os.PathLike) or (
        isinstance(source, str)
        and source not in SOURCES
        and (os.sep in source or os.path.isdir(source))
    ):
        return "cog", str(source)
    if source == "sample":
        return "sample", str(root or sample.sample_root())
    if source == "cog":
        return "cog", str(root or cog.DEFAULT_ROOT)
    raise SourceError(
        f"unknown source {source!r}; expected one of {list(SOURCES)} or the path of a local "
        "mirror folder (one holding aef_index.parquet)"
    )


def _site_grid(site: Site, *, buffer: float = 0.0) -> tuple[Grid, Any]:
    """:func:`xembed.grid.target_grid` of a site, its errors prefixed with the site's id."""
    try:
        return target_grid(site.geometry, buffer=buffer)
    except SiteError as err:
        raise SiteError(f"site {site.id!r}: {err}") from err


def _footprint_hint(site: Site, mirror: str) -> str | None:
    """Why a site outside a mirror's footprint may be there, or None if it touches it.

    Numbers alone cannot tell a (lat, lon) site from a (lon, lat) one when
    both values are valid longitudes and latitudes; the footprint can: if the
    site misses every file but its swapped twin lands on some, the axes are
    swapped. Otherwise a site outside the whole footprint is most often in
    the wrong CRS (a projected file declared EPSG:4326 was caught earlier).
    """
    from xembed.sources import cog

    footprints = cog.read_index(mirror)["footprint"].to_numpy()
    if shapely.intersects(footprints, site.geometry).any():
        return None  # the place is covered: the missing years are the problem
    swapped = shapely.transform(site.geometry, lambda xy: xy[:, ::-1])
    west, south, east, north = swapped.bounds
    if -180 <= west and east <= 180 and -90 <= south and north <= 90:
        if shapely.intersects(footprints, swapped).any():
            return (
                f"Site {site.id!r} lies outside every file, but with its x and y swapped it "
                "lies inside: its coordinates look like (lat, lon) pairs; give them in "
                "(lon, lat) order, e.g. shapely.ops.transform(lambda x, y: (y, x), geometry)"
            )
    return (
        f"Site {site.id!r} lies outside every file of the source: if it should be inside, "
        "check its CRS (xembed needs EPSG:4326 lon/lat; load_sites reprojects files that "
        "declare their CRS) and the lon/lat order of its coordinates"
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
) -> xr.Dataset:
    """Wrap a lazy ``(year, band, y, x)`` array in the cube schema.

    Every source calls this, so every source returns the same cube.

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
        # Lazy: a dask `where` against an in-memory mask.
        embeddings = embeddings.where(cov > 0)
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


def _open_exported(
    where: Any,
    years: int | Iterable[int] | None,
    *,
    root: Any,
    project: str | None,
    buffer: float,
    chunks: Mapping[str, int] | int | None,
) -> xr.Dataset:
    """A cube exported by xembed.export (Zarr store or NetCDF file), optionally some years."""
    from xembed import export

    if root is not None or project is not None or buffer:
        raise ValueError(
            f"{os.fspath(where)!r} is an exported cube: root=, project= and buffer= do not "
            "apply; open it as it is, or open the site from a source to change them"
        )
    cube = export.open_cube(where, chunks=chunks)
    if years is None:
        return cube
    wanted = _normalize_years(years)
    held = [int(y) for y in cube["year"].values]
    missing = [y for y in wanted if y not in held]
    if missing:
        raise ValueError(
            f"years {missing} are not in the exported cube {os.fspath(where)!r}; it holds {held}"
        )
    return cube.sel(year=list(wanted))


def open_embeddings(
    where: Site | Any,
    years: int | Iterable[int] | None = None,
    *,
    source: str | os.PathLike[str] = "sample",
    root: str | os.PathLike[str] | None = None,
    project: str | None = None,
    buffer: float = 0.0,
    clip: bool = True,
    chunks: Mapping[str, int] | int | None = None,
) -> xr.Dataset:
    """Open the embeddings of a site as a lazy ``(year, band, y, x)`` cube.

    Parameters
    ----------
    where : Site, shapely geometry, GeoJSON-like mapping or path
        The site, in EPSG:4326 (lon/lat), or the path of a cube exported by
        :mod:`xembed.export` (then ``years``, optional, picks some of its years).
    years : int or iterable of int
        Years to open (the collection starts in 2017), e.g. ``range(2018, 2025)``.
        Required unless ``where`` is an exported cube.
    source : {"sample", "cog", "ee"} or path
        ``"sample"``: the bundled demo mirror (generated on first use);
        ``"cog"``: the public mirror (``root`` overrides the default
        Source Cooperative bucket); ``"ee"``: Earth Engine through Xee
        (needs ``earthengine authenticate``); a path: a local mirror folder.
    root : str or path, optional
        Mirror location for ``source="cog"`` or ``"sample"``: a folder or an
        ``s3://``, ``gs://`` or ``https://`` prefix.
    project : str, optional
        Google Cloud project for ``source="ee"`` (else the one ``ee`` was
        initialised with).
    buffer : float
        Metres of context around the site's bounds (e.g. 500 for the
        original notebook's views).
    clip : bool
        Mask (NaN) pixels with no part inside the polygon. The ``coverage``
        variable is there either way.
    chunks : mapping or int, optional
        Dask chunks per dimension; an int sets ``y`` and ``x``. Default
        :data:`DEFAULT_CHUNKS`: all years and bands, 256 x 256 pixels.

    Returns
    -------
    xarray.Dataset
        ``embeddings(year, band, y, x)`` float32 (dask), ``coverage(y, x)``,
        the site's UTM CRS (``ds.rio.crs``) and attrs naming the source,
        the site and the licence. Nothing is read until computed.

    Raises
    ------
    ValueError
        For years outside the collection or the source (the message lists
        the available years), or bad chunks.
    xembed.errors.DataNotFoundError
        If the source has no files over the site. When the site misses the
        source's whole footprint the message says so: if the site with x and
        y swapped lands inside it, that its coordinates look like (lat, lon)
        pairs; else to check its CRS and lon/lat order.
    xembed.errors.SiteError
        If the site crosses the antimeridian, is wider than one UTM zone or
        reaches beyond 80°S/84°N (see :func:`xembed.grid.target_grid`), or
        covers no pixel at all (coverage 0 everywhere).
    xembed.errors.SourceError
        For an unknown source or a malformed mirror.

    Examples
    --------
    >>> import xembed
    >>> site = xembed.demo_sites()[0]
    >>> ds = xembed.open_embeddings(site, range(2018, 2021))
    >>> ds.embeddings.dims, ds.sizes["year"], ds.sizes["band"]
    (('year', 'band', 'y', 'x'), 3, 64)
    >>> ds.rio.crs.to_epsg()
    32722
    """
    from xembed import export
    from xembed.sources import cog

    if export.is_cube_store(where):
        return _open_exported(
            where, years, root=root, project=project, buffer=buffer, chunks=chunks
        )
    if years is None:
        raise ValueError(
            "years is required (e.g. range(2018, 2025)) unless `where` is the path of an "
            "exported cube (a Zarr store or NetCDF file written by xembed.export)"
        )
    site = as_site(where)
    years = _normalize_years(years)
    chunk_spec = _normalize_chunks(chunks)
    if buffer < 0:
        raise ValueError(f"buffer must be >= 0 metres, got {buffer!r}")
    if source == "ee":
        if root is not None:
            raise ValueError(
                "root= is for mirror sources; source='ee' reads Earth Engine's collection "
                "(pass project= to choose the Cloud project)"
            )
        from xembed.sources.earthengine import open_embeddings_ee

        return open_embeddings_ee(
            site, years, project=project, buffer=buffer, clip=clip, chunks=chunks
        )
    if project is not None:
        raise ValueError(f"project= is only for source='ee', not source={source!r}")
    kind, mirror = _mirror_source(source, root, years)
    grid, geometry = _site_grid(site, buffer=buffer)
    try:
        plan = cog.plan_mosaic(mirror, grid, years)
    except DataNotFoundError as err:
        hint = _footprint_hint(site, mirror)
        if hint is None:
            raise
        raise DataNotFoundError(f"{err}. {hint}") from err
    reader = cog.MosaicReader(grid, years, plan)
    data = lazy_array(reader, _chunk_sizes(chunk_spec, reader.shape))
    return build_cube(
        data,
        grid,
        geometry,
        years,
        site=site,
        clip=clip,
        attrs={"source": kind, "source_root": mirror, "buffer_m": float(buffer)},
    )
