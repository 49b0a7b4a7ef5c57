"""``open_embeddings``: one entry point, one cube schema, whatever the source."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import shapely
import xarray as xr

from xembed.errors import DataNotFoundError, SourceError
from xembed.sites import Site, as_site
from xembed.sources.common import (
    DEFAULT_CHUNKS,
    normalize_years,
    site_cube,
    site_request,
)

__all__ = ["DEFAULT_CHUNKS", "SOURCES", "Source", "open_embeddings", "resolve_source"]

#: Names ``source=`` accepts (besides a path to a local mirror folder).
SOURCES = ("sample", "cog", "ee")


def is_source_path(source: Any) -> bool:
    """Whether ``source=`` names a mirror folder or URL rather than one of :data:`SOURCES`.

    Examples
    --------
    >>> is_source_path("sample"), is_source_path("/data/aef"), is_source_path("https://x/aef")
    (False, True, True)
    """
    return isinstance(source, os.PathLike) or (
        isinstance(source, str)
        and source not in SOURCES
        and (os.sep in source or "://" in source or os.path.isdir(source))
    )


def check_source_name(source: Any) -> None:
    """Raise :class:`~xembed.errors.SourceError` unless ``source=`` is a known name or a path."""
    if not is_source_path(source) and source not in SOURCES:
        raise SourceError(
            f"unknown source {source!r}; expected one of {list(SOURCES)} or the path of a "
            "local mirror folder (one holding aef_index.parquet)"
        )


@dataclass(frozen=True)
class Source:
    """Where the data comes from: a mirror folder/URL (``sample``, ``cog``) or Earth Engine."""

    kind: str  # "sample", "cog" or "ee"
    root: str | None  # the mirror's folder or URL (None for "ee")
    project: str | None  # the Cloud project (only for "ee")

    @property
    def is_mirror(self) -> bool:
        return self.kind != "ee"

    def describe(self) -> dict[str, Any]:
        return {"source": self.kind, "root": self.root, "project": self.project}


def resolve_source(
    source: str | os.PathLike[str] = "sample",
    *,
    root: str | os.PathLike[str] | None = None,
    project: str | None = None,
    years: tuple[int, ...] | None = None,
) -> Source:
    """The one parser of ``source=`` / ``root=`` / ``project=``, for every entry point.

    Parameters
    ----------
    source : {"sample", "cog", "ee"} or path
        A path (or URL) is a mirror folder, read like ``"cog"``.
    root, project
        As for :func:`open_embeddings`.
    years : tuple of int, optional
        When given, a mirror must hold every one of them.

    Raises
    ------
    xembed.errors.SourceError
        For an unknown source name.
    ValueError
        For ``root=`` with ``"ee"``, ``project=`` with a mirror, or years the
        mirror lacks (the message lists the available ones).

    Examples
    --------
    >>> resolve_source("cog", root="/data/aef")
    Source(kind='cog', root='/data/aef', project=None)
    >>> resolve_source("ee", project="my-project").describe()["project"]
    'my-project'
    """
    check_source_name(source)
    if source == "ee":
        if root is not None:
            raise ValueError(
                "root= is for mirror sources; source='ee' reads Earth Engine's collection "
                "(pass project= to choose the Cloud project)"
            )
        return Source("ee", None, project)
    if project is not None:
        raise ValueError(f"project= is only for source='ee', not source={source!r}")
    if is_source_path(source):
        kind, mirror = "cog", os.fspath(source)
    elif source == "sample":
        from xembed.sources import sample

        kind, mirror = "sample", str(root or sample.sample_root())
    else:
        from xembed.sources import cog

        kind, mirror = "cog", str(root or cog.DEFAULT_ROOT)
    if years is not None:
        from xembed.sources import cog

        available = cog.available_years(mirror, wanted=years)
        missing = [y for y in years if y not in available]
        if missing:
            raise ValueError(
                f"years {missing} are not in source {kind!r} ({mirror}); "
                f"available years: {available}"
            )
    return Source(kind, str(mirror), None)


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
                "(lon, lat) order, e.g. shapely.transform(geometry, lambda xy: xy[:, ::-1])"
            )
    return (
        f"Site {site.id!r} lies outside every file of the source: if it should be inside, "
        "check its CRS (xembed needs EPSG:4326 lon/lat; load_sites reprojects files that "
        "declare their CRS) and the lon/lat order of its coordinates"
    )


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
    wanted = normalize_years(years)
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
    id_field: str | None = None,
) -> xr.Dataset:
    """Open the embeddings of a site as a lazy ``(year, band, y, x)`` cube.

    Parameters
    ----------
    where : Site, shapely geometry, GeoJSON-like mapping, GeoDataFrame or path
        The site, in EPSG:4326 (lon/lat); a site file (GeoJSON, GeoPackage,
        Shapefile) or GeoDataFrame holding exactly one site, in any CRS it
        declares (read as :func:`xembed.load_sites` does; use that for
        several); or the path of a cube exported by :mod:`xembed.export`
        (then ``years``, optional, picks some of its years).
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
        Metres of context around the site (e.g. 500 for a view of its
        surroundings): the grid covers the site's bounds widened by it.
    clip : bool
        Mask (NaN) pixels with no part inside the polygon, grown by
        ``buffer`` metres when there is one (so the context stays). The
        ``coverage`` variable is there either way, and is always the site's
        own (0 in the buffer).
    chunks : mapping or int, optional
        Dask chunks per dimension; an int sets ``y`` and ``x``. Default
        :data:`DEFAULT_CHUNKS`: all years and bands, 256 x 256 pixels.
    id_field : str, optional
        Column holding the site id when ``where`` is a site file or
        GeoDataFrame (default: its named index, else ``rid``/``id``/``site_id``).

    Returns
    -------
    xarray.Dataset
        ``embeddings(year, band, y, x)`` float32 (dask), ``coverage(y, x)``,
        the site's UTM CRS (``ds.rio.crs``) and attrs naming the source,
        the site and the licence. Nothing is read until computed.

    Raises
    ------
    FileNotFoundError
        If ``where`` is the path of a file or folder that does not exist.
    ValueError
        For years outside the collection or the source (the message lists
        the available years), or bad chunks.
    xembed.errors.DataNotFoundError
        If the source has no files over the site. When the site misses the
        source's whole footprint the message says so: if the site with x and
        y swapped lands inside it, that its coordinates look like (lat, lon)
        pairs; else to check its CRS and lon/lat order.
    xembed.errors.SiteError
        If a site file or frame holds more than one site (the message names
        :func:`xembed.load_sites` and the count); if the site crosses the
        antimeridian, is wider than one UTM zone or
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

    if export.is_cube_store(where):
        return _open_exported(
            where, years, root=root, project=project, buffer=buffer, chunks=chunks
        )
    _check_path_exists(where)
    if years is None:
        raise ValueError(
            "years is required (e.g. range(2018, 2025)) unless `where` is the path of an "
            "exported cube (a Zarr store or NetCDF file written by xembed.export)"
        )
    where = as_site(where, id_field=id_field)  # a file or frame: read here, warnings too
    if source == "ee":
        from xembed.sources.earthengine import open_embeddings_ee

        resolve_source(source, root=root, project=project)  # root= is refused
        return open_embeddings_ee(
            where, years, project=project, buffer=buffer, clip=clip, chunks=chunks
        )
    return _open_mirror(
        where, years, source, root=root, project=project, buffer=buffer, clip=clip, chunks=chunks
    )


def _check_path_exists(where: Any) -> None:
    """A missing local path is named, whether it was to be a site file or an export."""
    if not isinstance(where, (str, os.PathLike)):
        return
    path = os.fspath(where)
    if "://" not in path and not path.startswith("/vsi") and not os.path.exists(path):
        raise FileNotFoundError(
            errno.ENOENT,
            f"No site file at {path!r}; expected GeoJSON (.geojson/.json), GeoPackage (.gpkg) "
            "or Shapefile (.shp) holding one site, or the path of a cube exported by "
            "xembed.export (a Zarr store or NetCDF file)",
            path,
        )


def _open_mirror(
    where: Any,
    years: int | Iterable[int],
    source: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None,
    project: str | None,
    buffer: float,
    clip: bool,
    chunks: Mapping[str, int] | int | None,
) -> xr.Dataset:
    from xembed.sources import cog

    request = site_request(where, years, buffer=buffer, chunks=chunks)
    src = resolve_source(source, root=root, project=project, years=request.years)
    assert src.root is not None
    try:
        plan = cog.plan_mosaic(src.root, request.grid, request.years)
    except DataNotFoundError as err:
        hint = _footprint_hint(request.site, src.root)
        if hint is None:
            raise
        raise DataNotFoundError(f"{err}. {hint}") from err
    reader = cog.MosaicReader(request.grid, request.years, plan)
    return site_cube(
        request, reader, clip=clip, attrs={"source": src.kind, "source_root": src.root}
    )
