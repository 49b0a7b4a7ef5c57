"""The sample's landscape: land-cover fields, restoration and events, as embeddings."""

from __future__ import annotations

import json
import math
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from xembed._util import transformer
from xembed.schema import NODATA, quantize
from xembed.sources import mirror

if TYPE_CHECKING:
    from xembed.sites import Site  # noqa: F401

from xembed.sources.sample.layout import (
    DEFORESTATION,
    DEFORESTATION_YEAR,
    GAP_BOX,
    GAP_YEARS,
    LOCAL,
    RES,
    RESTORATION_YEARS,
    SAMPLE_YEARS,
    SEED,
    SITES_CRS,
    TOWN,
    ZONE_OVERLAP_DEG,
    SampleImage,
    demo_sites_path,
    river_slope,
    river_y,
)

# Land-cover classes and their share of the Voronoi fields.
_FOREST, _PASTURE, _CROP, _WATER, _URBAN, _BARE = range(6)
#: The generator's land-cover classes, by code (:func:`xembed.sources.sample.landcover`).
CLASS_NAMES = ("forest", "pasture", "crop", "water", "urban", "bare")
#: Finer classes: the six, then the special units (``landcover(..., detail=True)``).
DETAIL_NAMES = (*CLASS_NAMES, "river", "riparian", "remnant", "deforested", "restoration", "pond")


_CLASS_SHARES = {_FOREST: 0.31, _PASTURE: 0.42, _CROP: 0.24, _WATER: 0.03}


_CELL_SPACING = 450.0  # metres between field seeds (fields of ~20 ha)


_NOISE_RANK = 16


_CHUNK = 8192  # pixels computed at once


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class World:
    """Everything that does not depend on the pixel grid: directions, fields, sites."""

    def __init__(self) -> None:
        import shapely

        rng = np.random.default_rng(SEED)
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
        (tx, ty), radius = TOWN
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
        to_local = transformer("EPSG:4326", LOCAL)
        self.site_geoms = [
            shapely.transform(
                geom, lambda xy: np.column_stack(to_local.transform(xy[:, 0], xy[:, 1]))
            )
            for _, _, geom in self.sites
        ]
        self.deforestation = shapely.Polygon(DEFORESTATION)
        self.n_cells = n
        specials = ["river", "riparian", "remnant", "deforested"]
        specials += [f"site{rid}" for rid, _, _ in self.sites]
        specials += [f"pond{rid}" for rid, _, _ in self.sites]
        self.unit_index = {name: n + i for i, name in enumerate(specials)}
        self.special_offset = {name: 0.25 * _unit(rng.standard_normal(dim)) for name in specials}
        self.site_pasture_offset = {
            rid: 0.25 * _unit(rng.standard_normal(dim)) for rid, _, _ in self.sites
        }

    def locate(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The unit of each point of the local frame, and whether it is in the deforestation.

        Units as before the 2021 clearing (from then on the deforestation's
        points belong to the ``"deforested"`` unit).
        """
        import shapely

        w = self.warp
        wx = x + 60 * np.sin(y / 170 + w[0]) + 35 * np.sin((x + y) / 90 + w[1])
        wy = y + 60 * np.sin(x / 190 + w[2]) + 35 * np.sin((x - y) / 110 + w[3])
        unit = self.nearest_seed(wx, wy)  # Voronoi fields
        index = self.unit_index
        dist = np.abs(y - river_y(x)) / np.sqrt(1 + river_slope(x) ** 2)
        not_urban = self.cell_class[unit] != _URBAN
        unit[(dist < 70) & not_urban] = index["riparian"]
        unit[dist < 15] = index["river"]
        deforestation = shapely.contains_xy(self.deforestation, x, y)
        unit[deforestation] = index["remnant"]
        for (rid, _, _), geom in zip(self.sites, self.site_geoms, strict=True):
            inside = shapely.contains_xy(geom, x, y)
            unit[inside] = index[f"site{rid}"]
            for part in getattr(geom, "geoms", [geom]):
                for hole in part.interiors:
                    unit[shapely.contains_xy(shapely.Polygon(hole), x, y)] = index[f"pond{rid}"]
        return unit, deforestation

    def cover(self, year: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per unit in ``year``: its class code, detailed class code and forest weight.

        Codes index :data:`CLASS_NAMES` and :data:`DETAIL_NAMES`. The forest
        weight is the forest direction's share of the unit's vector mix: 1 for
        forest, riparian and remnant forest, ``t`` for a restoration site
        ``t`` of the way from pasture to forest, 0 elsewhere. A restoration
        site's class is forest once ``t >= 0.5`` (its vector is then nearer
        forest), else pasture; the deforestation is bare in 2021 (cleared and
        burnt: 0.4 of its vector is bare ground) and pasture after.
        """
        n = self.n_cells
        size = n + len(self.unit_index)
        base = np.empty(size, dtype=np.int8)
        detail = np.empty(size, dtype=np.int8)
        weight = np.zeros(size, dtype=np.float32)
        base[:n] = detail[:n] = self.cell_class
        weight[:n] = self.cell_class == _FOREST
        index = self.unit_index
        cleared = _BARE if year == DEFORESTATION_YEAR else _PASTURE
        fixed = {
            "river": (_WATER, "river", 0.0),
            "riparian": (_FOREST, "riparian", 1.0),
            "remnant": (_FOREST, "remnant", 1.0),
            "deforested": (cleared, "deforested", 0.0),
        }
        for rid, start, _ in self.sites:
            t = min(max((year - start) / RESTORATION_YEARS, 0.0), 1.0)
            fixed[f"site{rid}"] = (_FOREST if t >= 0.5 else _PASTURE, "restoration", t)
            fixed[f"pond{rid}"] = (_WATER, "pond", 0.0)
        for name, (cls, kind, share) in fixed.items():
            base[index[name]] = cls
            detail[index[name]] = DETAIL_NAMES.index(kind)
            weight[index[name]] = share
        return base, detail, weight

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
            if year == DEFORESTATION_YEAR:  # cleared and burnt, pasture sown
                special[3] = 0.6 * self.class_vector(_PASTURE, year, off["deforested"])
                special[3] += 0.4 * self.class_vector(_BARE, year, 0)
            else:
                special[3] = self.class_vector(_PASTURE, year, off["deforested"])
            for rid, start, _ in self.sites:
                t = min(max((year - start) / RESTORATION_YEARS, 0.0), 1.0)
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
    to_ll = transformer(SITES_CRS, "EPSG:4326")
    out = []
    for feature in obj["features"]:
        geom = shapely.geometry.shape(feature["geometry"])
        geom = shapely.transform(
            geom, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1]))
        )
        props = feature["properties"]
        out.append((int(props["rid"]), int(props["start_year"]), geom))
    return out


class ImageField:
    """The embedding field on one Earth Engine image's pixel grid."""

    def __init__(self, world: World, image: SampleImage) -> None:
        self.world, self.image = world, image
        size = image.size
        cols, rows = np.meshgrid(np.arange(size), np.arange(size))
        ux = (image.west + (cols.ravel() + 0.5) * RES).astype(np.float64)
        uy = (image.north - (rows.ravel() + 0.5) * RES).astype(np.float64)
        lon, _ = transformer(image.crs, "EPSG:4326").transform(ux, uy)
        x, y = transformer(image.crs, LOCAL).transform(ux, uy)
        lon_w, lon_e = mirror.zone_longitudes(image.zone)
        # Zone-clipped with a few pixels of overlap: without it, nearest-neighbour
        # mosaicking of two clipped lattices leaves a seam of empty pixels along
        # the boundary (index footprints stay clipped exactly, as upstream).
        self.valid = (lon >= lon_w - ZONE_OVERLAP_DEG) & (lon < lon_e + ZONE_OVERLAP_DEG)
        self.unit, self.deforestation = world.locate(x, y)
        gx0, gy0, gx1, gy1 = GAP_BOX
        self.gap = (x >= gx0) & (x < gx1) & (y >= gy0) & (y < gy1)
        phase = np.column_stack([x, y]) @ world.wave_k.T + world.wave_phase
        self.smooth = (np.sin(phase) @ world.wave_dirs).astype(np.float32)

    def quantized(self, year: int) -> np.ndarray:
        """``(64, size, size)`` int8, north-up, -128 outside the zone and in gaps."""
        world, image = self.world, self.image
        valid = self.valid
        if year in GAP_YEARS:
            valid = valid & ~self.gap
        where = np.flatnonzero(valid)
        unit = self.unit[where]
        if year >= DEFORESTATION_YEAR:
            unit = np.where(self.deforestation[where], world.unit_index["deforested"], unit)
        units = world.units(year)
        rng = np.random.default_rng([SEED, int(image.zone[:-1]), image.row, year])
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
