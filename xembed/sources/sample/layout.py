"""The sample's geometry: its Earth Engine images and files, demo sites and planted events."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xembed._util import atomic_write, cache_dir, transformer
from xembed.sources import mirror

if TYPE_CHECKING:
    from xembed.sites import Site  # noqa: F401


#: Years of the sample (every file exists for every year).
SAMPLE_YEARS: tuple[int, ...] = tuple(range(2017, 2025))
#: Bump when the generated data changes: the cache folder is named after it.
SAMPLE_VERSION = 1

SEED = 20250730


IMAGE_PX = 320  # an Earth Engine image (the real ones are 16384 px)


FILE_PX = IMAGE_PX // 2  # 2 x 2 files per image (the real ones are 8192 px)


BLOCKSIZE = 128  # internal tiles (the real ones are 1024 px, 8 x 8 per file)


RES = 10.0


#: Centre of the local metric frame (an azimuthal equidistant projection):
#: the zone boundary at -48° where it crosses -22.6°.
LON0, LAT0 = -48.0, -22.6


#: Data reaches this far (degrees, ~30 m here) past the zone boundary.
ZONE_OVERLAP_DEG = 0.0003


LOCAL = f"+proj=aeqd +lat_0={LAT0} +lon_0={LON0} +datum=WGS84 +units=m +no_defs"


SITES_CRS = "EPSG:5880"  # SIRGAS 2000 / Brazil Polyconic, as restoration-site files use


@dataclass(frozen=True)
class SampleImage:
    """One Earth Engine image of the sample, in its zone's UTM grid.

    ``west``/``north`` is the north-west corner in metres; ``row`` counts the
    zone's images from the north.
    """

    zone: str
    row: int
    west: float
    north: float
    size: int = IMAGE_PX

    @property
    def crs(self) -> str:
        return mirror.utm_zone_crs(self.zone)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(west, south, east, north)`` in the zone's UTM metres."""
        extent = self.size * RES
        return self.west, self.north - extent, self.west + extent, self.north

    def image_id(self, year: int) -> str:
        """The (made-up, deterministic) Earth Engine image id for ``year``."""
        return mirror.ee_image_id("xembed-sample", SAMPLE_VERSION, self.zone, self.row, year)

    def files(self, year: int) -> list[tuple[str, int, int]]:
        """``(path relative to the root, yOff, xOff)`` of the image's 2 x 2 files."""
        return [
            (mirror.tile_path(year, self.zone, self.image_id(year), y_off, x_off), y_off, x_off)
            for y_off in (0, FILE_PX)
            for x_off in (0, FILE_PX)
        ]


def sample_images() -> tuple[SampleImage, ...]:
    """The sample's Earth Engine images (the same for every year).

    Examples
    --------
    >>> [(im.zone, im.row, im.crs) for im in sample_images()]  # doctest: +NORMALIZE_WHITESPACE
    [('22S', 0, 'EPSG:32722'), ('22S', 1, 'EPSG:32722'), ('23S', 0, 'EPSG:32723'),
     ('23S', 1, 'EPSG:32723')]
    """
    return IMAGES


# North-west corners, multiples of 10 m. The 22S pair spans x 806640..809840
# (-48° runs from x ~808380 in the south to ~808510 in the north), the 23S
# pair, 1.28 km further north, x 190160..193360 (-48° at x ~191600..191470):
# each zone has ~1.8 km of data, and the files beyond the boundary a strip.
IMAGES: tuple[SampleImage, ...] = (
    SampleImage("22S", 0, 806640.0, 7500850.0),
    SampleImage("22S", 1, 806640.0, 7497650.0),
    SampleImage("23S", 0, 190160.0, 7502130.0),
    SampleImage("23S", 1, 190160.0, 7498930.0),
)


# Site outlines in the local frame (metres east / north of -48°, -22.6°):
# (rid, start_year, parts), each part (centre, outer ring offsets, [hole ring offsets]).
_SiteSpec = tuple[int, int, list[tuple[tuple[float, float], list[tuple[float, float]], list]]]


_OCTAGON = [(85 * math.cos(a), 85 * math.sin(a)) for a in np.arange(8) * math.pi / 4]


_SITE_SPECS: list[_SiteSpec] = [
    # an ordinary site in zone 22S
    (3101, 2016, [((-900, 2450), [(-210, -170), (190, -200), (240, 60), (90, 200),
                                  (-160, 180), (-240, 20)], [])]),
    # an ordinary site in zone 23S
    (3102, 2018, [((900, 3700), [(-260, -230), (250, -250), (270, 200), (-20, 260),
                                 (-250, 180)], [])]),
    # crosses the zone boundary (-48°), both zones' file edges and the 23S images' junction
    (3103, 2019, [((0, 1150), [(-330, -200), (300, -260), (340, 180), (60, 250),
                               (-290, 220)], [])]),
    # a MultiPolygon: two plots 130 m apart
    (3104, 2020, [((750, 600), [(-150, -130), (140, -120), (150, 130), (-140, 120)], []),
                  ((1150, 750), [(-120, -110), (130, -120), (110, 120), (-130, 100)], [])]),
    # a hole: a pond left out of the restoration
    (3105, 2021, [((900, -600), [(-320, -280), (300, -300), (330, 250), (0, 320),
                                 (-300, 260)], [[(40 + x, y) for x, y in _OCTAGON]])]),
    # a third of it lies in the 2019 nodata gap
    (3106, 2018, [((-800, -1900), [(-200, -200), (210, -190), (200, 200), (-190, 190)], [])]),
    # restored from 2016, a third of it cleared again in the 2021 deforestation
    (3107, 2016, [((-900, -1000), [(-220, -200), (200, -210), (230, 180), (-200, 210)], [])]),
    # restored long before the data starts: stable forest 2017-2024
    (3108, 2013, [((1000, 2600), [(-180, -160), (170, -170), (190, 150), (-170, 170)], [])]),
    # a small, late site
    (3109, 2022, [((-350, 2650), [(-95, -85), (90, -95), (100, 85), (-85, 95)], [])]),
    # a large site across the 22S images' north-south junction
    (3110, 2019, [((-900, 300), [(-480, -420), (400, -450), (470, -100), (430, 430),
                                 (-60, 460), (-450, 380)], [])]),
]  # fmt: skip


# The 2021 deforestation (local frame, metres) and the 2019 nodata gap
# (local frame box: west, south, east, north).
DEFORESTATION = [(-1400, -1600), (-560, -1650), (-500, -1300), (-600, -1060), (-1300, -1100)]


DEFORESTATION_YEAR = 2021


GAP_BOX = (-1500.0, -2700.0, -400.0, -1950.0)


GAP_YEARS = (2019,)


TOWN = ((1100.0, -1500.0), 550.0)  # centre, radius (m) of the town's fields


RESTORATION_YEARS = 3  # pasture to forest over this many years after start_year


def sample_events() -> dict[str, tuple[Any, tuple[int, ...]]]:
    """Where and when the sample's planted events are: ``{name: (lon/lat polygon, years)}``.

    ``"deforestation"``: forest until 2020, cleared in 2021, pasture after;
    ``"nodata_gap"``: -128 in every band in 2019.

    Examples
    --------
    >>> {name: years for name, (_, years) in sample_events().items()}
    {'deforestation': (2021,), 'nodata_gap': (2019,)}
    """
    import shapely

    to_ll = transformer(LOCAL, "EPSG:4326")

    def lonlat(polygon: Any) -> Any:
        dense = shapely.segmentize(polygon, 50.0)
        return shapely.transform(dense, lambda xy: np.column_stack(to_ll.transform(*xy.T)))

    return {
        "deforestation": (lonlat(shapely.Polygon(DEFORESTATION)), (DEFORESTATION_YEAR,)),
        "nodata_gap": (lonlat(shapely.box(*GAP_BOX)), GAP_YEARS),
    }


def river_y(x: np.ndarray) -> np.ndarray:
    """The river's centre line (local frame): a meander flowing west-east."""
    return 1850.0 + 150.0 * np.sin(x / 500.0 + 0.3) + 80.0 * np.sin(x / 200.0 + 1.0)


def river_slope(x: np.ndarray) -> np.ndarray:
    return 150.0 / 500.0 * np.cos(x / 500.0 + 0.3) + 80.0 / 200.0 * np.cos(x / 200.0 + 1.0)


def demo_sites_path() -> Path:
    """The packaged ``demo_sites.geojson`` (EPSG:5880, legacy ``"crs"`` member)."""
    res = resources.files("xembed").joinpath("data", "demo_sites.geojson")
    path = Path(str(res))
    if path.is_file():
        return path
    # installed from a zip: materialise a copy in the cache
    data = res.read_bytes()
    target = cache_dir() / f"demo_sites-{hashlib.sha256(data).hexdigest()[:12]}.geojson"
    if not target.is_file():
        atomic_write(target, lambda tmp: tmp.write_bytes(data))
    return target


def build_demo_sites_geojson() -> dict[str, Any]:
    """The demo sites as a GeoJSON mapping (how the packaged file was made).

    Coordinates in EPSG:5880 (metres, two decimals), the legacy ``"crs"``
    member naming it, and ``area_ha`` measured on the ellipsoid.
    """
    import pyproj
    import shapely

    to_sites = transformer(LOCAL, SITES_CRS)
    to_ll = transformer(SITES_CRS, "EPSG:4326")
    geod = pyproj.Geod(ellps="GRS80")

    def ring(centre: tuple[float, float], offsets: list[tuple[float, float]]) -> list:
        xs = np.array([centre[0] + dx for dx, _ in offsets])
        ys = np.array([centre[1] + dy for _, dy in offsets])
        ex, ey = to_sites.transform(xs, ys)
        coords = [[round(float(x), 2), round(float(y), 2)] for x, y in zip(ex, ey, strict=True)]
        polygon = shapely.Polygon(coords)
        if not polygon.exterior.is_ccw:
            coords = coords[::-1]
        return [*coords, coords[0]]

    features = []
    for rid, start_year, parts in _SITE_SPECS:
        polygons = []
        for centre, outer, holes in parts:
            rings = [ring(centre, outer)]
            for hole in holes:
                rings.append(ring(centre, hole)[::-1])  # holes run clockwise
            polygons.append(rings)
        if len(polygons) == 1:
            geometry = {"type": "Polygon", "coordinates": polygons[0]}
        else:
            geometry = {"type": "MultiPolygon", "coordinates": polygons}
        lonlat = shapely.transform(
            shapely.geometry.shape(geometry),
            lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])),
        )
        area_ha = abs(geod.geometry_area_perimeter(lonlat)[0]) / 1e4
        features.append(
            {
                "type": "Feature",
                "properties": {"rid": rid, "start_year": start_year, "area_ha": round(area_ha, 2)},
                "geometry": geometry,
            }
        )
    return {
        "type": "FeatureCollection",
        "name": "demo_sites",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::5880"}},
        "features": features,
    }


def write_demo_sites_geojson(path: str | os.PathLike[str]) -> Path:
    """Write :func:`build_demo_sites_geojson` to ``path`` (one feature a line)."""
    obj = build_demo_sites_geojson()
    head = {k: v for k, v in obj.items() if k != "features"}
    lines = [json.dumps(head)[:-1] + ', "features": [']
    lines += [json.dumps(f) + ("," if i < len(obj["features"]) - 1 else "")
              for i, f in enumerate(obj["features"])]  # fmt: skip
    lines.append("]}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
