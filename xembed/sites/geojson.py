"""GeoJSON mappings as GeoDataFrames, and what GDAL loses of a GeoJSON file's ids."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from shapely.errors import ShapelyError
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from xembed.errors import SiteError
from xembed.sites.clean import to_id

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = [
    "GEOJSON_TYPES",
    "NO_RAW",
    "RawGeoJSON",
    "feature_geometry",
    "frame_from_geojson",
    "legacy_crs",
]

#: The geometry ``type`` values of GeoJSON (RFC 7946).
GEOJSON_TYPES = frozenset(
    {
        "Point",
        "MultiPoint",
        "LineString",
        "MultiLineString",
        "Polygon",
        "MultiPolygon",
        "GeometryCollection",
    }
)


@dataclasses.dataclass(frozen=True)
class RawGeoJSON:
    """A source's GeoJSON Feature mappings (None if it has none), read lazily.

    GDAL loses what some ids hold: integer Feature ids become FIDs, renumbered
    when they repeat or mix with strings, and text is cut at a NUL character.
    """

    features: Callable[[], list[Any] | None]
    may_hold_nul: Callable[[], bool] = lambda: False

    def feature_ids(self) -> list[Any] | None:
        features = self.features()
        if features is None:
            return None
        ids = [feat.get("id") if isinstance(feat, Mapping) else None for feat in features]
        return None if all(i is None for i in ids) else ids

    def check_ids(self, column: Hashable, what: str) -> None:
        """Refuse ids GDAL cut at a NUL character (only the JSON still holds them)."""
        features = self.features() if self.may_hold_nul() else None
        for row, feat in enumerate(features or []):
            props = feat.get("properties") if isinstance(feat, Mapping) else None
            value = props.get(column) if isinstance(props, Mapping) else None
            if value is None and column == "id" and isinstance(feat, Mapping):
                value = feat.get("id")
            if isinstance(value, str):
                try:
                    to_id(value)
                except SiteError as err:
                    raise SiteError(f"{what}: row {row}: {err}") from None


#: What a source that is not GeoJSON holds of it: nothing.
NO_RAW = RawGeoJSON(lambda: None)


def frame_from_geojson(obj: Mapping[str, Any], what: str) -> tuple[gpd.GeoDataFrame, list[Any]]:
    """A GeoDataFrame (and its Features) from a GeoJSON geometry/Feature/FeatureCollection.

    ``what`` names the source in messages, which also name the feature.

    Examples
    --------
    >>> square = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
    >>> gdf, features = frame_from_geojson({"type": "Feature", "id": 7, "properties": {"a": 1},
    ...                                     "geometry": square}, "my mapping")
    >>> gdf["a"].tolist(), features[0]["id"], gdf.crs.to_string()
    ([1], 7, 'EPSG:4326')
    >>> frame_from_geojson({"type": "Feature", "properties": [1], "geometry": square}, "fc")
    Traceback (most recent call last):
    ...
    xembed.errors.SiteError: fc: feature 0: properties is a list; expected a JSON object ...
    """
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
    records: list[dict[str, Any]] = []
    for i, feat in enumerate(features):
        if not isinstance(feat, Mapping):
            raise SiteError(
                f"{what}: feature {i} is a {type(feat).__name__}, not a GeoJSON Feature mapping"
            )
        name = f"{what}: feature {i}" + (
            f" (id {feat['id']!r})" if feat.get("id") is not None else ""
        )
        geoms.append(feature_geometry(feat.get("geometry"), name))
        props = feat.get("properties")
        if props is not None and not isinstance(props, Mapping):
            raise SiteError(
                f"{name}: properties is a {type(props).__name__}; expected a JSON object "
                "(mapping) of attributes, or null"
            )
        records.append(dict(props or {}))
    # object dtype keeps Python values as given (no int -> float when a value is None).
    props_frame = pd.DataFrame(records, index=range(len(features)), dtype=object)
    geom_col = "_xembed_geometry"  # cannot clash with a "geometry" property
    gdf = gpd.GeoDataFrame(
        props_frame.assign(**{geom_col: gpd.GeoSeries(geoms, index=props_frame.index)}),
        geometry=geom_col,
        crs=legacy_crs(obj.get("crs")),
    )
    return gdf, features


def feature_geometry(geom: Any, name: str) -> BaseGeometry | None:
    """A Feature's shapely geometry (None when null), its errors naming the feature."""
    if not geom:
        return None
    kind = geom.get("type") if isinstance(geom, Mapping) else None
    if isinstance(kind, str) and kind not in GEOJSON_TYPES:
        raise SiteError(
            f"{name}: geometry type {kind!r} is not a GeoJSON geometry type; expected a "
            "Polygon or MultiPolygon (draw circles and other shapes as polygons)"
        )
    try:
        with warnings.catch_warnings():
            # NaN coordinates: shapely warns, and Site refuses them with a clear message.
            warnings.filterwarnings("ignore", "invalid value", RuntimeWarning)
            return shape(geom)
    except (ValueError, TypeError, AttributeError, KeyError, ShapelyError) as err:
        raise SiteError(f"{name}: malformed GeoJSON geometry ({err})") from err


def legacy_crs(crs: Any) -> Any:
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
