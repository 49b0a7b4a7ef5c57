"""Test helpers for xembed and for users' own pipelines.

- :func:`make_cube`: small in-memory cubes with planted, hand-checkable patterns;
- :func:`raise_if_dask_computes`: a counting dask scheduler that proves laziness;
- :func:`serve_mirror`: a local HTTP server for a mirror folder, with fault
  injection (5xx, slow, truncated, reset), latency and a throttled link;
- :func:`random_sites`: many small random sites inside a mirror folder's footprint;
- :func:`fake_earthengine`: a local Earth Engine REST server over a mirror
  folder, so Earth Engine pipelines run offline (see :mod:`xembed.testing.earthengine`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pyproj
import shapely
import xarray as xr

from xembed._util import transformer
from xembed.testing.earthengine import (
    FakeEarthEngine,
    FakeRequest,
    all_requests_fail,
    fake_earthengine,
    first_requests_fail,
)
from xembed.testing.mirror_server import Fault, MirrorRequest, MirrorServer, serve_mirror

__all__ = [
    "CountingScheduler",
    "FakeEarthEngine",
    "FakeRequest",
    "Fault",
    "MirrorRequest",
    "MirrorServer",
    "all_requests_fail",
    "fake_earthengine",
    "first_requests_fail",
    "make_cube",
    "planted_vector",
    "raise_if_dask_computes",
    "random_sites",
    "serve_mirror",
]


def planted_vector(seed: int = 0) -> np.ndarray:
    """The unit vector :func:`make_cube` plants inside its polygon.

    Examples
    --------
    >>> float(np.linalg.norm(planted_vector()))  # doctest: +NUMBER
    1.0
    """
    v = np.random.default_rng([seed, 1]).normal(size=64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def make_cube(
    years: Sequence[int] = (2020, 2021),
    shape: tuple[int, int] = (32, 48),
    *,
    chunks: Mapping[str, int] | None = None,
    seed: int = 0,
    crs: str = "EPSG:32722",
    origin: tuple[float, float] = (600_000.0, 7_500_000.0),
    clip: bool = False,
) -> xr.Dataset:
    """A small cube in the schema of :func:`xembed.open_embeddings`.

    Planted pattern: the site polygon is the grid inset by a quarter of its
    size on each side, with a triangle cut off so that some pixels are
    partly covered. Every pixel that touches the polygon holds
    :func:`planted_vector` (``seed``) in every year, so the polygon mean is
    exactly that vector and its cosine between years is exactly 1. The other
    pixels hold independent random unit vectors.

    Parameters
    ----------
    years, shape
        Cube size: one slice per year, ``shape = (ny, nx)`` pixels of 10 m.
    chunks : mapping, optional
        Dask chunks (e.g. ``{"y": 16}``); ``None`` gives numpy-backed data.
    seed : int
        Seed of the random vectors and the planted vector.
    crs, origin
        The UTM CRS and the (west, north) corner in metres (multiples of 10).
    clip : bool
        Mask pixels outside the polygon with NaN, as ``open_embeddings`` does.

    Examples
    --------
    >>> cube = make_cube(years=(2020, 2021), shape=(8, 8))
    >>> dict(cube.embeddings.sizes)
    {'year': 2, 'band': 64, 'y': 8, 'x': 8}
    >>> bool(np.allclose(cube.embed.polygon_mean().isel(year=0), planted_vector()))
    True
    """
    from xembed.grid import Grid
    from xembed.sites import Site
    from xembed.sources.common import build_cube

    ny, nx = shape
    west, north = origin
    grid = Grid(crs=pyproj.CRS(crs), west=west, north=north, width=nx, height=ny)
    x0, x1 = west + 10 * nx / 4, west + 10 * 3 * nx / 4
    y0, y1 = north - 10 * 3 * ny / 4, north - 10 * ny / 4
    cut = 10 * min(nx, ny) / 8 + 3.3  # off the lattice: partial pixels
    polygon = shapely.Polygon(
        [(x0, y0), (x1, y0), (x1, y1 - cut), (x1 - cut, y1), (x0, y1), (x0, y0)]
    )
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(len(years), 64, ny, nx)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    to_lonlat = transformer(crs, "EPSG:4326")
    site = Site(
        id="test",
        start_year=int(years[0]),
        geometry=shapely.transform(polygon, lambda c: np.column_stack(to_lonlat.transform(*c.T))),
    )
    ds = build_cube(
        data,  # type: ignore[arg-type]
        grid,
        polygon,
        tuple(int(y) for y in years),
        site=site,
        clip=False,
        attrs={"source": "synthetic"},
    )
    inside = ds["coverage"] > 0
    ds["embeddings"] = ds["embeddings"].where(
        ~inside, xr.DataArray(planted_vector(seed), dims="band")
    )
    if clip:
        ds["embeddings"] = ds["embeddings"].where(inside)
        ds.attrs["clipped"] = 1
    ds["embeddings"] = ds["embeddings"].astype(np.float32)
    if chunks is not None:
        ds = ds.chunk(dict(chunks))
    return ds


def random_sites(
    root: str | os.PathLike[str],
    n: int,
    *,
    seed: int = 0,
    area_ha: tuple[float, float] = (1.0, 10.0),
    margin_m: float = 300.0,
) -> list[Any]:
    """``n`` small demo-like sites inside the data of a local mirror folder.

    Each site is a polygon of 5-8 irregular vertices with an area drawn
    log-uniformly from ``area_ha``, placed uniformly at random at least
    ``margin_m`` inside the footprint that every year of the mirror's index
    covers. Ids are ``1..n``; the same ``seed`` gives the same sites.

    Examples
    --------
    >>> import xembed
    >>> sites = random_sites(xembed.sample_root(), 3, seed=1)
    >>> [s.id for s in sites], all(s.geometry.area < 1e-5 for s in sites)  # degrees^2
    ([1, 2, 3], True)
    """
    import geopandas as gpd

    from xembed.sites import Site

    index = gpd.read_parquet(Path(root) / "aef_index.parquet")
    footprints = [shapely.union_all(g.geometry.to_numpy()) for _, g in index.groupby("year")]
    inside = shapely.intersection_all(footprints)
    lat = inside.centroid.y
    metre = (1 / (111_320 * np.cos(np.radians(lat))), 1 / 110_540)  # degrees per metre (x, y)
    inside = inside.buffer(-margin_m * max(metre))
    if inside.is_empty:
        raise ValueError(f"the mirror at {str(root)!r} has no footprint {margin_m} m inside")
    rng = np.random.default_rng(seed)
    west, south, east, north = inside.bounds
    sites: list[Any] = []
    while len(sites) < n:
        centre = shapely.Point(rng.uniform(west, east), rng.uniform(south, north))
        k = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        ring = np.column_stack([np.cos(angles), np.sin(angles)]) * rng.uniform(0.7, 1.3, (k, 1))
        area = np.exp(rng.uniform(*np.log(np.multiply(area_ha, 1e4))))
        shape = shapely.Polygon(ring)
        if not shape.is_valid or not shape.area > 0:
            continue
        scale = np.sqrt(area / shape.area)
        polygon = shapely.affinity.affine_transform(
            shape, [scale * metre[0], 0, 0, scale * metre[1], centre.x, centre.y]
        )
        if inside.contains(polygon):
            sites.append(Site(id=len(sites) + 1, start_year=None, geometry=polygon))
    return sites


class CountingScheduler:
    """A dask scheduler that counts computes and fails past ``max_computes``."""

    def __init__(self, max_computes: int = 0) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"Too many dask computations were triggered: {self.total_computes} > "
                f"{self.max_computes} allowed"
            )
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[CountingScheduler]:
    """Fail if code inside computes anything with dask more than allowed.

    Examples
    --------
    >>> cube = make_cube(shape=(8, 8), chunks={"y": 4})
    >>> with raise_if_dask_computes():
    ...     mean = cube.embed.polygon_mean()  # builds, computes nothing
    """
    scheduler = CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler
