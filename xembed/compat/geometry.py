"""The notebook's geometry: shapely in EPSG:4326 with Earth Engine's metre-based calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from xembed import sites as _sites


class _Bounds(tuple[float, ...]):
    """``(minx, miny, maxx, maxy)`` as shapely gives it; calling it is Earth Engine's bounds().

    So ``geometry.bounds`` still unpacks and compares as shapely's tuple,
    and ``geometry.bounds()`` returns the bounding rectangle as an
    :class:`EEGeometry`.
    """

    __slots__ = ()

    def __call__(self, maxError: Any = None, proj: Any = None, geodesics: Any = None) -> EEGeometry:
        if proj is not None:
            raise ValueError(
                "bounds(proj=...) is not supported: the rectangle is in EPSG:4326 lon/lat; "
                "drop proj="
            )
        if not all(np.isfinite(self)):
            raise ValueError("an empty geometry has no bounds")
        return EEGeometry(shapely.box(*self))


def unwrap(obj: Any) -> Any:
    return obj._geom if isinstance(obj, EEGeometry) else obj


class EEGeometry:
    """A shapely geometry in EPSG:4326 that also answers Earth Engine's metre-based calls.

    The notebook calls ``site.geometry.buffer(500).bounds()`` on an Earth
    Engine geometry: a 500 **metre** buffer, then its bounding rectangle.
    On a shapely polygon in lon/lat that would be a 500 *degree* buffer,
    and ``bounds`` is a tuple, not a method. An ``EEGeometry`` wraps the
    shapely geometry and changes exactly two things:

    - :meth:`buffer` takes metres (the buffer is made in the geometry's UTM
      zone and brought back to lon/lat);
    - :attr:`bounds` is shapely's tuple, which can also be *called*:
      ``geometry.bounds()`` is the rectangle, as an ``EEGeometry``.

    Every other attribute is the shapely geometry's (``.wkt``, ``.area`` in
    square degrees, ``.centroid``, ``.intersects(other)`` ...), and it has
    ``__geo_interface__``, so xembed, ``shapely.geometry.shape`` and
    anything else that reads GeoJSON-like objects (geopandas too) take it;
    its own shapely methods accept ``EEGeometry`` arguments. What it is
    *not* is a ``shapely.Geometry`` instance: ``isinstance`` checks,
    shapely's functions (``shapely.intersection(a, b)``) and methods of
    other geometries (``polygon.intersects(site.geometry)``) need the plain
    object, :attr:`shapely` (``site.geometry.shapely``), or sites from
    :func:`xembed.load_sites`.

    Parameters
    ----------
    geometry : shapely geometry, EEGeometry or GeoJSON-like
        In EPSG:4326 longitude/latitude.

    Examples
    --------
    >>> from shapely.geometry import box
    >>> g = EEGeometry(box(-48.01, -22.61, -48.0, -22.6))
    >>> g.bounds  # shapely's tuple
    (-48.01, -22.61, -48.0, -22.6)
    >>> rect = g.buffer(500).bounds()  # Earth Engine's calls, in metres
    >>> rect
    EEGeometry(POLYGON ((-47.995141 -22.614512, -47.995141 -22.595488, -48.014859 -22.595488...)
    >>> from xembed.grid import project  # check the distance in metres, in UTM 22S
    >>> near, far = (project(x, "EPSG:4326", "EPSG:32722") for x in (g, g.buffer(500)))
    >>> round(far.hausdorff_distance(near))
    500
    >>> g.geom_type, g.shapely.geom_type
    ('Polygon', 'Polygon')
    """

    __slots__ = ("_geom",)
    _geom: BaseGeometry

    def __init__(self, geometry: Any) -> None:
        geometry = unwrap(geometry)
        if not isinstance(geometry, BaseGeometry):
            geo = getattr(geometry, "__geo_interface__", geometry)
            if not isinstance(geo, Mapping):
                raise TypeError(
                    "EEGeometry wraps a shapely geometry (or a GeoJSON-like object) in EPSG:4326, "
                    f"got {type(geometry).__name__}"
                )
            if geo.get("type") == "Feature":
                geo = geo["geometry"]
            geometry = shapely.geometry.shape(geo)
        object.__setattr__(self, "_geom", geometry)

    @property
    def shapely(self) -> BaseGeometry:
        """The plain shapely geometry (EPSG:4326)."""
        return self._geom

    @property
    def __geo_interface__(self) -> dict[str, Any]:
        return dict(self._geom.__geo_interface__)

    @property
    def bounds(self) -> _Bounds:
        """``(minx, miny, maxx, maxy)``; call it (``bounds()``) for the rectangle geometry."""
        return _Bounds(self._geom.bounds)

    def buffer(self, distance: float, maxError: Any = None, proj: Any = None) -> EEGeometry:
        """Earth Engine's ``buffer``: grow (or shrink, if negative) by ``distance`` metres.

        The geometry is projected into its UTM zone (:func:`xembed.grid.utm_crs`),
        buffered with round joins (error under 1 m for a 500 m buffer) and
        projected back to EPSG:4326. ``maxError`` is accepted and ignored;
        ``proj`` (distances in another CRS) is not supported.

        Examples
        --------
        >>> import shapely
        >>> g = EEGeometry(shapely.Point(-48.0, -22.6).buffer(0.001))
        >>> g.buffer(100).area > g.area
        True
        """
        from xembed.grid import project, utm_crs

        if proj is not None:
            raise ValueError(
                "buffer(proj=...) is not supported: distances are metres, applied in the "
                "geometry's UTM zone; drop proj="
            )
        try:
            distance = float(distance)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"buffer distance must be a number of metres, got {distance!r}"
            ) from err
        crs = utm_crs(self._geom)
        local = project(self._geom, "EPSG:4326", crs)
        grown = local.buffer(distance, quad_segs=16)
        if grown.is_empty:
            return EEGeometry(grown)
        return EEGeometry(project(grown, crs, "EPSG:4326"))

    def __getattr__(self, name: str) -> Any:
        if name == "_geom":  # during unpickling, before __init__
            raise AttributeError(name)
        attr = getattr(self._geom, name)
        if callable(attr):
            # shapely methods (intersects, union...) get plain geometries as arguments.
            def call(*args: Any, **kwargs: Any) -> Any:
                return attr(*map(unwrap, args), **{k: unwrap(v) for k, v in kwargs.items()})

            call.__name__ = name
            call.__doc__ = attr.__doc__
            return call
        return attr

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("EEGeometry is immutable (as shapely geometries are)")

    def __eq__(self, other: object) -> bool:
        other = unwrap(other)
        return isinstance(other, BaseGeometry) and bool(self._geom == other)

    def __hash__(self) -> int:
        return hash(self._geom)

    def __reduce__(self) -> tuple[Any, ...]:
        return (EEGeometry, (self._geom,))

    def __repr__(self) -> str:
        wkt = shapely.to_wkt(self._geom, rounding_precision=6)
        return f"EEGeometry({wkt if len(wkt) <= 80 else wkt[:77] + '...'})"

    def __str__(self) -> str:
        return self._geom.wkt

    def _repr_svg_(self) -> str:
        return self._geom._repr_svg_()


def to_shapely(geometry: Any) -> BaseGeometry:
    """A plain shapely geometry (EPSG:4326) from the kinds the notebook passes around."""
    if isinstance(geometry, _sites.Site):
        geometry = geometry.geometry
    geometry = unwrap(geometry)
    if isinstance(geometry, BaseGeometry):
        return geometry
    return EEGeometry(geometry).shapely
