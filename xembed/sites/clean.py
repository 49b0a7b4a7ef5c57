"""Cleaning the values of a site: ids, start years, geometries, and naming them in messages."""

from __future__ import annotations

import datetime as _dt
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import shapely
from shapely.geometry import GeometryCollection, MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from xembed._util import stacklevel
from xembed.errors import SiteError


def to_id(value: Any) -> int | str:
    """A site id as a plain ``int`` or ``str`` (numpy and integral floats accepted)."""
    if isinstance(value, (bool, np.bool_)):
        raise SiteError(f"site id {value!r} is a boolean; expected an int or a str")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        if math.isfinite(value) and float(value).is_integer():
            return int(float(value))
        raise SiteError(f"site id {value!r} is not a whole number; expected an int or a str")
    if isinstance(value, str):
        if "\x00" in value:
            # Refused, not warned: GDAL and every C string end the id there, so
            # outputs written from it would hold another id and mis-join.
            raise SiteError(
                f"site id {value!r} contains a NUL character ('\\x00'), at which GDAL and "
                f"files cut it (to {value.split(chr(0))[0]!r}); remove it from the id"
            )
        return str(value)  # also turns numpy.str_ into str
    raise SiteError(f"site id {value!r} is a {type(value).__name__}; expected an int or a str")


def check_distinct_as_text(ids: Iterable[int | str], where: str = "") -> None:
    """Refuse ids that differ only in type (``1`` and ``"1"``): outputs write ids as text.

    ``where`` (e.g. ``" in column 'rid' of sites.gpkg"``) follows the ids in the message.

    Examples
    --------
    >>> check_distinct_as_text([1, "2", 3])
    >>> check_distinct_as_text([1, "1"])
    Traceback (most recent call last):
    ...
    xembed.errors.SiteError: site ids 1 and '1' are the same as text (or repeated); ...
    """
    seen: dict[str, int | str] = {}
    for site_id in ids:
        key = str(site_id)
        if key in seen:
            raise SiteError(
                f"site ids {seen[key]!r} and {site_id!r}{where} are the same as text (or "
                "repeated); give every site its own id (load_sites(..., id_field=...) picks "
                "the column)"
            )
        seen[key] = site_id


def to_year(value: Any, site_id: int | str) -> int | None:
    """A start year as ``int`` or ``None``; pandas gives floats (2016.0) and NaN."""
    if is_missing(value):
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:  # years typed as text, e.g. in a spreadsheet-made file
            return int(value.strip())
        except ValueError:
            pass
    elif not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real):
        if float(value).is_integer():
            return int(float(value))
    raise SiteError(f"site {site_id!r}: start_year {value!r} is not a year; expected an int")


def clean_geometry(geom: Any, site_id: int | str) -> Polygon | MultiPolygon:
    """Check a site geometry and repair it if invalid (warning), in EPSG:4326."""
    if geom is None:
        raise SiteError(f"site {site_id!r} has no geometry; expected a Polygon or MultiPolygon")
    if not isinstance(geom, (Polygon, MultiPolygon)):
        raise SiteError(
            f"site {site_id!r}: geometry is a {getattr(geom, 'geom_type', type(geom).__name__)}; "
            "xembed needs a Polygon or MultiPolygon (buffer points/lines into areas first)"
        )
    if geom.is_empty:
        raise SiteError(f"site {site_id!r}: geometry is empty; expected a non-empty polygon")
    if geom.has_z:
        geom = shapely.force_2d(geom)  # elevation plays no part in pixel coverage
    problem = nonfinite_coordinates(geom)
    if problem:
        raise SiteError(f"site {site_id!r}: {problem}")
    xmin, ymin, xmax, ymax = geom.bounds
    if not (-180 <= xmin <= xmax <= 180 and -90 <= ymin <= ymax <= 90):
        raise SiteError(
            f"site {site_id!r}: coordinates {geom.bounds} are not EPSG:4326 lon/lat: "
            + NOT_LONLAT[not_lonlat_kind(xmin, ymin, xmax, ymax)]
        )
    if geom.is_valid:
        return geom
    reason = shapely.is_valid_reason(geom)
    repaired = polygonal_part(shapely.make_valid(geom))
    if repaired is None:
        raise SiteError(
            f"site {site_id!r}: invalid geometry ({reason}) has no area left after "
            "shapely.make_valid (it collapses to lines or points); fix its vertices so that "
            "it encloses an area, or drop the site"
        )
    warnings.warn(
        f"site {site_id!r}: invalid geometry ({reason}) repaired with shapely.make_valid; "
        "check the result, or fix the polygon in the site file to silence this warning",
        UserWarning,
        stacklevel=stacklevel(),
    )
    return repaired


def nonfinite_coordinates(geom: BaseGeometry) -> str | None:
    """What is wrong with a geometry holding NaN or infinite coordinates, else None.

    GEOS fails on such vertices with an obscure ``GEOSException``.

    Examples
    --------
    >>> from shapely.geometry import box
    >>> nonfinite_coordinates(box(0, 0, 1, 1)) is None
    True
    >>> nonfinite_coordinates(shapely.Polygon([(0, 0), (1, float("inf")), (1, 1)]))[:38]
    'coordinates contain infinite values (a'
    """
    coords = shapely.get_coordinates(geom)
    if np.isfinite(coords).all():
        return None
    kind = "NaN" if np.isnan(coords).any() else "infinite values"
    return (
        f"coordinates contain {kind} (a vertex without a value: an empty cell or a failed "
        "computation where the polygon was made); fix or remove that vertex"
    )


#: What coordinates that are not lon/lat look like, and the fix (see not_lonlat_kind).
NOT_LONLAT = {
    "swapped": (
        "latitudes beyond ±90 whose longitudes would all be valid latitudes: the coordinates "
        "look swapped, (lat, lon) instead of (lon, lat); swap them, e.g. "
        "shapely.transform(geometry, lambda xy: xy[:, ::-1]), or for a GeoDataFrame "
        "gdf.geometry = shapely.transform(gdf.geometry, lambda xy: xy[:, ::-1])"
    ),
    "0-360": (
        "longitudes beyond 180 with valid latitudes look like 0..360 degree longitudes; "
        "subtract 360 from longitudes above 180, and split a site that crosses the "
        "antimeridian (180 degrees) into one part on each side"
    ),
    "projected": (
        "they look projected (metres); reproject them to EPSG:4326, e.g. with "
        "GeoSeries.set_crs(<their CRS>).to_crs('EPSG:4326') (or load_sites on a GeoDataFrame "
        "with the right CRS, which reprojects)"
    ),
}


def not_lonlat_kind(xmin: float, ymin: float, xmax: float, ymax: float) -> str:
    """Why bounds beyond +-180/+-90 are not lon/lat: a key of :data:`NOT_LONLAT`.

    Only what the numbers prove: latitudes past 90 whose x values are all
    valid latitudes are (lat, lon) pairs; longitudes in (180, 360] with valid
    latitudes are 0..360 longitudes; anything larger is metres. A (lat, lon)
    site whose longitude is within +-90 looks like valid lon/lat here: it is
    caught when it falls outside a source's footprint (``open_embeddings``).
    """
    if max(abs(xmin), abs(xmax)) <= 90 and max(abs(ymin), abs(ymax)) <= 180:
        return "swapped"
    if -180 <= xmin and xmax <= 360 and max(abs(ymin), abs(ymax)) <= 90:
        return "0-360"
    return "projected"


def polygonal_part(geom: BaseGeometry) -> Polygon | MultiPolygon | None:
    """The areal part of make_valid's output (which may add lines and points)."""
    if isinstance(geom, (Polygon, MultiPolygon)):
        return None if geom.is_empty else geom
    if isinstance(geom, GeometryCollection):
        parts = [g for g in geom.geoms if isinstance(g, (Polygon, MultiPolygon)) and not g.is_empty]
        if parts:
            merged = shapely.union_all(parts)
            if isinstance(merged, (Polygon, MultiPolygon)) and not merged.is_empty:
                return merged
    return None


def py_scalar(value: Any) -> Any:
    """A plain Python value for a properties dict (no numpy/pandas scalars, NaN -> None)."""
    import pandas as pd

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple, dict, set)):
        return value
    if is_missing(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, pd.Timedelta):
        return value.to_pytimedelta()
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).to_pydatetime()
    if isinstance(value, np.generic):
        return value.item()
    return value


def is_missing(value: Any) -> bool:
    """None, NaN, pandas NA or NaT (scalars only)."""
    import pandas as pd

    if value is None:
        return True
    if isinstance(value, (str, bytes, _dt.date, list, tuple, dict, set, np.ndarray)):
        return value is pd.NaT
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def is_geopandas(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "geopandas"


def name_ids(ids: Sequence[Any], one: str, many: str, fmt: Callable[[Any], str] = repr) -> str:
    """``site 3 has`` / ``sites 3, 4 have``: messages that read right for one or many."""
    if len(ids) == 1:
        return f"site {fmt(ids[0])} {one}"
    return f"sites {name_list(ids, fmt)} {many}"


def name_list(items: Sequence[Any], fmt: Callable[[Any], str] = repr) -> str:
    shown = ", ".join(fmt(i) for i in items[:MAX_NAMED])
    more = f", ... ({len(items)} in all)" if len(items) > MAX_NAMED else ""
    return shown + more


MAX_NAMED = 10  # ids listed in one message before "..."
