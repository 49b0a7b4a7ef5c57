"""Reading sites: files, GeoDataFrames, GeoJSON mappings and single site-like objects."""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from xembed._util import stacklevel
from xembed.errors import SiteError

if TYPE_CHECKING:
    import geopandas as gpd

from xembed.sites.clean import (
    NOT_LONLAT,
    check_distinct_as_text,
    is_geopandas,
    is_missing,
    name_ids,
    name_list,
    nonfinite_coordinates,
    not_lonlat_kind,
    py_scalar,
    to_id,
)
from xembed.sites.geojson import NO_RAW, RawGeoJSON, frame_from_geojson
from xembed.sites.site import Site

__all__ = ["as_site", "as_sites", "load_sites"]

#: Columns tried, in order, for the site id when ``id_field`` is not given.
ID_FIELDS: tuple[str, ...] = ("rid", "id", "site_id")

_FORMATS = "GeoJSON (.geojson/.json), GeoPackage (.gpkg) or Shapefile (.shp)"
_GEOJSON_DRIVERS = frozenset({"GeoJSON"})


def load_sites(
    source: str | os.PathLike[str] | gpd.GeoDataFrame | gpd.GeoSeries | Mapping[str, Any],
    *,
    id_field: str | None = None,
    start_year_field: str | None = "start_year",
    layer: str | int | None = None,
) -> list[Site]:
    """Load site polygons as :class:`Site` objects in EPSG:4326.

    Parameters
    ----------
    source : str, path-like, GeoDataFrame, GeoSeries or mapping
        A GeoJSON, GeoPackage or Shapefile path (anything GDAL reads), a
        GeoDataFrame/GeoSeries with a CRS, or a GeoJSON FeatureCollection
        mapping (or an object with ``__geo_interface__``). GeoJSON's legacy
        ``"crs"`` member (e.g. ``urn:ogc:def:crs:EPSG::5880``) is honoured;
        everything is reprojected to EPSG:4326.
    id_field : str, optional
        Column holding the site id. By default the GeoDataFrame's named
        index (``gdf.set_index("plot_id")``); else the first of ``rid``,
        ``id``, ``site_id``; then GeoJSON Feature ``"id"`` members; else the
        row number (0, 1, ...), with a warning.
    start_year_field : str or None, default "start_year"
        Column holding the start year; ``None`` for no start years. The
        default column may be absent (years are then ``None``).
    layer : str or int, optional
        Layer to read from a multi-layer file (e.g. a GeoPackage).

    Returns
    -------
    list of Site
        One per feature, in file order. Columns other than the geometry, id
        and start year become each site's ``properties``.

    Raises
    ------
    FileNotFoundError
        If a local path does not exist.
    SiteError
        If the file cannot be read, is empty, has no geometries (a CSV) or no
        CRS; if ids are missing, duplicated, equal as text (``1`` and
        ``"1"``) or hold a NUL character; if a feature has no geometry, a
        non-polygonal one or NaN coordinates; if lon/lat coordinates look
        projected.

    Warns
    -----
    UserWarning
        If no id column is found and sites are numbered by row: the message
        lists the columns, to pass the right one as ``id_field=``.

    Examples
    --------
    >>> import geopandas as gpd
    >>> from shapely.geometry import box
    >>> gdf = gpd.GeoDataFrame(
    ...     {"rid": [3107, 3108], "start_year": [2016, None], "state": ["SP", "SP"]},
    ...     geometry=[box(-48.0, -22.6, -47.99, -22.59), box(-47.9, -22.6, -47.89, -22.59)],
    ...     crs="EPSG:4326",
    ... )
    >>> sites = load_sites(gdf)
    >>> sites
    [Site(id=3107, start_year=2016), Site(id=3108, start_year=None)]
    >>> sites[0].properties
    {'state': 'SP'}

    A named index is the id, whatever its name:

    >>> [s.id for s in load_sites(gdf.rename(columns={"rid": "plot"}).set_index("plot"))]
    [3107, 3108]
    """
    loaded = _load(source, id_field=id_field, start_year_field=start_year_field, layer=layer)
    loaded.warn_if_numbered()
    return loaded.sites


@dataclasses.dataclass(frozen=True)
class _Loaded:
    """Sites read from a source, its name in messages, and why ids are row numbers."""

    sites: list[Site]
    what: str
    numbered: str | None  # the warning to give, when ids are row numbers

    def warn_if_numbered(self) -> None:
        if self.numbered is not None:
            warnings.warn(self.numbered, UserWarning, stacklevel=stacklevel())


def _load(
    source: Any,
    *,
    id_field: str | None = None,
    start_year_field: str | None = "start_year",
    layer: str | int | None = None,
) -> _Loaded:
    import geopandas as gpd

    raw = NO_RAW
    if isinstance(source, gpd.GeoDataFrame):
        gdf, what = source, "GeoDataFrame"
        if gdf.crs is None:
            raise SiteError(
                "the GeoDataFrame has no CRS, so its coordinates cannot be placed on "
                "Earth; set the CRS its coordinates are in, e.g. "
                "gdf = gdf.set_crs('EPSG:4326') for lon/lat"
            )
    elif isinstance(source, gpd.GeoSeries):
        if source.crs is None:
            raise SiteError(
                "the GeoSeries has no CRS; set the CRS its coordinates are in, e.g. "
                "s = s.set_crs('EPSG:4326') for lon/lat"
            )
        gdf, what = gpd.GeoDataFrame(geometry=source), "GeoSeries"
    elif isinstance(source, (str, os.PathLike)):
        gdf, raw = _read_file(source, layer)
        what = str(source)
    elif isinstance(source, Mapping) or hasattr(source, "__geo_interface__"):
        mapping = source if isinstance(source, Mapping) else source.__geo_interface__
        what = "GeoJSON mapping"
        gdf, features = frame_from_geojson(mapping, what)
        raw = RawGeoJSON(lambda: features)
    else:
        raise TypeError(
            "load_sites expects a path to a site file, a GeoDataFrame/GeoSeries or a GeoJSON "
            f"FeatureCollection mapping, got {type(source).__name__}"
        )
    if len(gdf) == 0:
        where = (
            "check that it is the right file, or pass layer= to read another layer"
            if isinstance(source, (str, os.PathLike))
            else "pass a non-empty collection"
        )
        raise SiteError(f"{what} contains no features; expected at least one site polygon: {where}")
    return _sites_from_frame(
        gdf, what=what, id_field=id_field, start_year_field=start_year_field, raw=raw
    )


def as_site(where: Any, *, id: int | str | None = None, id_field: str | None = None) -> Site:
    """Turn one site-like object into a :class:`Site`.

    Parameters
    ----------
    where : Site, shapely Polygon/MultiPolygon, mapping, GeoDataFrame or path
        A :class:`Site` (returned as is); a shapely geometry in EPSG:4326; a
        GeoJSON geometry, Feature or single-feature FeatureCollection mapping
        (or anything with ``__geo_interface__``), in EPSG:4326 unless it has a
        legacy ``"crs"`` member; a one-row GeoDataFrame/GeoSeries; or the
        path of a site file holding one site.
    id : int or str, optional
        Id to give the site. Defaults to the id :func:`load_sites` would pick
        (a named index, properties ``rid``/``id``/``site_id``, then the
        Feature ``"id"``), or ``0`` for a bare geometry.
    id_field : str, optional
        Column (property) holding the id, for a file, frame or Feature.

    Returns
    -------
    Site

    Raises
    ------
    FileNotFoundError
        If ``where`` is the path of a file that does not exist.
    SiteError
        If the geometry is unusable or ``where`` holds more than one site
        (the message says to use :func:`load_sites`).
    TypeError
        If ``where`` is none of the above.

    Warns
    -----
    UserWarning
        If a file, frame or Feature has no id and the site is numbered 0
        (not for a bare geometry, which has nowhere to hold one).

    Examples
    --------
    >>> from shapely.geometry import box
    >>> as_site(box(-48.0, -22.6, -47.99, -22.59))
    Site(id=0, start_year=None)
    >>> as_site(
    ...     {
    ...         "type": "Feature",
    ...         "id": "plot-a",
    ...         "properties": {"start_year": 2019},
    ...         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
    ...     }
    ... )
    Site(id='plot-a', start_year=2019)
    """
    if isinstance(where, Site):
        if id is None or to_id(id) == where.id:
            return where
        return dataclasses.replace(where, id=id)
    if isinstance(where, BaseGeometry):
        return Site(id=0 if id is None else id, start_year=None, geometry=where)
    if (
        isinstance(where, (str, os.PathLike, Mapping))
        or is_geopandas(where)
        or hasattr(where, "__geo_interface__")
    ):
        loaded = _load(where, id_field=id_field)
        if len(loaded.sites) != 1:
            raise SiteError(
                f"{loaded.what} holds {len(loaded.sites)} sites, but one site is expected here "
                "(as_site, open_embeddings); read them all with xembed.load_sites and pick one, "
                "e.g. xembed.load_sites(...)[0], or open each in turn (xembed.extract "
                "tabulates many)"
            )
        if id is not None:
            return dataclasses.replace(loaded.sites[0], id=id)
        if not _is_bare_geometry(where):
            loaded.warn_if_numbered()
        return loaded.sites[0]
    raise TypeError(
        "as_site expects a Site, a shapely Polygon/MultiPolygon, a GeoJSON geometry or "
        "Feature mapping, an object with __geo_interface__, a one-row GeoDataFrame or the "
        f"path of a site file; got {type(where).__name__}"
    )


def _is_bare_geometry(where: Any) -> bool:
    """A GeoJSON geometry (no Feature): it has no attributes an id could be in."""
    if not isinstance(where, Mapping) and hasattr(where, "__geo_interface__"):
        where = where.__geo_interface__
    return isinstance(where, Mapping) and where.get("type") not in ("Feature", "FeatureCollection")


def as_sites(sites: Any, *, id_field: str | None = None) -> list[Site]:
    """Turn a collection of sites into a list of :class:`Site`.

    Parameters
    ----------
    sites : path, GeoDataFrame/GeoSeries, FeatureCollection, Site, geometry or iterable
        A file or frame (read by :func:`load_sites`), one site, or an iterable
        of site-like objects (each read by :func:`as_site`). Features and
        Sites keep their own ids; bare geometries are numbered by position.
    id_field : str, optional
        Column (property) holding the ids, for files, frames and Features.

    Examples
    --------
    >>> from shapely.geometry import box
    >>> as_sites([box(0, 0, 1, 1), box(1, 0, 2, 1)])
    [Site(id=0, start_year=None), Site(id=1, start_year=None)]
    """
    if isinstance(sites, (str, os.PathLike)) or is_geopandas(sites):
        return load_sites(sites, id_field=id_field)
    if isinstance(sites, (Site, BaseGeometry)):
        return [as_site(sites)]
    if isinstance(sites, Mapping) and sites.get("type") == "FeatureCollection":
        return load_sites(sites, id_field=id_field)
    out = []
    for i, site in enumerate(sites):
        props = site.get("properties") or {} if isinstance(site, Mapping) else {}
        fields = ID_FIELDS if id_field is None else (id_field,)
        has_id = hasattr(site, "id") or (
            isinstance(site, Mapping)
            and (site.get("id") is not None or any(k in props for k in fields))
        )
        out.append(as_site(site, id_field=id_field) if has_id else as_site(site, id=i))
    return out


# --------------------------------------------------------------------------- readers


def _read_file(
    source: str | os.PathLike[str], layer: str | int | None
) -> tuple[gpd.GeoDataFrame, RawGeoJSON]:
    """Read a vector file with GDAL, plus a lazy reader of its GeoJSON Features."""
    import geopandas as gpd
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    path = os.fspath(source)
    # URLs and GDAL virtual paths cannot be checked locally; GDAL reports them.
    is_local = "://" not in path and not path.startswith("/vsi")
    if is_local and not os.path.exists(path):
        raise FileNotFoundError(
            errno.ENOENT, f"No site file at {path!r}; expected {_FORMATS}", path
        )
    if is_local and os.path.isfile(path) and os.path.getsize(path) == 0:
        raise SiteError(
            f"site file {path!r} is empty (0 bytes); expected {_FORMATS} holding site "
            "polygons: write the file again (was it saved completely?)"
        )
    try:
        driver = pyogrio.read_info(path, layer=layer)["driver"]
        with warnings.catch_warnings():
            # GDAL renumbers repeated GeoJSON Feature ids; RawGeoJSON reads the real ones.
            warnings.filterwarnings("ignore", "Several features with id", RuntimeWarning)
            # NaN coordinates: shapely warns; load_sites refuses them, naming the site.
            warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
            gdf = gpd.read_file(path, layer=layer, engine="pyogrio")
    except (DataSourceError, DataLayerError) as err:
        raise SiteError(
            f"cannot read sites from {path!r}: {str(err).rstrip('.')}. xembed reads {_FORMATS}, "
            "or anything GDAL/geopandas reads (pass a GeoDataFrame)"
        ) from err
    if not isinstance(gdf, gpd.GeoDataFrame):
        raise SiteError(_no_geometry_message(path, list(gdf.columns)))
    if gdf.crs is None:
        raise SiteError(
            f"{path!r} declares no CRS, so its coordinates cannot be placed on Earth "
            "(a Shapefile without its .prj?); read it with geopandas.read_file, "
            "set the CRS with gdf.set_crs(...) and pass the GeoDataFrame"
        )

    @functools.cache
    def text() -> str | None:
        if driver not in _GEOJSON_DRIVERS or not is_local or layer not in (None, 0):
            return None
        try:
            with open(path, encoding="utf-8-sig") as f:
                return f.read()
        except (OSError, ValueError):
            return None

    @functools.cache
    def features() -> list[Any] | None:
        try:
            found = json.loads(text() or "null").get("features")
        except (ValueError, AttributeError):
            return None
        return found if isinstance(found, list) and len(found) == len(gdf) else None

    # JSON writes NUL as \u0000 (a raw NUL is not valid JSON).
    return gdf, RawGeoJSON(features, lambda: "\\u0000" in (text() or ""))


def _no_geometry_message(path: str, columns: list[Any]) -> str:
    """What to do with a table GDAL read without geometries (a CSV, a spreadsheet)."""
    wkt = next(
        (c for c in columns if str(c).lower() in ("geometry", "wkt", "geom", "the_geom")), None
    )
    if wkt is not None:
        how = (
            f"its column {wkt!r} looks like WKT: df = pd.read_csv(path); gdf = gpd.GeoDataFrame("
            f"df, geometry=gpd.GeoSeries.from_wkt(df.pop({wkt!r})), crs='EPSG:4326') (give the "
            "CRS its coordinates are in), then load_sites(gdf)"
        )
    else:
        how = (
            f"its columns are {columns}: save the sites as {_FORMATS}, or build a GeoDataFrame "
            "with geopandas and pass it"
        )
    return (
        f"{path!r} has no geometries GDAL can read (a CSV table?); xembed needs polygons with "
        f"a CRS: {how}"
    )


# --------------------------------------------------------------------------- frame -> sites


def _sites_from_frame(
    gdf: gpd.GeoDataFrame,
    *,
    what: str,
    id_field: str | None,
    start_year_field: str | None,
    raw: RawGeoJSON,
) -> _Loaded:
    """Validate a GeoDataFrame with a CRS and turn its rows into Sites."""
    from geopandas.array import GeometryDtype

    # A named index (gdf.set_index("plot_id")) is the id the user chose.
    index_name = gdf.index.name if gdf.index.nlevels == 1 else None
    named = [n for n in gdf.index.names if n is not None and n not in gdf.columns]
    if named:
        gdf = gdf.reset_index(level=named)
    columns = [c for c in gdf.columns if c != gdf.geometry.name]

    year_col = start_year_field if start_year_field in columns else None
    if start_year_field not in (None, "start_year") and year_col is None:
        raise SiteError(
            f"start_year_field {start_year_field!r} is not a column of {what}; "
            f"available columns: {columns}"
        )
    ids, id_col, numbered = _site_ids(gdf, columns, id_field, index_name, year_col, what, raw)
    geoms = _checked_geometries(gdf, ids, what)

    years = gdf[year_col].tolist() if year_col is not None else [None] * len(gdf)
    prop_cols = [
        c
        for c in columns
        if c not in (id_col, year_col) and not isinstance(gdf[c].dtype, GeometryDtype)
    ]
    records = gdf[prop_cols].to_dict("records") if prop_cols else [{}] * len(gdf)
    sites = [
        Site(
            id=site_id,
            start_year=year,
            geometry=geom,
            properties={str(k): py_scalar(v) for k, v in rec.items()},
        )
        for site_id, year, geom, rec in zip(ids, years, geoms, records, strict=True)
    ]
    return _Loaded(sites, what, numbered)


def _site_ids(
    gdf: gpd.GeoDataFrame,
    columns: list[Hashable],
    id_field: str | None,
    index_name: Hashable | None,
    year_col: Hashable | None,
    what: str,
    raw: RawGeoJSON,
) -> tuple[list[int | str], Hashable | None, str | None]:
    """The ids, the column they come from, and the warning to give if they are row numbers."""
    if id_field is not None:
        if id_field not in columns:
            raise SiteError(
                f"id_field {id_field!r} is not a column of {what}; available columns: {columns}"
            )
        id_col: Hashable | None = id_field
    elif index_name is not None:
        id_col = index_name
    else:
        id_col = next((c for c in ID_FIELDS if c in columns), None)
    if id_col is not None:
        raw.check_ids(id_col, what)
        return _normalise_ids(gdf[id_col].tolist(), id_col, what), id_col, None
    feature_ids = raw.feature_ids()
    if feature_ids is not None:
        return _normalise_ids(feature_ids, None, what), None, None
    candidates = [c for c in columns if c != year_col]
    if candidates:
        fix = (
            f"its columns are {columns}: pass id_field= naming the column that holds the ids, "
            f"e.g. load_sites(..., id_field={str(candidates[0])!r}), so results join back to "
            "your data"
        )
    else:
        fix = (
            f"it has no columns but the geometry{' and start years' if columns else ''}: give "
            "the sites ids (an id column, a named index or GeoJSON Feature 'id' members) if "
            "results must join back to other data"
        )
    numbered = (
        f"{what} has no site ids (no column {', '.join(ID_FIELDS[:-1])} or {ID_FIELDS[-1]}, "
        "no named index, no GeoJSON Feature 'id'), so its sites are numbered by row: "
        f"{name_list(list(range(len(gdf))))}; {fix}"
    )
    return list(range(len(gdf))), None, numbered


def _checked_geometries(gdf: gpd.GeoDataFrame, ids: Sequence[Any], what: str) -> Any:
    """The frame's polygons in EPSG:4326, refusing missing, non-polygonal and NaN ones."""
    geoms = gdf.geometry
    missing = [i for i, g in zip(ids, geoms, strict=True) if g is None or g.is_empty]
    if missing:
        raise SiteError(
            f"{what}: {name_ids(missing, 'has', 'have')} no geometry (null or empty); "
            "drop them first, e.g. gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]"
        )
    wrong = [
        f"{i!r} ({g.geom_type})"
        for i, g in zip(ids, geoms, strict=True)
        if not isinstance(g, (Polygon, MultiPolygon))
    ]
    if wrong:
        raise SiteError(
            f"{what}: {name_ids(wrong, 'is not a polygon', 'are not polygons', str)}; "
            "xembed needs Polygon or MultiPolygon site boundaries (buffer points/lines into "
            "areas first)"
        )
    # NaN/inf vertices are refused before GEOS sees them (reprojection, validity).
    coords, rows = shapely.get_coordinates(np.asarray(geoms), return_index=True)
    bad_rows = rows[~np.isfinite(coords).all(axis=1)]
    if bad_rows.size:
        row = int(bad_rows[0])
        raise SiteError(f"{what}: site {ids[row]!r}: {nonfinite_coordinates(geoms.iloc[row])}")
    _check_lonlat(gdf, ids, what)
    return geoms if gdf.crs.equals("EPSG:4326") else gdf.to_crs("EPSG:4326").geometry


def _check_lonlat(gdf: gpd.GeoDataFrame, ids: Sequence[Any], what: str) -> None:
    """Refuse coordinates beyond ±180/±90 in a lon/lat frame, saying what they look like."""
    if not gdf.crs.is_geographic:
        return
    bounds = gdf.geometry.bounds.to_numpy()
    beyond_lon = (np.abs(bounds[:, [0, 2]]) > 180).any(axis=1)
    outside = beyond_lon | (np.abs(bounds[:, [1, 3]]) > 90).any(axis=1)
    if outside.any():
        bad = [i for i, o in zip(ids, outside, strict=True) if o]
        rows = bounds[outside]
        extent = (rows[:, 0].min(), rows[:, 1].min(), rows[:, 2].max(), rows[:, 3].max())
        kind = not_lonlat_kind(*extent)
        if kind == "projected":
            fix = (
                "they look projected (metres). Set the CRS they are really in, e.g. "
                "gdf = gdf.set_crs('EPSG:5880', allow_override=True) on the GeoDataFrame "
                "(read a file with geopandas.read_file first), then call load_sites(gdf)"
            )
        else:
            fix = NOT_LONLAT[kind]
        raise SiteError(
            f"{what} is declared {gdf.crs.to_string()} (lon/lat degrees) but "
            f"{name_ids(bad, 'has', 'have')} coordinates beyond ±180/±90: {fix}"
        )


def _normalise_ids(raw: Iterable[Any], column: Hashable | None, what: str) -> list[int | str]:
    source = f"column {column!r}" if column is not None else "GeoJSON Feature 'id'"
    source = f"{source} of {what}"
    ids: list[int | str] = []
    missing: list[int] = []
    for row, value in enumerate(raw):
        if is_missing(value):
            missing.append(row)
            continue
        try:
            ids.append(to_id(value))
        except SiteError as err:
            raise SiteError(f"row {row}: {err}") from None
    if missing:
        raise SiteError(
            f"{'row' if len(missing) == 1 else 'rows'} {name_list(missing)} "
            f"{'has' if len(missing) == 1 else 'have'} no site id in {source}; "
            "give every feature an id, or pass id_field= to use another column"
        )
    seen: dict[int | str, int] = {}
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
    duplicated = [i for i, n in seen.items() if n > 1]
    if duplicated:
        raise SiteError(
            f"duplicate site ids {name_list(duplicated)} in {source}; ids must be unique: "
            "renumber or drop the duplicates, or pass id_field= to use another column"
        )
    check_distinct_as_text(ids, f" in {source}")
    return ids
