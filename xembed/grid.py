"""The target grid of a site: its UTM zone, a snapped 10 m window, and pixel coverage.

Every cube lives on the native AlphaEarth lattice: 10 m pixels in the site's
local UTM zone with edges on multiples of 10 m. :func:`target_grid` finds the
smallest such window around a polygon and :func:`coverage_fraction` gives the
exact fraction of each pixel inside it, which makes polygon means exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import affine
import numpy as np
import pyproj
import shapely

from xembed import _util
from xembed.errors import SiteError
from xembed.schema import PIXEL_SIZE

__all__ = [
    "MAX_LON_SPAN",
    "MAX_PIXELS",
    "UTM_NORTH",
    "UTM_SOUTH",
    "Grid",
    "coverage_fraction",
    "project",
    "target_grid",
    "utm_crs",
    "utm_zone_name",
]

# A bound this close (in pixels) to a pixel edge counts as on it: reprojection
# noise must not add an empty row or column.
_SNAP_TOL = 1e-9
# Coverage this close to 0 or 1 is 0 or 1: summing a row's boundary crossings
# leaves ~1e-13 of float residue in pixels that are fully outside or inside.
_COVER_TOL = 1e-9
# Cells per block of rows in coverage_fraction (a 1 MiB float64 buffer, cache-sized).
_BLOCK_CELLS = 1 << 17

#: Latitude range of UTM (degrees). Beyond it the poles need UPS (polar
#: stereographic) grids, which xembed does not build; the embeddings are
#: published by UTM zone (the mirror has one folder per zone, 1N..60S).
UTM_SOUTH, UTM_NORTH = -80.0, 84.0
#: Widest site :func:`target_grid` accepts, in degrees of longitude: one UTM zone.
MAX_LON_SPAN = 6.0
#: Most pixels :func:`target_grid` puts in one grid: one Earth Engine image
#: (16384 x 16384 px, 163.84 km square at 10 m); its coverage alone is 1 GiB.
MAX_PIXELS = 16384 * 16384


def _as_geometry(geometry: Any) -> shapely.Geometry:
    """A shapely geometry from a shapely geometry or anything with ``__geo_interface__``."""
    if isinstance(geometry, shapely.Geometry):
        return geometry
    if hasattr(geometry, "__geo_interface__"):
        return shapely.geometry.shape(geometry)
    raise SiteError(
        f"expected a shapely geometry or an object with __geo_interface__, got "
        f"{type(geometry).__name__}; pass e.g. shapely.Polygon(...) in lon/lat"
    )


def _lonlat_bounds(geometry: shapely.Geometry) -> tuple[float, float, float, float]:
    """The bounds of a lon/lat geometry, checked to be longitudes and latitudes."""
    west, south, east, north = geometry.bounds
    if not (-180.0 <= west <= east <= 180.0 and -90.0 <= south <= north <= 90.0):
        raise SiteError(
            f"bounds ({west:g}, {south:g}, {east:g}, {north:g}) are not longitudes/latitudes: "
            "the geometry looks projected or its axes swapped; reproject it to EPSG:4326 "
            "(lon, lat order) first"
        )
    return west, south, east, north


def _check_utm_latitudes(south: float, north: float) -> None:
    """Refuse sites beyond UTM's latitudes (80 S to 84 N): the poles need UPS."""
    if south < UTM_SOUTH or north > UTM_NORTH:
        worst = f"{north:g}°N" if north > UTM_NORTH else f"{-south:g}°S"
        raise SiteError(
            f"the site reaches {worst}, beyond the latitudes of UTM zones (80°S to 84°N): "
            "polar sites need UPS (polar stereographic) grids, which xembed does not "
            "support, and the embeddings are published by UTM zone only; clip the site to "
            "that band, e.g. shapely.clip_by_rect(geometry, -180, -80, 180, 84), or drop it"
        )


def _check_lon_span(west: float, east: float) -> None:
    """Refuse sites wrapped across the antimeridian or wider than one UTM zone."""
    span = east - west
    if span > 180.0:
        raise SiteError(
            f"the site spans longitudes {west:g}..{east:g} ({span:g}°), more than half the "
            "globe: it looks like a site that crosses the antimeridian (180°) written with "
            "longitudes of both signs (shapely takes the long way round), or one with parts "
            "on both sides of it. xembed does not build cubes across 180°: split the site "
            "there and open each side as its own site, e.g. "
            "shapely.clip_by_rect(geometry, 0, -90, 180, 90) and "
            "shapely.clip_by_rect(geometry, -180, -90, 0, 90)"
        )
    if span > MAX_LON_SPAN:
        raise SiteError(
            f"the site spans {span:g}° of longitude ({west:g}..{east:g}), more than one "
            f"UTM zone ({MAX_LON_SPAN:g}°): a cube lives in one UTM zone, and a grid that "
            "wide is distorted at its edges and far too large; split the site into parts "
            "at most 6° wide (e.g. one per zone with shapely.clip_by_rect) and open each"
        )


def utm_crs(geometry: Any) -> pyproj.CRS:
    """The WGS 84 / UTM CRS of the zone that holds the geometry's centroid.

    Plain 6-degree zones, without the Norway/Svalbard exceptions, as the
    embedding tiles use.

    Parameters
    ----------
    geometry : shapely.Geometry
        Any geometry in EPSG:4326 longitude/latitude (or an object with
        ``__geo_interface__``).

    Returns
    -------
    pyproj.CRS
        ``EPSG:326zz`` if the centroid is on or north of the equator, else
        ``EPSG:327zz``.

    Raises
    ------
    SiteError
        If the geometry is empty or not in longitude/latitude, or reaches
        beyond UTM's latitudes (80°S to 84°N; polar UPS grids are not
        supported).

    Examples
    --------
    >>> import shapely
    >>> utm_crs(shapely.Point(-48.5, -22.6)).to_epsg()
    32722
    >>> utm_crs(shapely.Point(-105.0, 39.7)).to_epsg()
    32613
    """
    geometry = _as_geometry(geometry)
    if geometry.is_empty:
        raise SiteError("the geometry is empty: give a site a polygon with at least 3 vertices")
    _, south, _, north = _lonlat_bounds(geometry)
    _check_utm_latitudes(south, north)
    centroid = geometry.centroid
    lon, lat = centroid.x, centroid.y
    zone = min(max(math.floor((lon + 180.0) / 6.0) + 1, 1), 60)
    return pyproj.CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def utm_zone_name(crs: Any) -> str:
    """The UTM zone label of a CRS, as the tiles name it (``"22S"``, ``"9N"``).

    Parameters
    ----------
    crs : pyproj.CRS or str or int
        Anything :meth:`pyproj.CRS.from_user_input` accepts.

    Returns
    -------
    str
        Zone number (no zero padding) and hemisphere letter ``N`` or ``S``.

    Raises
    ------
    SiteError
        If the CRS is not a UTM projection.

    Examples
    --------
    >>> utm_zone_name("EPSG:32722")
    '22S'
    >>> utm_zone_name(32613)
    '13N'
    """
    crs = pyproj.CRS.from_user_input(crs)
    zone = crs.utm_zone
    if zone is None:
        raise SiteError(
            f"CRS {crs.to_string()!r} is not a UTM projection; use a UTM CRS such as "
            "xembed.grid.utm_crs(geometry)"
        )
    return f"{int(zone[:-1])}{zone[-1].upper()}"


def project(geometry: Any, src_crs: Any, dst_crs: Any) -> shapely.Geometry:
    """Carry a geometry from one CRS to another, vertex by vertex.

    No vertices are added (no densification): straight edges stay straight in
    the target CRS, which is what a polygon drawn there means.

    Parameters
    ----------
    geometry : shapely.Geometry
        The geometry, in ``src_crs`` with x/easting/longitude first.
    src_crs, dst_crs : pyproj.CRS or str or int
        Anything :meth:`pyproj.CRS.from_user_input` accepts.

    Returns
    -------
    shapely.Geometry
        The same kind of geometry with every vertex in ``dst_crs`` (2D).

    Raises
    ------
    SiteError
        If some vertex cannot be projected (lies outside the CRS's domain).

    Examples
    --------
    >>> import shapely
    >>> p = project(shapely.Point(-51.0, 0.0), "EPSG:4326", "EPSG:32622")
    >>> round(p.x, 3), round(p.y, 3)
    (500000.0, 0.0)
    """
    geometry = _as_geometry(geometry)
    src = pyproj.CRS.from_user_input(src_crs)
    dst = pyproj.CRS.from_user_input(dst_crs)
    if src == dst:
        return shapely.force_2d(geometry)
    transformer = _util.transformer(src, dst)
    out = shapely.transform(geometry, lambda x, y: transformer.transform(x, y), interleaved=False)
    coords = shapely.get_coordinates(out)
    if not np.isfinite(coords).all():
        raise SiteError(
            f"some vertices cannot be projected from {src.to_string()} to {dst.to_string()}: "
            "check the geometry's CRS and coordinate order (x/longitude first)"
        )
    return out


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: ``height`` rows by ``width`` columns of ``res`` m pixels.

    Parameters
    ----------
    crs : pyproj.CRS
        The grid's CRS (anything :meth:`pyproj.CRS.from_user_input` accepts is
        converted).
    west : float
        x of the left edge of column 0 (metres).
    north : float
        y of the top edge of row 0 (metres).
    width, height : int
        Number of columns and rows.
    res : float, default 10.0
        Pixel size (metres), the same in x and y.

    Examples
    --------
    >>> g = Grid("EPSG:32722", west=1000.0, north=5000.0, width=3, height=2)
    >>> g.bounds
    (1000.0, 4980.0, 1030.0, 5000.0)
    >>> g.x
    array([1005., 1015., 1025.])
    >>> g.y
    array([4995., 4985.])
    >>> g.transform
    Affine(10.0, 0.0, 1000.0,
           0.0, -10.0, 5000.0)
    """

    crs: pyproj.CRS
    west: float
    north: float
    width: int
    height: int
    res: float = PIXEL_SIZE

    def __post_init__(self) -> None:
        # Frozen: normalise through object.__setattr__ so equal grids compare equal.
        object.__setattr__(self, "crs", pyproj.CRS.from_user_input(self.crs))
        object.__setattr__(self, "west", float(self.west))
        object.__setattr__(self, "north", float(self.north))
        object.__setattr__(self, "res", float(self.res))
        for name in ("width", "height"):
            value = getattr(self, name)
            if int(value) != value or value < 0:
                raise ValueError(f"Grid {name} must be a non-negative integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not (math.isfinite(self.res) and self.res > 0):
            raise ValueError(f"Grid res must be a positive number of metres, got {self.res!r}")

    def __repr__(self) -> str:
        return (
            f"Grid(crs={self.crs.to_string()!r}, west={self.west!r}, north={self.north!r}, "
            f"width={self.width}, height={self.height}, res={self.res!r})"
        )

    @property
    def transform(self) -> affine.Affine:
        """The north-up affine transform from (col, row) to (x, y) of pixel corners."""
        return affine.Affine(self.res, 0.0, self.west, 0.0, -self.res, self.north)

    @property
    def east(self) -> float:
        """x of the right edge of the last column."""
        return self.west + self.res * self.width

    @property
    def south(self) -> float:
        """y of the bottom edge of the last row."""
        return self.north - self.res * self.height

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(west, south, east, north)`` in metres."""
        return (self.west, self.south, self.east, self.north)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``, the shape of a ``(y, x)`` array on this grid."""
        return (self.height, self.width)

    @property
    def x(self) -> np.ndarray:
        """Pixel-centre x coordinates, west to east (float64)."""
        return self.west + self.res * (np.arange(self.width, dtype=np.float64) + 0.5)

    @property
    def y(self) -> np.ndarray:
        """Pixel-centre y coordinates, north to south (descending, float64)."""
        return self.north - self.res * (np.arange(self.height, dtype=np.float64) + 0.5)

    @property
    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """``(west, south, east, north)`` in EPSG:4326 degrees, edges densified.

        The planar lon/lat box both the mirror reader and Earth Engine use to
        pick the files (tiles) over the grid.

        >>> g = Grid("EPSG:32622", west=499500.0, north=500.0, width=100, height=100)
        >>> [round(v, 4) for v in g.lonlat_bounds]
        [-51.0045, -0.0045, -50.9955, 0.0045]
        """
        to_wgs84 = _util.transformer(self.crs, "EPSG:4326")
        return tuple(to_wgs84.transform_bounds(*self.bounds, densify_pts=21))  # type: ignore[return-value]


def _snap_down(q: float) -> int:
    k = round(q)
    return int(k) if abs(q - k) <= _SNAP_TOL else math.floor(q)


def _snap_up(q: float) -> int:
    k = round(q)
    return int(k) if abs(q - k) <= _SNAP_TOL else math.ceil(q)


def target_grid(
    geometry: Any,
    *,
    buffer: float = 0.0,
    crs: Any = None,
    res: float = PIXEL_SIZE,
) -> tuple[Grid, shapely.Geometry]:
    """The smallest pixel-aligned grid around a polygon, and the polygon on it.

    The polygon is projected vertex by vertex into ``crs``, its bounds are
    widened by ``buffer`` metres and snapped outwards to multiples of ``res``,
    so pixel edges fall on the native 10 m lattice of the tiles.

    Parameters
    ----------
    geometry : shapely.Polygon or shapely.MultiPolygon
        The site, in EPSG:4326 longitude/latitude.
    buffer : float, default 0.0
        Extra context around the polygon, in metres (each side).
    crs : pyproj.CRS or str or int, optional
        A projected CRS in metres; defaults to :func:`utm_crs` of the geometry.
    res : float, default 10.0
        Pixel size in metres.

    Returns
    -------
    grid : Grid
        The snapped grid.
    projected : shapely.Polygon or shapely.MultiPolygon
        The geometry in ``grid.crs``, ready for :func:`coverage_fraction`.

    Raises
    ------
    SiteError
        If the geometry is empty, not a (Multi)Polygon, not in lon/lat, covers
        no pixel, or needs a grid of more than :data:`MAX_PIXELS` pixels
        (split it). Without ``crs``, also if it crosses the antimeridian
        (split it at 180°), spans more than one UTM zone
        (:data:`MAX_LON_SPAN` degrees of longitude), or reaches beyond UTM's
        latitudes, 80°S to 84°N (polar UPS grids are not supported).
    ValueError
        If ``buffer`` is negative, ``res`` not positive, or ``crs`` not projected.

    Examples
    --------
    >>> import shapely
    >>> site = shapely.box(-48.51, -22.61, -48.50, -22.60)
    >>> grid, poly = target_grid(site, buffer=25)
    >>> grid.crs.to_epsg(), grid.west % 10, grid.north % 10
    (32722, 0.0, 0.0)
    >>> grid.west <= poly.bounds[0] - 25 and grid.east >= poly.bounds[2] + 25
    True
    """
    buffer = float(buffer)
    if not (math.isfinite(buffer) and buffer >= 0):
        raise ValueError(f"buffer must be a non-negative number of metres, got {buffer!r}")
    res = float(res)
    if not (math.isfinite(res) and res > 0):
        raise ValueError(f"res must be a positive number of metres, got {res!r}")
    geometry = _as_geometry(geometry)
    if geometry.geom_type not in ("Polygon", "MultiPolygon"):
        raise SiteError(
            f"a site must be a Polygon or MultiPolygon, got a {geometry.geom_type}; "
            "buffer points or lines into polygons first (in metres, e.g. in a UTM CRS)"
        )
    if geometry.is_empty:
        raise SiteError("the site polygon is empty: give it at least 3 distinct vertices")
    west, _, east, _ = _lonlat_bounds(geometry)
    if crs is None:
        # Checks of the automatic choice of one UTM zone (an explicit CRS is
        # the caller's: edges are straight in it, whatever their longitudes).
        _check_lon_span(west, east)
        dst = utm_crs(geometry)  # refuses polar sites
    else:
        dst = pyproj.CRS.from_user_input(crs)
    if not dst.is_projected:
        raise ValueError(
            f"crs must be a projected CRS in metres (e.g. UTM), got {dst.to_string()!r}"
        )
    projected = project(geometry, "EPSG:4326", dst)
    minx, miny, maxx, maxy = projected.bounds
    col0 = _snap_down((minx - buffer) / res)
    col1 = _snap_up((maxx + buffer) / res)
    row0 = _snap_down((miny - buffer) / res)
    row1 = _snap_up((maxy + buffer) / res)
    width, height = col1 - col0, row1 - row0
    if width <= 0 or height <= 0:
        raise SiteError(
            f"the site polygon covers no pixel ({width} x {height} grid): it has no extent "
            f"in {dst.to_string()}; check its vertices, or pass buffer > 0 for a context window"
        )
    if width * height > MAX_PIXELS:
        raise SiteError(
            f"the site needs a grid of {width} x {height} pixels ({width * res / 1000:g} x "
            f"{height * res / 1000:g} km at {res:g} m), more than the {MAX_PIXELS:,} pixels "
            "of one Earth Engine image (163.84 km square) that xembed puts in one cube; "
            "split the site into smaller parts (e.g. tiles cut with shapely.clip_by_rect) "
            "and open each"
        )
    # Edges as integer multiples of res: exact for any realistic coordinate.
    grid = Grid(crs=dst, west=col0 * res, north=row1 * res, width=width, height=height, res=res)
    return grid, projected


def _polygonal(geometry: Any) -> shapely.Geometry:
    """A valid (Multi)Polygon: the winding-number sum would count overlaps twice."""
    geometry = _as_geometry(geometry)
    if geometry.geom_type not in ("Polygon", "MultiPolygon"):
        raise SiteError(
            f"coverage needs a Polygon or MultiPolygon, got a {geometry.geom_type}; "
            "buffer points or lines into polygons first"
        )
    if not np.isfinite(shapely.get_coordinates(geometry)).all():
        raise SiteError("the polygon has NaN or infinite coordinates: fix or drop those vertices")
    if geometry.is_valid:
        return geometry
    try:  # shapely >= 2.1: "structure" unions overlapping parts (GEOS >= 3.10)
        fixed = shapely.make_valid(geometry, method="structure", keep_collapsed=False)
    except TypeError:
        fixed = shapely.make_valid(geometry)
    parts = shapely.get_parts(fixed)
    # make_valid may return a collection with collapsed lines or points: drop them.
    polygons = parts[np.isin(shapely.get_type_id(parts), (3, 6))]
    return shapely.union_all(polygons)


def _split(
    a0: np.ndarray, b0: np.ndarray, a1: np.ndarray, b1: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut segments ``(a0, b0)-(a1, b1)`` where they cross ``a = k``, integer ``0 <= k <= n``.

    Returns the index of each piece's segment and the pieces' ends, in order
    along each segment, without sorting: the crossings of a straight segment
    are monotonic. The crossed coordinate is set exactly and the same formula
    gives both pieces' copy of a cut point, so the pieces join exactly.
    """
    lo = np.maximum(np.floor(np.minimum(a0, a1)) + 1, 0)
    hi = np.minimum(np.ceil(np.maximum(a0, a1)) - 1, n)
    cuts = np.maximum(hi - lo + 1, 0).astype(np.int64)
    parent = np.repeat(np.arange(a0.size), cuts + 1)
    j = np.arange(parent.size) - np.repeat(np.cumsum(cuts + 1) - (cuts + 1), cuts + 1)
    up = a1 > a0
    first = np.where(up, lo, hi)[parent]
    step = np.where(up, 1.0, -1.0)[parent]
    # Segments with a0 == a1 have no cuts; their slope is never used.
    slope = np.divide(b1 - b0, a1 - a0, out=np.zeros_like(a0), where=a1 != a0)[parent]
    pa0, pb0, pa1, pb1 = a0[parent], b0[parent], a1[parent], b1[parent]
    start, end = j > 0, j < cuts[parent]
    ka = np.where(start, first + step * (j - 1), pa0)
    kb = np.where(end, first + step * j, pa1)
    kb_b = np.where(end, pb0 + (kb - pa0) * slope, pb1)
    ka_b = np.where(start, pb0 + (ka - pa0) * slope, pb0)
    return parent, ka, ka_b, kb, kb_b


def coverage_fraction(geometry: Any, grid: Grid) -> np.ndarray:
    """The exact fraction of each pixel's area inside a polygon.

    Computed analytically (Green's theorem): every ring segment is split where
    it crosses pixel edges, each piece adds the signed area between it and the
    right edge of its pixel, and a cumulative sum along each row carries the
    winding number across pixels the boundary does not touch. Holes,
    multipolygons, vertices on pixel edges and polygons reaching outside the
    grid are all exact; the cost grows with the number of boundary crossings,
    not with the polygon's area. Invalid polygons are repaired first
    (overlapping parts are unioned).

    Parameters
    ----------
    geometry : shapely.Polygon or shapely.MultiPolygon
        The polygon, already in ``grid.crs``.
    grid : Grid
        The grid to cover.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``grid.shape`` (row 0 is the north row), values
        in ``[0, 1]``, 0 outside the polygon.

    Examples
    --------
    >>> import shapely
    >>> grid = Grid("EPSG:32722", west=0.0, north=20.0, width=2, height=2)
    >>> coverage_fraction(shapely.box(5.0, 5.0, 20.0, 20.0), grid)
    array([[0.5 , 1.  ],
           [0.25, 0.5 ]], dtype=float32)
    """
    height, width = grid.shape
    out = np.zeros((height, width), dtype=np.float32)
    geometry = _polygonal(geometry)
    if geometry.is_empty or height == 0 or width == 0:
        return out

    # Ring vertices in pixel units: u to the east from the west edge, v to the
    # south from the north edge (so row = floor(v), col = floor(u)).
    rings, part_index = shapely.get_rings(shapely.get_parts(geometry), return_index=True)
    # Exteriors count +1 and holes -1 whichever way each ring was drawn.
    exterior = np.r_[True, part_index[1:] != part_index[:-1]]
    ring_sign = np.where(exterior == shapely.is_ccw(rings), 1.0, -1.0)
    coords, ring_index = shapely.get_coordinates(rings, return_index=True)
    u = (coords[:, 0] - grid.west) / grid.res
    v = (grid.north - coords[:, 1]) / grid.res
    same_ring = ring_index[1:] == ring_index[:-1]  # consecutive vertices form a segment
    u0, u1 = u[:-1][same_ring], u[1:][same_ring]
    v0, v1 = v[:-1][same_ring], v[1:][same_ring]
    sign = ring_sign[ring_index[:-1][same_ring]]
    if u0.size == 0:
        return out

    # Cut the boundary into pieces that each lie in one pixel: first at row
    # edges, then at column edges. Pieces outside the rows, or east of the grid,
    # add nothing; pieces west of it act as if on its west edge, so no cuts
    # outside the grid are needed.
    parent, v0, u0, v1, u1 = _split(v0, u0, v1, u1, height)
    row = np.floor(0.5 * (v0 + v1))
    keep = (row >= 0) & (row < height) & (v0 != v1) & (np.minimum(u0, u1) < width)
    parent, u0, v0, u1, v1, row = (a[keep] for a in (parent, u0, v0, u1, v1, row))
    sign = sign[parent]
    parent, u0, v0, u1, v1 = _split(u0, v0, u1, v1, width)
    row = row[parent].astype(np.int64)
    dv = (v1 - v0) * sign[parent]
    umid = np.clip(0.5 * (u0 + u1), 0.0, width)
    col = np.floor(umid)
    keep = col < width
    row, col, dv, frac = row[keep], col[keep].astype(np.int64), dv[keep], (umid - col)[keep]

    # Signed area of the pixel right of the piece goes to its own pixel; the rest
    # of dv to the next one, so the row's cumulative sum is the winding number.
    # Counter-clockwise in (x, y) is clockwise in (u, v) (v points south): the
    # west side of an exterior runs south (dv > 0) and adds +1 east of it.
    stride = width + 1
    order = np.argsort(row)
    row, col, dv, frac = row[order], col[order], dv[order], frac[order]
    flat = row * stride + col
    right, left = dv * (1.0 - frac), dv * frac
    # Blocks of rows keep the float64 work buffer small and in cache; rows no
    # piece touches stay untouched zeros.
    block = max(1, _BLOCK_CELLS // stride)
    for r0 in range(0, height, block):
        r1 = min(r0 + block, height)
        i0, i1 = np.searchsorted(row, (r0, r1))
        if i0 == i1:
            continue
        base = r0 * stride
        acc = np.bincount(
            np.concatenate([flat[i0:i1] - base, flat[i0:i1] + 1 - base]),
            weights=np.concatenate([right[i0:i1], left[i0:i1]]),
            minlength=(r1 - r0) * stride,
        ).reshape(r1 - r0, stride)
        np.cumsum(acc, axis=1, out=acc)
        acc[acc < _COVER_TOL] = 0.0
        acc[acc > 1.0 - _COVER_TOL] = 1.0
        out[r0:r1] = acc[:, :width]
    return out
