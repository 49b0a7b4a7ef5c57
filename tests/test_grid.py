"""Tests of xembed.grid: UTM choice, grid snapping, exact pixel coverage.

Coverage is checked against two independent references: exactextract (the
reference the design names) and per-pixel shapely intersections.
"""

from __future__ import annotations

import math

import numpy as np
import pyproj
import pytest
import rasterio.transform
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from xembed.errors import SiteError
from xembed.grid import (
    Grid,
    coverage_fraction,
    project,
    target_grid,
    utm_crs,
    utm_zone_name,
)

TOL = 1e-6  # agreement with exactextract, max abs difference per pixel

# A grid away from the origin, as real UTM grids are (float noise included).
WEST, NORTH = 512_340.0, 7_499_510.0
UTM22S = pyproj.CRS.from_epsg(32722)
GRID = Grid(UTM22S, west=WEST, north=NORTH, width=40, height=30)


# --------------------------------------------------------------------- references


def exactextract_coverage(geometry: shapely.Geometry, grid: Grid) -> np.ndarray:
    """Per-pixel coverage fractions from exactextract (row 0 north)."""
    exactextract = pytest.importorskip("exactextract")
    from rasterio.io import MemoryFile

    with MemoryFile() as memfile:
        with memfile.open(
            driver="GTiff",
            width=grid.width,
            height=grid.height,
            count=1,
            dtype="float32",
            crs=grid.crs,
            transform=grid.transform,
        ) as dst:
            dst.write(np.zeros((1, *grid.shape), dtype=np.float32))
        with memfile.open() as src:
            feature = {"type": "Feature", "properties": {}, "geometry": geometry.__geo_interface__}
            (result,) = exactextract.exact_extract(src, [feature], ["cell_id", "coverage"])
    out = np.zeros(grid.height * grid.width)
    cells = np.asarray(result["properties"]["cell_id"], dtype=np.int64)
    out[cells] = result["properties"]["coverage"]
    return out.reshape(grid.shape)


def shapely_coverage(geometry: shapely.Geometry, grid: Grid) -> np.ndarray:
    """Per-pixel coverage from box-by-box shapely intersections (slow, small grids)."""
    x0 = grid.west + grid.res * np.arange(grid.width)
    y1 = grid.north - grid.res * np.arange(grid.height)
    xx, yy = np.meshgrid(x0, y1)
    boxes = shapely.box(xx, yy - grid.res, xx + grid.res, yy)
    return shapely.area(shapely.intersection(boxes, geometry)) / grid.res**2


def star(rng: np.random.Generator, cx: float, cy: float, rmin: float, rmax: float, n: int):
    """A random star-shaped polygon (always valid) around (cx, cy)."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    angles = angles[np.r_[True, np.diff(angles) > 1e-6]]
    radii = rng.uniform(rmin, rmax, angles.size)
    return shapely.Polygon(np.c_[cx + radii * np.cos(angles), cy + radii * np.sin(angles)])


def assert_matches_references(geometry: shapely.Geometry, grid: Grid = GRID) -> float:
    cov = coverage_fraction(geometry, grid)
    assert cov.dtype == np.float32
    assert cov.shape == grid.shape
    assert cov.min() >= 0.0 and cov.max() <= 1.0
    diff = float(np.abs(cov - exactextract_coverage(geometry, grid)).max())
    assert diff <= TOL, f"max abs diff vs exactextract {diff:.3g}"
    if grid.width * grid.height <= 5000:
        np.testing.assert_allclose(cov, shapely_coverage(geometry, grid), rtol=0, atol=TOL)
    return diff


# ------------------------------------------------------------------------- UTM


@pytest.mark.parametrize(
    ("lon", "lat", "epsg"),
    [
        (-48.5, -22.6, 32722),  # Brazil, Atlantic Forest
        (-47.5, -22.6, 32723),  # one zone east
        (-48.0, -22.6, 32723),  # on a zone edge: the eastern zone
        (-104.99, 39.74, 32613),  # Denver
        (0.5, 51.5, 32631),  # London: west of Greenwich is zone 30
        (-0.5, 51.5, 32630),
        (139.7, 35.7, 32654),  # Tokyo
        (151.2, -33.9, 32756),  # Sydney
        (5.3, 60.4, 32631),  # Bergen: plain zones, no Norway exception
        (15.6, 78.2, 32633),  # Svalbard: plain zones too
        (3.0, 0.0, 32631),  # the equator is north
        (3.0, -1e-9, 32731),
        (-180.0, 10.0, 32601),
        (180.0, 10.0, 32660),  # clamped to zone 60
    ],
)
def test_utm_crs_points(lon: float, lat: float, epsg: int) -> None:
    crs = utm_crs(shapely.Point(lon, lat))
    assert isinstance(crs, pyproj.CRS)
    assert crs.to_epsg() == epsg


def test_utm_crs_uses_the_centroid() -> None:
    # Straddles the -48 degree zone edge; most of its area is to the west.
    polygon = shapely.box(-50.0, -23.0, -47.5, -22.0)
    assert utm_crs(polygon).to_epsg() == 32722
    assert utm_crs(shapely.box(-48.5, -23.0, -46.0, -22.0)).to_epsg() == 32723


def test_utm_crs_accepts_geo_interface() -> None:
    class Feature:
        @property
        def __geo_interface__(self) -> dict:
            return {"type": "Point", "coordinates": (-104.99, 39.74)}

    assert utm_crs(Feature()).to_epsg() == 32613


def test_utm_crs_rejects_projected_and_empty() -> None:
    with pytest.raises(SiteError, match="EPSG:4326"):
        utm_crs(shapely.Point(512_340.0, 7_499_510.0))
    with pytest.raises(SiteError, match="empty"):
        utm_crs(shapely.Polygon())
    with pytest.raises(SiteError, match="shapely geometry"):
        utm_crs((1.0, 2.0))


@pytest.mark.parametrize(
    ("crs", "name"),
    [
        (32722, "22S"),
        ("EPSG:32613", "13N"),
        (pyproj.CRS.from_epsg(32609), "9N"),
        (32601, "1N"),
        (32760, "60S"),
    ],
)
def test_utm_zone_name(crs: object, name: str) -> None:
    assert utm_zone_name(crs) == name


@pytest.mark.parametrize("crs", [4326, 3857, "EPSG:5880"])
def test_utm_zone_name_rejects_non_utm(crs: object) -> None:
    with pytest.raises(SiteError, match="not a UTM"):
        utm_zone_name(crs)


def test_utm_zone_name_of_every_zone() -> None:
    for zone in range(1, 61):
        lon = -180.0 + 6.0 * zone - 3.0
        assert utm_zone_name(utm_crs(shapely.Point(lon, 10.0))) == f"{zone}N"
        assert utm_zone_name(utm_crs(shapely.Point(lon, -10.0))) == f"{zone}S"


# ------------------------------------------------------------------- projection


def test_project_point_on_central_meridian() -> None:
    point = project(shapely.Point(-51.0, 0.0), "EPSG:4326", 32622)
    assert point.x == pytest.approx(500_000.0, abs=1e-6)
    assert point.y == pytest.approx(0.0, abs=1e-6)


def test_project_keeps_vertices_and_round_trips() -> None:
    polygon = shapely.Polygon(
        [(-48.6, -22.7), (-48.4, -22.7), (-48.4, -22.5), (-48.6, -22.5)],
        holes=[[(-48.55, -22.65), (-48.45, -22.65), (-48.5, -22.55)]],
    )
    utm = project(polygon, 4326, 32722)
    assert utm.geom_type == "Polygon"
    # No densification: the same vertices, carried one by one.
    assert shapely.get_num_coordinates(utm) == shapely.get_num_coordinates(polygon)
    assert utm.bounds[0] > 100_000  # metres, not degrees
    back = project(utm, 32722, "EPSG:4326")
    np.testing.assert_allclose(
        shapely.get_coordinates(back), shapely.get_coordinates(polygon), atol=1e-9
    )


def test_project_same_crs_and_z_is_dropped() -> None:
    point = shapely.Point(1.0, 2.0, 3.0)
    assert project(point, 32722, "EPSG:32722").equals(shapely.Point(1.0, 2.0))
    assert not project(point, 4326, 32631).has_z


def test_project_unprojectable_raises() -> None:
    with pytest.raises(SiteError, match="cannot be projected"):
        project(shapely.Point(0.0, 95.0), 4326, 32631)


# ------------------------------------------------------------------------- Grid


def test_grid_properties() -> None:
    grid = Grid(UTM22S, west=1000.0, north=5000.0, width=3, height=2)
    assert grid.res == 10.0
    assert grid.east == 1030.0 and grid.south == 4980.0
    assert grid.bounds == (1000.0, 4980.0, 1030.0, 5000.0)
    assert grid.shape == (2, 3)
    assert grid.x.dtype == np.float64 and grid.y.dtype == np.float64
    np.testing.assert_array_equal(grid.x, [1005.0, 1015.0, 1025.0])
    np.testing.assert_array_equal(grid.y, [4995.0, 4985.0])
    assert tuple(grid.transform)[:6] == (10.0, 0.0, 1000.0, 0.0, -10.0, 5000.0)
    # The transform maps pixel centres to the x/y coordinates.
    xs, ys = rasterio.transform.xy(grid.transform, [0, 0, 1], [0, 2, 2])
    np.testing.assert_array_equal(xs, grid.x[[0, 2, 2]])
    np.testing.assert_array_equal(ys, grid.y[[0, 0, 1]])


def test_grid_normalises_and_compares() -> None:
    a = Grid("EPSG:32722", west=1000, north=5000, width=3, height=2)  # type: ignore[arg-type]
    b = Grid(UTM22S, west=1000.0, north=5000.0, width=3, height=2, res=10)
    assert isinstance(a.crs, pyproj.CRS)
    assert a == b and hash(a) == hash(b)
    assert "EPSG:32722" in repr(a) and "width=3" in repr(a)
    with pytest.raises(AttributeError):
        a.width = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [{"width": -1}, {"height": 2.5}, {"res": 0.0}, {"res": float("nan")}],
)
def test_grid_rejects_bad_sizes(kwargs: dict) -> None:
    args = {"crs": 32722, "west": 0.0, "north": 0.0, "width": 3, "height": 2} | kwargs
    with pytest.raises(ValueError):
        Grid(**args)


# ------------------------------------------------------------------ target_grid


def lonlat_of_utm_box(west: float, south: float, east: float, north: float, epsg: int = 32722):
    """A lon/lat polygon whose vertices project back to the given UTM box (up to float noise)."""
    return project(shapely.box(west, south, east, north), epsg, 4326)


def test_target_grid_snaps_outwards_to_multiples_of_res() -> None:
    site = shapely.Polygon([(-48.51, -22.61), (-48.493, -22.605), (-48.502, -22.597)])
    grid, projected = target_grid(site)
    assert grid.crs.to_epsg() == 32722
    assert grid.res == 10.0
    for edge in grid.bounds:
        assert edge % 10.0 == 0.0
    minx, miny, maxx, maxy = projected.bounds
    # Outwards, and by less than a pixel.
    assert grid.west <= minx < grid.west + 10 and grid.east - 10 < maxx <= grid.east
    assert grid.south <= miny < grid.south + 10 and grid.north - 10 < maxy <= grid.north
    assert grid.width == round((grid.east - grid.west) / 10)
    assert grid.height == round((grid.north - grid.south) / 10)
    assert projected.equals_exact(project(site, 4326, 32722), tolerance=0)


def test_target_grid_centres_and_transform() -> None:
    grid, _ = target_grid(lonlat_of_utm_box(512_343.0, 7_499_001.0, 512_377.0, 7_499_038.0))
    assert (grid.west, grid.south, grid.east, grid.north) == (
        512_340.0,
        7_499_000.0,
        512_380.0,
        7_499_040.0,
    )
    np.testing.assert_allclose(grid.x, 512_345.0 + 10.0 * np.arange(4))
    np.testing.assert_allclose(grid.y, 7_499_035.0 - 10.0 * np.arange(4))
    assert np.all(np.diff(grid.y) < 0)  # north-up: y descending
    assert grid.transform.e == -10.0 and grid.transform.c == grid.west
    assert grid.transform.f == grid.north


def test_target_grid_edges_on_pixel_edges_add_no_empty_column() -> None:
    # The box's edges lie on multiples of 10 m; after the lon/lat round trip they
    # are off by ~1e-9 m, which must not add an empty row or column.
    site = lonlat_of_utm_box(512_340.0, 7_499_000.0, 512_830.0, 7_499_510.0)
    grid, projected = target_grid(site, crs="EPSG:32722")
    assert grid.bounds == (512_340.0, 7_499_000.0, 512_830.0, 7_499_510.0)
    assert grid.shape == (51, 49)
    assert projected.bounds != grid.bounds  # the noise really is there
    cov = coverage_fraction(projected, grid)
    assert cov.min() > 1 - 1e-6  # every pixel is inside: no empty border


@pytest.mark.parametrize("buffer", [0.0, 0.5, 5.0, 10.0, 15.0, 25.0, 100.0])
def test_target_grid_buffer_adds_whole_pixels(buffer: float) -> None:
    site = lonlat_of_utm_box(512_340.0, 7_499_000.0, 512_830.0, 7_499_510.0)
    grid, _ = target_grid(site, buffer=buffer)
    pad = math.ceil(buffer / 10.0)
    assert grid.bounds == (
        512_340.0 - 10 * pad,
        7_499_000.0 - 10 * pad,
        512_830.0 + 10 * pad,
        7_499_510.0 + 10 * pad,
    )
    assert grid.shape == (51 + 2 * pad, 49 + 2 * pad)


def test_target_grid_edges_survive_round_trips_anywhere() -> None:
    # Boxes with edges on the 10 m lattice, all over two zones (large northings
    # included, where a float step is ~2e-9 m): the grid is the box exactly.
    rng = np.random.default_rng(7)
    for i in range(200):
        epsg = 32722 if i % 2 else 32613
        west = rng.integers(17_000, 83_000) * 10.0
        south = rng.integers(1, 999_000) * 10.0
        east = west + rng.integers(1, 300) * 10.0
        north = south + rng.integers(1, 300) * 10.0
        grid, _ = target_grid(lonlat_of_utm_box(west, south, east, north, epsg), crs=epsg)
        assert grid.bounds == (west, south, east, north)


def test_target_grid_generic_buffer_is_tight() -> None:
    site = shapely.Point(-48.5, -22.6).buffer(0.003)
    for buffer in (0.0, 3.0, 37.0):
        grid, projected = target_grid(site, buffer=buffer)
        minx, miny, maxx, maxy = projected.bounds
        assert grid.west <= minx - buffer < grid.west + 10
        assert grid.east - 10 < maxx + buffer <= grid.east
        assert grid.south <= miny - buffer < grid.south + 10
        assert grid.north - 10 < maxy + buffer <= grid.north


def test_target_grid_tight_grid_has_coverage_on_every_border() -> None:
    site = shapely.Point(-104.99, 39.74).buffer(0.01)
    grid, projected = target_grid(site)
    assert grid.crs.to_epsg() == 32613
    cov = coverage_fraction(projected, grid)
    assert cov[0].max() > 0 and cov[-1].max() > 0
    assert cov[:, 0].max() > 0 and cov[:, -1].max() > 0


def test_target_grid_multipolygon_and_explicit_crs() -> None:
    site = shapely.MultiPolygon(
        [shapely.box(-48.51, -22.61, -48.50, -22.60), shapely.box(-48.49, -22.59, -48.48, -22.58)]
    )
    grid, projected = target_grid(site, crs=32723, res=30.0)
    assert projected.geom_type == "MultiPolygon"
    assert grid.crs.to_epsg() == 32723 and grid.res == 30.0
    assert all(edge % 30.0 == 0.0 for edge in grid.bounds)
    cov = coverage_fraction(projected, grid)
    assert cov.sum(dtype=np.float64) * 900.0 == pytest.approx(projected.area, rel=1e-6)


@pytest.mark.parametrize(
    ("geometry", "match"),
    [
        (shapely.Polygon(), "empty"),
        (shapely.MultiPolygon(), "empty"),
        (shapely.Point(-48.5, -22.6), r"Point.*buffer"),
        (shapely.LineString([(-48.5, -22.6), (-48.4, -22.6)]), "LineString"),
        (shapely.GeometryCollection([shapely.box(0, 0, 0.01, 0.01)]), "GeometryCollection"),
    ],
)
def test_target_grid_rejects_bad_geometries(geometry: shapely.Geometry, match: str) -> None:
    with pytest.raises(SiteError, match=match):
        target_grid(geometry)


def test_target_grid_zero_size_raises_unless_buffered() -> None:
    (corner,) = shapely.get_coordinates(project(shapely.Point(512_340.0, 7_499_000.0), 32722, 4326))
    degenerate = shapely.Polygon([corner, corner, corner, corner])
    with pytest.raises(SiteError, match=r"covers no pixel.*buffer"):
        target_grid(degenerate, crs=32722)
    grid, _ = target_grid(degenerate, crs=32722, buffer=10.0)
    assert grid.bounds == (512_330.0, 7_498_990.0, 512_350.0, 7_499_010.0)


@pytest.mark.parametrize("buffer", [-1.0, -1e-9, float("nan"), float("inf")])
def test_target_grid_rejects_bad_buffer(buffer: float) -> None:
    with pytest.raises(ValueError, match="buffer"):
        target_grid(shapely.box(-48.51, -22.61, -48.50, -22.60), buffer=buffer)


def test_target_grid_rejects_geographic_crs_and_bad_res() -> None:
    site = shapely.box(-48.51, -22.61, -48.50, -22.60)
    with pytest.raises(ValueError, match="projected"):
        target_grid(site, crs=4326)
    with pytest.raises(ValueError, match="res"):
        target_grid(site, res=0.0)


# -------------------------------------------------------------------- coverage


@pytest.mark.parametrize("seed", range(12))
def test_coverage_matches_exactextract_random_stars(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cx = WEST + rng.uniform(100, 300)
    cy = NORTH - rng.uniform(100, 200)
    rmax = rng.uniform(20, 250)  # from a few pixels to larger than the grid
    polygon = star(rng, cx, cy, rmax * rng.uniform(0.05, 0.9), rmax, int(rng.integers(3, 60)))
    assert_matches_references(polygon)


@pytest.mark.parametrize("seed", range(6))
def test_coverage_matches_exactextract_clockwise(seed: int) -> None:
    # Ring orientation must not matter.
    polygon = star(np.random.default_rng(100 + seed), WEST + 200, NORTH - 150, 30, 140, 40)
    clockwise = polygon.reverse()
    assert not clockwise.exterior.is_ccw
    np.testing.assert_array_equal(
        coverage_fraction(clockwise, GRID), coverage_fraction(polygon, GRID)
    )
    assert_matches_references(clockwise)


def test_coverage_polygon_with_holes() -> None:
    rng = np.random.default_rng(11)
    outer = star(rng, WEST + 200, NORTH - 150, 120, 140, 50)
    hole1 = star(rng, WEST + 170, NORTH - 130, 10, 40, 12)
    hole2 = shapely.box(WEST + 250, NORTH - 200, WEST + 280, NORTH - 170)  # on pixel edges
    polygon = shapely.Polygon(
        outer.exterior.coords, holes=[hole1.exterior.coords, hole2.exterior.coords[::-1]]
    )
    assert polygon.is_valid
    assert_matches_references(polygon)
    cov = coverage_fraction(polygon, GRID)
    # The box hole is exactly pixels (17..19, 25..27): all zero.
    assert cov[17:20, 25:28].max() == 0.0


def test_coverage_multipolygon() -> None:
    rng = np.random.default_rng(12)
    a = star(rng, WEST + 80, NORTH - 80, 20, 70, 30)
    b = star(rng, WEST + 300, NORTH - 200, 20, 90, 30)
    c = shapely.Polygon(
        shapely.box(WEST + 300, NORTH - 60, WEST + 380, NORTH - 5).exterior.coords,
        holes=[shapely.box(WEST + 320, NORTH - 40, WEST + 355, NORTH - 15).exterior.coords],
    )
    multi = shapely.MultiPolygon([a, b, c])
    assert multi.is_valid
    assert_matches_references(multi)


def test_coverage_vertices_on_grid_lines_and_corners() -> None:
    # Vertices on pixel corners and edges, edges along grid lines and diagonals.
    coords = [
        (0, 0),
        (100, 0),
        (100, 50),
        (150, 50),
        (150, 100),
        (200, 150),
        (200, 250),
        (105, 250),
        (55, 200),
        (0, 200),
        (0, 100),
        (30, 70),
    ]
    polygon = shapely.Polygon([(WEST + 20 + x, NORTH - 270 + y) for x, y in coords])
    assert_matches_references(polygon)
    cov = coverage_fraction(polygon, GRID)
    # Pixels entirely inside the axis-aligned foot are exactly 1, pixels beside
    # and below it exactly 0.
    assert cov[22:27, 5:12].min() == 1.0
    assert cov[22:27, 12:].max() == 0.0 and cov[27:].max() == 0.0


def test_coverage_pixel_aligned_box_is_exactly_binary() -> None:
    box = shapely.box(WEST + 50, NORTH - 120, WEST + 130, NORTH - 30)
    cov = coverage_fraction(box, GRID)
    expected = np.zeros(GRID.shape, dtype=np.float32)
    expected[3:12, 5:13] = 1.0
    np.testing.assert_array_equal(cov, expected)


def test_coverage_thin_slivers() -> None:
    sliver = shapely.Polygon(
        [(WEST + 13, NORTH - 7), (WEST + 377, NORTH - 281), (WEST + 377.01, NORTH - 280.99)]
    )
    needle = shapely.box(WEST + 100.0, NORTH - 290.0, WEST + 100.001, NORTH - 3.0)
    for polygon in (sliver, needle):
        diff = assert_matches_references(polygon)
        assert diff <= TOL
    assert coverage_fraction(needle, GRID)[:, 10].max() == pytest.approx(1e-4, rel=1e-3)


def test_coverage_polygon_bigger_than_grid() -> None:
    everything = shapely.box(WEST - 1000, NORTH - 1000, WEST + 1000, NORTH + 1000)
    np.testing.assert_array_equal(coverage_fraction(everything, GRID), 1.0)
    rng = np.random.default_rng(13)
    big_star = star(rng, WEST + 200, NORTH - 150, 150, 600, 25)  # partly outside every edge
    assert not shapely.box(*GRID.bounds).contains(big_star)
    assert_matches_references(big_star)
    # A hole larger than the grid's middle, a polygon much larger than the grid.
    ring = shapely.Polygon(
        everything.exterior.coords,
        holes=[shapely.box(WEST + 15, NORTH - 285, WEST + 385, NORTH - 15).exterior.coords],
    )
    assert_matches_references(ring)


def test_coverage_partly_and_fully_outside() -> None:
    rng = np.random.default_rng(14)
    for cx, cy in [(WEST, NORTH), (WEST + 400, NORTH - 300), (WEST - 50, NORTH - 150)]:
        assert_matches_references(star(rng, cx, cy, 40, 120, 30))
    outside = shapely.box(WEST + 500, NORTH - 100, WEST + 600, NORTH)
    assert not coverage_fraction(outside, GRID).any()
    west_of = shapely.box(WEST - 300, NORTH - 100, WEST - 200, NORTH)
    assert not coverage_fraction(west_of, GRID).any()


def test_coverage_sums_to_area() -> None:
    rng = np.random.default_rng(15)
    polygon = star(rng, WEST + 200, NORTH - 150, 60, 140, 200)
    assert shapely.box(*GRID.bounds).contains(polygon)
    cov = coverage_fraction(polygon, GRID)
    assert cov.sum(dtype=np.float64) == pytest.approx(polygon.area / 100.0, rel=1e-6)


def test_coverage_repairs_overlapping_parts() -> None:
    a = shapely.box(WEST + 10, NORTH - 200, WEST + 155, NORTH - 15)
    b = shapely.box(WEST + 95, NORTH - 255, WEST + 305, NORTH - 105)
    overlapping = shapely.MultiPolygon([a, b])
    assert not overlapping.is_valid
    union = shapely.union(a, b)
    np.testing.assert_allclose(
        coverage_fraction(overlapping, GRID), coverage_fraction(union, GRID), atol=TOL
    )
    assert_matches_references(union)


def test_coverage_res_and_empty_cases() -> None:
    grid = Grid(UTM22S, west=0.0, north=90.0, width=3, height=3, res=30.0)
    triangle = shapely.Polygon([(0, 0), (90, 0), (0, 90)])
    cov = coverage_fraction(triangle, grid)
    np.testing.assert_allclose(cov, [[0.5, 0, 0], [1, 0.5, 0], [1, 1, 0.5]])
    assert not coverage_fraction(shapely.Polygon(), grid).any()
    assert coverage_fraction(triangle, Grid(UTM22S, 0.0, 90.0, width=0, height=3)).shape == (3, 0)
    with pytest.raises(SiteError, match="Polygon"):
        coverage_fraction(shapely.LineString([(0, 0), (90, 90)]), grid)
    with np.errstate(invalid="ignore"):  # shapely warns when building it
        broken = shapely.Polygon([(0, 0), (90, np.nan), (0, 90)])
    with pytest.raises(SiteError, match="NaN"):
        coverage_fraction(broken, grid)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-8, 48), st.integers(-6, 36)),
        min_size=3,
        max_size=14,
        unique=True,
    ),
    st.sampled_from([1.0, 5.0, 10.0, 2.5]),
)
def test_coverage_hypothesis_vertices_on_a_lattice(points: list, step: float) -> None:
    # Vertices on a lattice of 1, 2.5, 5 or 10 m: many lie exactly on pixel edges
    # and corners, and many edges run along grid lines. Arbitrary point lists
    # give invalid polygons; compare the valid repair's exact area per pixel.
    raw = shapely.Polygon([(WEST + step * x, NORTH - step * y) for x, y in points])
    polygon = shapely.make_valid(raw)
    parts = shapely.get_parts(polygon)
    polygon = shapely.union_all(parts[shapely.get_type_id(parts) == 3])
    if polygon.is_empty or polygon.geom_type not in ("Polygon", "MultiPolygon"):
        return
    grid = Grid(UTM22S, WEST, NORTH, width=12, height=10, res=10.0)
    assert_matches_references(polygon, grid)


def test_coverage_big_grid_runs() -> None:
    # 2000 x 2000 pixels and a 1000-vertex polygon: only checks it runs and is
    # right; the speed is reported by benchmarks, not asserted here.
    grid = Grid(UTM22S, west=500_000.0, north=7_500_000.0, width=2000, height=2000)
    rng = np.random.default_rng(16)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 1000))
    radii = 8000 + 1000 * np.sin(5 * angles) + rng.normal(0, 50, angles.size)
    polygon = shapely.Polygon(
        np.c_[510_000 + radii * np.cos(angles), 7_490_000 + radii * np.sin(angles)]
    )
    cov = coverage_fraction(polygon, grid)
    assert cov.shape == (2000, 2000) and cov.dtype == np.float32
    assert cov.sum(dtype=np.float64) == pytest.approx(polygon.area / 100.0, rel=1e-6)
    assert cov[1000, 1000] == 1.0 and cov[0, 0] == 0.0
