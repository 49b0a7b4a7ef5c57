"""The bundled demo dataset: a small synthetic mirror, generated on first use.

:func:`sample_root` returns a folder laid out exactly like the public COG
mirror (see :mod:`xembed.sources.mirror`): bottom-up int8 ZSTD GeoTIFFs in
``{year}/{zone}/{eeImageId}-{yOff}-{xOff}.tiff`` and ``aef_index.parquet``.
It is generated deterministically (about 125 MB, 20-30 s on two cores) into
the user cache (``$XEMBED_CACHE`` or the platform cache folder) the first
time it is asked for. :func:`demo_sites` loads the matching restoration sites.

The place: the Atlantic Forest of São Paulo state, Brazil, where the
boundary between UTM zones 22S and 23S (longitude -48°) crosses latitude
-22.6°. Each zone has two Earth Engine images of 320 x 320 px (3.2 km)
stacked north-south (the 23S pair 1.28 km further north), each split into
2 x 2 files of 160 x 160 px with 128 px internal tiles (:func:`sample_images`).
The 22S images reach about 1.4 km east across -48° and the 23S images as
far west, but, as in zone-clipped data, every file holds data only on its
own zone's side, plus ~30 m of overlap so the mosaic has no seam along the
boundary (the rest is -128): about 1.8 km of data per zone,
6.4 km north-south. Years 2017-2024 for every file.

The embeddings are a deterministic function of position (a local metric
frame centred on -48°, -22.6°, so both zones agree at the boundary) and year:
land-cover fields (Voronoi cells of forest, pasture, cropland and small
reservoirs, a town, a river with riparian forest) each with its own 64-d
direction and per-field offset, smooth spatial variation, cropland rotation
and a small year-to-year drift, per-pixel noise, then normalised to unit
length and quantised. On top of that:

- each demo site (``xembed/data/demo_sites.geojson``) is pasture until its
  ``start_year`` and turns into forest over the next three years (sites
  started by 2014 are forest throughout); holes in a site are ponds;
- a deforestation event: a 44 ha forest patch, overlapping a third of site
  3107, is cleared and burnt in 2021 and is pasture from 2022 on;
- a nodata gap: a 1.1 x 0.75 km block of -128 in 2019, covering part of site
  3106, like a missing orbit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xembed._util import atomic_write, cache_dir, temp_sibling, transformer
from xembed.schema import NODATA, quantize
from xembed.sources import mirror

if TYPE_CHECKING:
    from xembed.sites import Site

__all__ = [
    "SAMPLE_YEARS",
    "SampleImage",
    "cache_dir",
    "demo_sites",
    "demo_sites_path",
    "generate_sample",
    "sample_events",
    "sample_images",
    "sample_root",
]

logger = logging.getLogger(__name__)

#: Years of the sample (every file exists for every year).
SAMPLE_YEARS: tuple[int, ...] = tuple(range(2017, 2025))
#: Bump when the generated data changes: the cache folder is named after it.
SAMPLE_VERSION = 1
_DIRNAME = f"sample-v{SAMPLE_VERSION}"
_MARKER = "xembed-sample.json"
_SEED = 20250730

IMAGE_PX = 320  # an Earth Engine image (the real ones are 16384 px)
FILE_PX = IMAGE_PX // 2  # 2 x 2 files per image (the real ones are 8192 px)
BLOCKSIZE = 128  # internal tiles (the real ones are 1024 px, 8 x 8 per file)
RES = 10.0

#: Centre of the local metric frame (an azimuthal equidistant projection):
#: the zone boundary at -48° where it crosses -22.6°.
LON0, LAT0 = -48.0, -22.6
#: Data reaches this far (degrees, ~30 m here) past the zone boundary.
_ZONE_OVERLAP_DEG = 0.0003
_LOCAL = f"+proj=aeqd +lat_0={LAT0} +lon_0={LON0} +datum=WGS84 +units=m +no_defs"
_SITES_CRS = "EPSG:5880"  # SIRGAS 2000 / Brazil Polyconic, as restoration-site files use


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


# North-west corners, multiples of 10 m. The 22S pair spans x 806640..809840
# (-48° runs from x ~808380 in the south to ~808510 in the north), the 23S
# pair, 1.28 km further north, x 190160..193360 (-48° at x ~191600..191470):
# each zone has ~1.8 km of data, and the files beyond the boundary a strip.
_IMAGES: tuple[SampleImage, ...] = (
    SampleImage("22S", 0, 806640.0, 7500850.0),
    SampleImage("22S", 1, 806640.0, 7497650.0),
    SampleImage("23S", 0, 190160.0, 7502130.0),
    SampleImage("23S", 1, 190160.0, 7498930.0),
)


def sample_images() -> tuple[SampleImage, ...]:
    """The sample's Earth Engine images (the same for every year).

    Examples
    --------
    >>> [(im.zone, im.row, im.crs) for im in sample_images()]  # doctest: +NORMALIZE_WHITESPACE
    [('22S', 0, 'EPSG:32722'), ('22S', 1, 'EPSG:32722'), ('23S', 0, 'EPSG:32723'),
     ('23S', 1, 'EPSG:32723')]
    """
    return _IMAGES


# --------------------------------------------------------------------------- demo sites
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
_DEFORESTATION = [(-1400, -1600), (-560, -1650), (-500, -1300), (-600, -1060), (-1300, -1100)]
_DEFORESTATION_YEAR = 2021
_GAP_BOX = (-1500.0, -2700.0, -400.0, -1950.0)
_GAP_YEARS = (2019,)
_TOWN = ((1100.0, -1500.0), 550.0)  # centre, radius (m) of the town's fields
_RESTORATION_YEARS = 3  # pasture to forest over this many years after start_year


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

    to_ll = transformer(_LOCAL, "EPSG:4326")

    def lonlat(polygon: Any) -> Any:
        dense = shapely.segmentize(polygon, 50.0)
        return shapely.transform(dense, lambda xy: np.column_stack(to_ll.transform(*xy.T)))

    return {
        "deforestation": (lonlat(shapely.Polygon(_DEFORESTATION)), (_DEFORESTATION_YEAR,)),
        "nodata_gap": (lonlat(shapely.box(*_GAP_BOX)), _GAP_YEARS),
    }


def _river_y(x: np.ndarray) -> np.ndarray:
    """The river's centre line (local frame): a meander flowing west-east."""
    return 1850.0 + 150.0 * np.sin(x / 500.0 + 0.3) + 80.0 * np.sin(x / 200.0 + 1.0)


def _river_slope(x: np.ndarray) -> np.ndarray:
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


def demo_sites() -> list[Site]:
    """The demo restoration sites that go with the sample data.

    Ten polygons (3 to 80 ha) with ``rid`` 3101..3110, a ``start_year`` and
    ``area_ha``: one crosses the UTM zone boundary, one is a MultiPolygon,
    one has a hole, one lies partly in a nodata gap, one partly in a
    deforestation event, one is stable forest throughout.

    Examples
    --------
    >>> sites = demo_sites()
    >>> [(s.id, s.start_year) for s in sites[:3]]
    [(3101, 2016), (3102, 2018), (3103, 2019)]
    """
    from xembed.sites import load_sites

    return load_sites(demo_sites_path())


def build_demo_sites_geojson() -> dict[str, Any]:
    """The demo sites as a GeoJSON mapping (how the packaged file was made).

    Coordinates in EPSG:5880 (metres, two decimals), the legacy ``"crs"``
    member naming it, and ``area_ha`` measured on the ellipsoid.
    """
    import pyproj
    import shapely

    to_sites = transformer(_LOCAL, _SITES_CRS)
    to_ll = transformer(_SITES_CRS, "EPSG:4326")
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


# --------------------------------------------------------------------------- cache


def _source_digest() -> bytes:
    return hashlib.sha256(Path(__file__).read_bytes() + Path(mirror.__file__).read_bytes()).digest()


_SOURCE_DIGEST = _source_digest()  # of the code imported, not of later edits


def _fingerprint() -> str:
    """Hash of what the sample is made from: this generator, the writer, the sites.

    A cached sample whose marker holds another fingerprint is regenerated, so
    the cache never serves data from an older generator.
    """
    return hashlib.sha256(_SOURCE_DIGEST + demo_sites_path().read_bytes()).hexdigest()


def _is_complete(root: Path) -> bool:
    try:
        marker = json.loads((root / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("version") == SAMPLE_VERSION
        and marker.get("years") == list(SAMPLE_YEARS)
        and marker.get("fingerprint") == _fingerprint()
    )


def sample_root(*, cache: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the sample mirror, generating it on first use.

    Parameters
    ----------
    cache : path-like, optional
        The cache folder to use instead of :func:`cache_dir`.

    Returns
    -------
    pathlib.Path
        ``{cache}/sample-v1``: ``aef_index.parquet``, ``aef_index.csv`` and
        ``{year}/{zone}/*.tiff``.

    Notes
    -----
    Generation (20-40 s) writes into a temporary folder next to the
    target and renames it into place, so an interrupted run leaves no
    half-written sample, and concurrent processes each generate and the first
    rename wins (the others use it). A folder without the completion marker,
    or made by another sample version, is replaced.

    Examples
    --------
    >>> root = sample_root()
    >>> sorted(p.name for p in root.iterdir() if p.name.startswith("aef"))
    ['aef_index.csv', 'aef_index.parquet']
    """
    parent = Path(cache).expanduser() if cache is not None else cache_dir()
    root = parent / _DIRNAME
    if _is_complete(root):
        return root
    parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(parent)
    if root.exists():
        _move_aside(root)
    tmp = temp_sibling(root)
    tmp.mkdir()  # (not tempfile.mkdtemp: its 0700 mode would stick to the sample)
    try:
        message = f"xembed: generating the demo sample data in {root} (once; < 1 min)"
        logger.info(message)
        print(message, file=sys.stderr, flush=True)
        generate_sample(tmp)
        try:
            os.rename(tmp, root)
        except OSError:
            if not _is_complete(root):  # not another process's finished sample
                raise
            logger.info("another process generated %s first; using it", root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _remove_leftovers(parent: Path, max_age: float = 3600.0) -> None:
    """Delete temporary and stale sample folders that killed processes left behind."""
    now = time.time()
    for path in parent.glob(f".{_DIRNAME}.*"):
        try:
            if path.is_dir() and now - path.stat().st_mtime > max_age:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _move_aside(root: Path) -> None:
    """Remove an incomplete or outdated sample folder (rename first: atomic)."""
    if _is_complete(root):
        return
    trash = root.with_name(f".{root.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(root, trash)
    except FileNotFoundError:
        return
    logger.info("replacing the incomplete or outdated sample in %s", root)
    shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------- generation


def generate_sample(
    root: str | os.PathLike[str], *, years: tuple[int, ...] | list[int] = SAMPLE_YEARS
) -> Path:
    """Write the sample mirror into ``root`` (files, index, completion marker).

    Deterministic: the same bytes every time (on one platform and library
    set). ``years`` limits the years written (the marker is written only for
    the full set). Prefer :func:`sample_root`, which caches the result.
    """
    start = time.perf_counter()
    fingerprint = _fingerprint()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    years = tuple(int(y) for y in years)
    world = _World()
    records = []
    pending: deque[Future[dict[str, Any]]] = deque()
    # the main thread computes image-years while workers compress and write files
    # (GDAL releases the GIL); at most 8 files wait, to bound memory
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for image in _IMAGES:
            field = _ImageField(world, image)
            for year in years:
                q = field.quantized(year)
                for rel, y_off, x_off in image.files(year):
                    tile = q[:, y_off : y_off + FILE_PX, x_off : x_off + FILE_PX]
                    west, north = image.west + x_off * RES, image.north - y_off * RES
                    pending.append(
                        pool.submit(_write_file, root, rel, image, year, west, north, tile)
                    )
                while len(pending) > 8:
                    records.append(pending.popleft().result())
        records.extend(f.result() for f in pending)
    mirror.write_index(root, records)
    if years == SAMPLE_YEARS:
        marker = {
            "version": SAMPLE_VERSION,
            "years": list(SAMPLE_YEARS),
            "files": len(records),
            "fingerprint": fingerprint,
            "description": (
                "Synthetic embeddings in the layout of the AlphaEarth Foundations COG mirror, "
                "generated by xembed for demos and tests; not real data."
            ),
        }
        (root / _MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    logger.info("generated %d sample files in %.1f s", len(records), time.perf_counter() - start)
    return root


def _write_file(
    root: Path, rel: str, image: SampleImage, year: int, west: float, north: float, q: np.ndarray
) -> dict[str, Any]:
    mirror.write_tile(
        root / rel, q, crs=image.crs, west=west, north=north, res=RES, blocksize=BLOCKSIZE
    )
    return mirror.index_record(
        rel,
        crs=image.crs,
        year=year,
        utm_zone=image.zone,
        west=west,
        south=north - FILE_PX * RES,
        east=west + FILE_PX * RES,
        north=north,
    )


# Land-cover classes and their share of the Voronoi fields.
_FOREST, _PASTURE, _CROP, _WATER, _URBAN, _BARE = range(6)
_CLASS_SHARES = {_FOREST: 0.31, _PASTURE: 0.42, _CROP: 0.24, _WATER: 0.03}
_CELL_SPACING = 450.0  # metres between field seeds (fields of ~20 ha)
_NOISE_RANK = 16
_CHUNK = 8192  # pixels computed at once


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class _World:
    """Everything that does not depend on the pixel grid: directions, fields, sites."""

    def __init__(self) -> None:
        import shapely

        rng = np.random.default_rng(_SEED)
        dim = 64
        common = _unit(rng.standard_normal(dim))
        # class directions share a common component (cosine ~0.4 between classes)
        self.classes = _unit(0.8 * common + _unit(rng.standard_normal((6, dim))))
        self.years = SAMPLE_YEARS
        ny = len(self.years)
        # global drift (a random walk) and per-class annual anomalies
        steps = _unit(rng.standard_normal((ny, dim)))
        self.drift = 0.025 * np.cumsum(steps, axis=0)
        self.annual = {
            _FOREST: 0.04 * _unit(rng.standard_normal((ny, dim))),
            _PASTURE: 0.12 * _unit(rng.standard_normal((ny, dim))),
            _WATER: 0.10 * _unit(rng.standard_normal((ny, dim))),
            _URBAN: 0.03 * _unit(rng.standard_normal((ny, dim))),
            _CROP: np.zeros((ny, dim)),
            _BARE: 0.05 * _unit(rng.standard_normal((ny, dim))),
        }
        self.crop_states = 0.45 * _unit(rng.standard_normal((3, dim)))

        # Voronoi fields over the whole sample area
        gx = np.arange(-2300.0, 2300.0 + 1, _CELL_SPACING)
        gy = np.arange(-3800.0, 5000.0 + 1, _CELL_SPACING)
        sx, sy = np.meshgrid(gx, gy)
        jitter = rng.uniform(-0.4, 0.4, (2, *sx.shape)) * _CELL_SPACING
        self.seeds = np.column_stack([(sx + jitter[0]).ravel(), (sy + jitter[1]).ravel()])
        self.seed_grid = (gx[0], gy[0], len(gx), len(gy))
        n = len(self.seeds)
        shares = np.array(list(_CLASS_SHARES.values()))
        cell_class = rng.choice(list(_CLASS_SHARES), size=n, p=shares / shares.sum())
        (tx, ty), radius = _TOWN
        cell_class[np.hypot(self.seeds[:, 0] - tx, self.seeds[:, 1] - ty) < radius] = _URBAN
        self.cell_class = cell_class
        self.cell_offset = 0.3 * _unit(rng.standard_normal((n, dim)))
        state = rng.integers(0, 3, n)
        crop_state = np.empty((ny, n), dtype=np.intp)
        for i in range(ny):
            change = rng.random(n) < 0.3
            state = np.where(change, (state + rng.integers(1, 3, n)) % 3, state)
            crop_state[i] = state
        self.crop_state = crop_state
        self.warp = rng.uniform(0, 2 * math.pi, 4)

        # smooth spatial variation: plane waves of 250 m to 4 km
        k = 8
        wavelength = np.exp(rng.uniform(math.log(250), math.log(4000), k))
        angle = rng.uniform(0, math.pi, k)
        self.wave_k = (
            2 * math.pi / wavelength[:, None] * np.column_stack([np.cos(angle), np.sin(angle)])
        )
        self.wave_phase = rng.uniform(0, 2 * math.pi, k)
        self.wave_dirs = 0.1 * _unit(rng.standard_normal((k, dim)))
        self.noise_basis = (0.05 * _unit(rng.standard_normal((_NOISE_RANK, dim)))).astype(
            np.float32
        )

        # special units: river, riparian forest, deforestation, sites, ponds
        self.sites = _read_sites()
        to_local = transformer("EPSG:4326", _LOCAL)
        self.site_geoms = [
            shapely.transform(
                geom, lambda xy: np.column_stack(to_local.transform(xy[:, 0], xy[:, 1]))
            )
            for _, _, geom in self.sites
        ]
        self.deforestation = shapely.Polygon(_DEFORESTATION)
        self.n_cells = n
        specials = ["river", "riparian", "remnant", "deforested"]
        specials += [f"site{rid}" for rid, _, _ in self.sites]
        specials += [f"pond{rid}" for rid, _, _ in self.sites]
        self.unit_index = {name: n + i for i, name in enumerate(specials)}
        self.special_offset = {name: 0.25 * _unit(rng.standard_normal(dim)) for name in specials}
        self.site_pasture_offset = {
            rid: 0.25 * _unit(rng.standard_normal(dim)) for rid, _, _ in self.sites
        }

    def nearest_seed(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Index of the nearest field seed to each point.

        Seeds sit within 0.4 spacing of their grid node, so the nearest one is
        always among the 5 x 5 seeds around the point's nearest node.
        """
        x0, y0, nx, ny = self.seed_grid
        ci = np.rint((x - x0) / _CELL_SPACING).astype(np.intp)
        cj = np.rint((y - y0) / _CELL_SPACING).astype(np.intp)
        best = np.full(x.shape, np.inf)
        nearest = np.zeros(x.shape, dtype=np.intp)
        for dj in range(-2, 3):
            for di in range(-2, 3):
                i = np.clip(cj + dj, 0, ny - 1) * nx + np.clip(ci + di, 0, nx - 1)
                d = (x - self.seeds[i, 0]) ** 2 + (y - self.seeds[i, 1]) ** 2
                closer = d < best
                nearest[closer] = i[closer]
                best[closer] = d[closer]
        return nearest

    def class_vector(self, cls: int, year: int, offset: np.ndarray | float) -> np.ndarray:
        i = self.years.index(year)
        return self.classes[cls] + offset + self.annual[cls][i]

    @cached_property
    def _units_by_year(self) -> dict[int, np.ndarray]:
        out = {}
        for year in self.years:
            i = self.years.index(year)
            cls = self.cell_class
            units = self.classes[cls] + self.cell_offset
            for c in (_FOREST, _PASTURE, _WATER, _URBAN):
                units[cls == c] += self.annual[c][i]
            crop = cls == _CROP
            units[crop] += self.crop_states[self.crop_state[i][crop]]
            special = np.zeros((len(self.unit_index), units.shape[1]))
            off = self.special_offset
            special[0] = self.class_vector(_WATER, year, off["river"])
            special[1] = self.class_vector(_FOREST, year, off["riparian"])
            special[2] = self.class_vector(_FOREST, year, off["remnant"])
            if year == _DEFORESTATION_YEAR:  # cleared and burnt, pasture sown
                special[3] = 0.6 * self.class_vector(_PASTURE, year, off["deforested"])
                special[3] += 0.4 * self.class_vector(_BARE, year, 0)
            else:
                special[3] = self.class_vector(_PASTURE, year, off["deforested"])
            for rid, start, _ in self.sites:
                t = min(max((year - start) / _RESTORATION_YEARS, 0.0), 1.0)
                pasture = self.class_vector(_PASTURE, year, self.site_pasture_offset[rid])
                forest = self.class_vector(_FOREST, year, off[f"site{rid}"])
                site = (1 - t) * pasture + t * forest
                special[self.unit_index[f"site{rid}"] - self.n_cells] = site
                pond = self.class_vector(_WATER, year, off[f"pond{rid}"])
                special[self.unit_index[f"pond{rid}"] - self.n_cells] = pond
            out[year] = (np.concatenate([units, special]) + self.drift[i]).astype(np.float32)
        return out

    def units(self, year: int) -> np.ndarray:
        """``(n_units, 64)`` float32 vectors of every field/special unit in ``year``."""
        return self._units_by_year[year]


def _read_sites() -> list[tuple[int, int, Any]]:
    """``(rid, start_year, lon/lat geometry)`` of the packaged demo sites."""
    import shapely

    obj = json.loads(demo_sites_path().read_text(encoding="utf-8"))
    to_ll = transformer(_SITES_CRS, "EPSG:4326")
    out = []
    for feature in obj["features"]:
        geom = shapely.geometry.shape(feature["geometry"])
        geom = shapely.transform(
            geom, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1]))
        )
        props = feature["properties"]
        out.append((int(props["rid"]), int(props["start_year"]), geom))
    return out


class _ImageField:
    """The embedding field on one Earth Engine image's pixel grid."""

    def __init__(self, world: _World, image: SampleImage) -> None:
        import shapely

        self.world, self.image = world, image
        size = image.size
        cols, rows = np.meshgrid(np.arange(size), np.arange(size))
        ux = (image.west + (cols.ravel() + 0.5) * RES).astype(np.float64)
        uy = (image.north - (rows.ravel() + 0.5) * RES).astype(np.float64)
        lon, _ = transformer(image.crs, "EPSG:4326").transform(ux, uy)
        x, y = transformer(image.crs, _LOCAL).transform(ux, uy)
        lon_w, lon_e = mirror.zone_longitudes(image.zone)
        # Zone-clipped with a few pixels of overlap: without it, nearest-neighbour
        # mosaicking of two clipped lattices leaves a seam of empty pixels along
        # the boundary (index footprints stay clipped exactly, as upstream).
        self.valid = (lon >= lon_w - _ZONE_OVERLAP_DEG) & (lon < lon_e + _ZONE_OVERLAP_DEG)
        w = world.warp
        wx = x + 60 * np.sin(y / 170 + w[0]) + 35 * np.sin((x + y) / 90 + w[1])
        wy = y + 60 * np.sin(x / 190 + w[2]) + 35 * np.sin((x - y) / 110 + w[3])
        unit = world.nearest_seed(wx, wy)  # Voronoi fields
        index = world.unit_index
        dist = np.abs(y - _river_y(x)) / np.sqrt(1 + _river_slope(x) ** 2)
        not_urban = world.cell_class[unit] != _URBAN
        unit[(dist < 70) & not_urban] = index["riparian"]
        unit[dist < 15] = index["river"]
        self.deforestation = shapely.contains_xy(world.deforestation, x, y)
        unit[self.deforestation] = index["remnant"]
        for (rid, _, _), geom in zip(world.sites, world.site_geoms, strict=True):
            inside = shapely.contains_xy(geom, x, y)
            unit[inside] = index[f"site{rid}"]
            for part in getattr(geom, "geoms", [geom]):
                for hole in part.interiors:
                    unit[shapely.contains_xy(shapely.Polygon(hole), x, y)] = index[f"pond{rid}"]
        self.unit = unit
        gx0, gy0, gx1, gy1 = _GAP_BOX
        self.gap = (x >= gx0) & (x < gx1) & (y >= gy0) & (y < gy1)
        phase = np.column_stack([x, y]) @ world.wave_k.T + world.wave_phase
        self.smooth = (np.sin(phase) @ world.wave_dirs).astype(np.float32)

    def quantized(self, year: int) -> np.ndarray:
        """``(64, size, size)`` int8, north-up, -128 outside the zone and in gaps."""
        world, image = self.world, self.image
        valid = self.valid
        if year in _GAP_YEARS:
            valid = valid & ~self.gap
        where = np.flatnonzero(valid)
        unit = self.unit[where]
        if year >= _DEFORESTATION_YEAR:
            unit = np.where(self.deforestation[where], world.unit_index["deforested"], unit)
        units = world.units(year)
        rng = np.random.default_rng([_SEED, int(image.zone[:-1]), image.row, year])
        noise = rng.standard_normal((where.size, _NOISE_RANK), dtype=np.float32)
        q = np.full((image.size * image.size, 64), NODATA, dtype=np.int8)
        # in chunks: fresh large arrays are slow to touch, small ones get reused
        for start in range(0, where.size, _CHUNK):
            part = slice(start, start + _CHUNK)
            vectors = units[unit[part]]
            vectors += self.smooth[where[part]]
            vectors += noise[part] @ world.noise_basis
            vectors /= np.sqrt(np.einsum("ij,ij->i", vectors, vectors))[:, None]
            q[where[part]] = quantize(vectors)
        return np.ascontiguousarray(q.T).reshape(64, image.size, image.size)
