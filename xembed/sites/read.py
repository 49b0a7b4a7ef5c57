"""Reading sites: files, GeoDataFrames, GeoJSON mappings and single site-like objects."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from xembed.errors import SiteError

if TYPE_CHECKING:
    import geopandas as gpd

from xembed.sites.clean import (
    NOT_LONLAT,
    is_geopandas,
    is_missing,
    name_ids,
    name_list,
    not_lonlat_kind,
    py_scalar,
    to_id,
)
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
        Column holding the site id. By default the first of ``rid``, ``id``,
        ``site_id``; then GeoJSON Feature ``"id"`` members; then the row
        number (0, 1, ...). A named index of a GeoDataFrame counts as a column.
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
        If the file cannot be read, is empty or has no CRS; if ids are
        missing or duplicated; if a feature has no geometry or a
        non-polygonal one; if lon/lat coordinates look projected.

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
    """
    import geopandas as gpd

    feature_ids: Callable[[], list[Any] | None] = _no_feature_ids
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
        gdf, feature_ids = _read_file(source, layer)
        what = str(source)
    elif isinstance(source, Mapping) or hasattr(source, "__geo_interface__"):
        mapping = source if isinstance(source, Mapping) else source.__geo_interface__
        gdf, fids = _frame_from_geojson(mapping)
        feature_ids, what = (lambda: fids), "GeoJSON mapping"
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
        gdf,
        what=what,
        id_field=id_field,
        start_year_field=start_year_field,
        feature_ids=feature_ids,
    )


def as_site(where: Any, *, id: int | str | None = None) -> Site:
    """Turn one site-like object into a :class:`Site`.

    Parameters
    ----------
    where : Site, shapely Polygon/MultiPolygon, mapping or GeoDataFrame
        A :class:`Site` (returned as is); a shapely geometry in EPSG:4326; a
        GeoJSON geometry, Feature or single-feature FeatureCollection mapping
        (or anything with ``__geo_interface__``), in EPSG:4326 unless it has a
        legacy ``"crs"`` member; or a one-row GeoDataFrame/GeoSeries.
    id : int or str, optional
        Id to give the site. Defaults to the id :func:`load_sites` would pick
        (properties ``rid``/``id``/``site_id``, then the Feature ``"id"``), or
        ``0`` for a bare geometry.

    Returns
    -------
    Site

    Raises
    ------
    SiteError
        If the geometry is unusable or ``where`` holds more than one feature.
    TypeError
        If ``where`` is none of the above.

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
    if is_geopandas(where) or isinstance(where, Mapping) or hasattr(where, "__geo_interface__"):
        sites = load_sites(where)
        if len(sites) != 1:
            raise SiteError(
                f"as_site takes one site but got {len(sites)} features; use load_sites for several"
            )
        return sites[0] if id is None else dataclasses.replace(sites[0], id=id)
    raise TypeError(
        "as_site expects a Site, a shapely Polygon/MultiPolygon, a GeoJSON geometry or "
        f"Feature mapping, or an object with __geo_interface__; got {type(where).__name__}"
    )


def as_sites(sites: Any) -> list[Site]:
    """Turn a collection of sites into a list of :class:`Site`.

    Parameters
    ----------
    sites : path, GeoDataFrame/GeoSeries, FeatureCollection, Site, geometry or iterable
        A file or frame (read by :func:`load_sites`), one site, or an iterable
        of site-like objects (each read by :func:`as_site`). Features and
        Sites keep their own ids; bare geometries are numbered by position.

    Examples
    --------
    >>> from shapely.geometry import box
    >>> as_sites([box(0, 0, 1, 1), box(1, 0, 2, 1)])
    [Site(id=0, start_year=None), Site(id=1, start_year=None)]
    """
    if isinstance(sites, (str, os.PathLike)) or is_geopandas(sites):
        return load_sites(sites)
    if isinstance(sites, (Site, BaseGeometry)):
        return [as_site(sites)]
    if isinstance(sites, Mapping) and sites.get("type") == "FeatureCollection":
        return load_sites(sites)
    out = []
    for i, site in enumerate(sites):
        props = site.get("properties") or {} if isinstance(site, Mapping) else {}
        has_id = hasattr(site, "id") or (
            isinstance(site, Mapping)
            and (site.get("id") is not None or any(k in props for k in ID_FIELDS))
        )
        out.append(as_site(site) if has_id else as_site(site, id=i))
    return out


# --------------------------------------------------------------------------- readers


def _no_feature_ids() -> None:
    return None


def _read_file(
    source: str | os.PathLike[str], layer: str | int | None
) -> tuple[gpd.GeoDataFrame, Callable[[], list[Any] | None]]:
    """Read a vector file with GDAL, plus a lazy reader of GeoJSON Feature ids."""
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
            # GDAL renumbers repeated GeoJSON Feature ids; feature_ids() reads the real ones.
            warnings.filterwarnings("ignore", "Several features with id", RuntimeWarning)
            gdf = gpd.read_file(path, layer=layer, engine="pyogrio")
    except (DataSourceError, DataLayerError) as err:
        raise SiteError(
            f"cannot read sites from {path!r}: {str(err).rstrip('.')}. xembed reads {_FORMATS}, "
            "or anything GDAL/geopandas reads (pass a GeoDataFrame)"
        ) from err
    if gdf.crs is None:
        raise SiteError(
            f"{path!r} declares no CRS, so its coordinates cannot be placed on Earth "
            "(a Shapefile without its .prj?); read it with geopandas.read_file, "
            "set the CRS with gdf.set_crs(...) and pass the GeoDataFrame"
        )

    def feature_ids() -> list[Any] | None:
        # GDAL turns integer GeoJSON Feature ids into FIDs, which it renumbers
        # when they repeat or mix with strings; read them from the JSON itself.
        if driver not in _GEOJSON_DRIVERS or not is_local or layer not in (None, 0):
            return None
        try:
            with open(path, encoding="utf-8-sig") as f:
                features = json.load(f).get("features")
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(features, list) or len(features) != len(gdf):
            return None
        ids = [feat.get("id") if isinstance(feat, Mapping) else None for feat in features]
        return None if all(i is None for i in ids) else ids

    return gdf, feature_ids


def _frame_from_geojson(obj: Mapping[str, Any]) -> tuple[gpd.GeoDataFrame, list[Any] | None]:
    """A GeoDataFrame (and Feature ids) from a GeoJSON geometry/Feature/FeatureCollection."""
    import geopandas as gpd
    import pandas as pd

    kind = obj.get("type")
    if kind == "FeatureCollection":
        features = list(obj.get("features") or [])
    elif kind == "Feature":
        features = [obj]
    elif (isinstance(kind, str) and "coordinates" in obj) or kind == "GeometryCollection":
        features = [{"type": "Feature", "properties": {}, "geometry": obj}]
    else:
        raise SiteError(
            f"not a GeoJSON object (type={kind!r}); expected a geometry, a Feature or a "
            "FeatureCollection mapping"
        )
    geoms: list[BaseGeometry | None] = []
    for i, feat in enumerate(features):
        if not isinstance(feat, Mapping):
            raise SiteError(
                f"feature {i} is a {type(feat).__name__}, not a GeoJSON Feature mapping"
            )
        geom = feat.get("geometry")
        try:
            geoms.append(shape(geom) if geom else None)
        except (ValueError, TypeError, AttributeError, KeyError) as err:
            raise SiteError(f"feature {i}: malformed GeoJSON geometry ({err})") from err
    # object dtype keeps Python values as given (no int -> float when a value is None).
    props = pd.DataFrame(
        [dict(f.get("properties") or {}) for f in features],
        index=range(len(features)),
        dtype=object,
    )
    geom_col = "_xembed_geometry"  # cannot clash with a "geometry" property
    gdf = gpd.GeoDataFrame(
        props.assign(**{geom_col: gpd.GeoSeries(geoms, index=props.index)}),
        geometry=geom_col,
        crs=_legacy_crs(obj.get("crs")),
    )
    ids = [f.get("id") for f in features]
    return gdf, None if all(i is None for i in ids) else ids


def _legacy_crs(crs: Any) -> Any:
    """The CRS named by a GeoJSON 2008 ``"crs"`` member (EPSG:4326 when absent)."""
    import pyproj

    if crs is None:
        return "EPSG:4326"
    props = crs.get("properties") if isinstance(crs, Mapping) else None
    name = props.get("name") if isinstance(props, Mapping) else None
    if not isinstance(name, str) or crs.get("type") != "name":
        raise SiteError(
            f"unsupported GeoJSON 'crs' member {crs!r}; expected "
            "{'type': 'name', 'properties': {'name': 'urn:ogc:def:crs:EPSG::<code>'}}"
        )
    try:
        return pyproj.CRS.from_user_input(name)
    except pyproj.exceptions.CRSError as err:
        raise SiteError(f"unknown CRS {name!r} in the GeoJSON 'crs' member: {err}") from err


# --------------------------------------------------------------------------- frame -> sites


def _sites_from_frame(
    gdf: gpd.GeoDataFrame,
    *,
    what: str,
    id_field: str | None,
    start_year_field: str | None,
    feature_ids: Callable[[], list[Any] | None],
) -> list[Site]:
    """Validate a GeoDataFrame with a CRS and turn its rows into Sites."""
    from geopandas.array import GeometryDtype

    # A named index (gdf.set_index("rid")) is data the user expects to be usable.
    named = [n for n in gdf.index.names if n is not None and n not in gdf.columns]
    if named:
        gdf = gdf.reset_index(level=named)
    columns = [c for c in gdf.columns if c != gdf.geometry.name]

    id_col = _pick_id_column(columns, id_field, what)
    if id_col is not None:
        raw_ids: Sequence[Any] = gdf[id_col].tolist()
    else:
        raw_ids = feature_ids() or range(len(gdf))
    ids = _normalise_ids(raw_ids, id_col, what)

    year_col = start_year_field if start_year_field in columns else None
    if start_year_field not in (None, "start_year") and year_col is None:
        raise SiteError(
            f"start_year_field {start_year_field!r} is not a column of {what}; "
            f"available columns: {columns}"
        )

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
    _check_lonlat(gdf, ids, what)
    if not gdf.crs.equals("EPSG:4326"):
        geoms = gdf.to_crs("EPSG:4326").geometry

    years = gdf[year_col].tolist() if year_col is not None else [None] * len(gdf)
    prop_cols = [
        c
        for c in columns
        if c not in (id_col, year_col) and not isinstance(gdf[c].dtype, GeometryDtype)
    ]
    records = gdf[prop_cols].to_dict("records") if prop_cols else [{}] * len(gdf)
    return [
        Site(
            id=site_id,
            start_year=year,
            geometry=geom,
            properties={str(k): py_scalar(v) for k, v in rec.items()},
        )
        for site_id, year, geom, rec in zip(ids, years, geoms, records, strict=True)
    ]


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


def _pick_id_column(columns: list[Hashable], id_field: str | None, what: str) -> Hashable | None:
    if id_field is not None:
        if id_field not in columns:
            raise SiteError(
                f"id_field {id_field!r} is not a column of {what}; available columns: {columns}"
            )
        return id_field
    return next((c for c in ID_FIELDS if c in columns), None)


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
    return ids


# --------------------------------------------------------------------------- value cleaning


# --------------------------------------------------------------------------- helpers
