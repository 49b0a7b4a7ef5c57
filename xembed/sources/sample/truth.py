"""The sample's ground truth: its land-cover map and tree cover, on any grid.

The generator (:mod:`xembed.sources.sample.world`) makes every pixel's
embedding from the *unit* it belongs to (a field of some class, the river,
a restoration site, ...), so it knows the land cover the embeddings were
made from. These functions evaluate that truth at the pixel centres of a
site's grid or a cube, for measuring classifiers and regressors against it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import numpy as np
import xarray as xr

from xembed._util import transformer
from xembed.sources.sample.layout import DEFORESTATION_YEAR, LOCAL, SAMPLE_YEARS
from xembed.sources.sample.world import CLASS_NAMES, DETAIL_NAMES, World

__all__ = ["CLASS_NAMES", "DETAIL_NAMES", "landcover", "tree_cover"]


@functools.lru_cache(maxsize=1)
def _world() -> World:
    return World()


def _frame(where: Any) -> tuple[np.ndarray, np.ndarray, Any, tuple[int, ...] | None]:
    """Pixel-centre ``y``, ``x``, the CRS, and the years of ``where`` (a cube) or None."""
    if isinstance(where, (xr.Dataset, xr.DataArray)):
        import rioxarray  # noqa: F401  (registers .rio)

        crs = where.rio.crs
        if crs is None or "x" not in where.coords or "y" not in where.coords:
            raise ValueError(
                "where is an xarray object without x/y coordinates and a CRS; pass a cube "
                "from xembed.open_embeddings (or a Site)"
            )
        years = tuple(int(y) for y in where["year"].values) if "year" in where.coords else None
        return np.asarray(where["y"].values), np.asarray(where["x"].values), crs, years
    from xembed.grid import target_grid
    from xembed.sites import as_site

    grid, _ = target_grid(as_site(where).geometry)
    return grid.y, grid.x, grid.crs, None


def _years(year: int | Iterable[int] | None, cube_years: tuple[int, ...] | None) -> list[int]:
    if year is None:
        if cube_years is None:
            raise ValueError(
                "year is missing: pass the year (e.g. 2020) or years of the truth "
                "(a Site has no years; a cube's own years are the default)"
            )
        out = list(cube_years)
    else:
        out = [int(year)] if isinstance(year, (int, np.integer)) else [int(y) for y in year]
    bad = [y for y in out if y not in SAMPLE_YEARS]
    if bad:
        raise ValueError(
            f"years {bad} are outside the sample ({SAMPLE_YEARS[0]}-{SAMPLE_YEARS[-1]}); "
            "the sample's truth is known for its years only"
        )
    return out


def _evaluate(where: Any, year: Any, pick: int, name: str) -> xr.DataArray:
    """One of the :meth:`World.cover` arrays at the pixels of ``where`` per year."""
    ys, xs, crs, cube_years = _frame(where)
    years = _years(year, cube_years)
    gx, gy = np.meshgrid(xs, ys)
    lx, ly = transformer(crs, LOCAL).transform(gx.ravel(), gy.ravel())
    world = _world()
    unit, cleared = world.locate(np.asarray(lx, dtype=np.float64), np.asarray(ly, dtype=np.float64))
    layers = []
    for y in years:
        units = (
            np.where(cleared, world.unit_index["deforested"], unit)
            if (y >= DEFORESTATION_YEAR)
            else unit
        )
        layers.append(world.cover(y)[pick][units].reshape(gx.shape))
    out = xr.DataArray(
        np.stack(layers),
        dims=("year", "y", "x"),
        coords={"year": years, "y": ys, "x": xs},
        name=name,
    )
    out = out.rio.write_crs(crs)
    single = year is not None and isinstance(year, (int, np.integer))
    return out.isel(year=0) if single else out


def landcover(
    where: Any, year: int | Iterable[int] | None = None, *, detail: bool = False
) -> xr.DataArray:
    """The sample's true land-cover classes at the pixels of a site or cube.

    Parameters
    ----------
    where : Site, site-like or cube
        A site (anything :func:`xembed.sites.as_site` takes: its grid is the
        one :func:`xembed.open_embeddings` gives it) or a cube/DataArray with
        ``x``/``y`` and a CRS (its pixel centres).
    year : int or iterable of int, optional
        The year (a ``(y, x)`` map) or years (``(year, y, x)``); default the
        cube's years. The truth changes with the year: restoration sites turn
        from pasture to forest over the 3 years after their ``start_year``,
        the deforestation patch is cleared in 2021.
    detail : bool
        Codes of :data:`DETAIL_NAMES` (river, riparian, remnant forest,
        deforested, restoration, pond apart) instead of :data:`CLASS_NAMES`.

    Returns
    -------
    xarray.DataArray
        int8 class codes, with CF ``flag_values`` and ``flag_meanings``
        (the class names, space separated) in its attrs, and the CRS.

    Notes
    -----
    :data:`CLASS_NAMES` are the generator's six classes (codes 0-5): forest
    (with riparian and remnant forest), pasture, crop, water (with the river
    and ponds), urban, bare. A restoration site is pasture until its vector
    is nearer forest (``t >= 0.5`` of the way, i.e. from ``start_year + 2``),
    then forest; the deforestation is bare in 2021 (cleared and burnt) and
    pasture after. The truth is defined at every point of the generator's
    landscape, including pixels with nodata (the 2019 gap) or outside the
    sample's files. A site across the zone boundary: the truth is at its
    cube's pixel centres, while the data there is the other zone's nearest
    pixel (up to 5 m away).

    Examples
    --------
    >>> import xembed
    >>> site = xembed.demo_sites()[1]  # restoration from 2018
    >>> truth = landcover(site, [2017, 2024])
    >>> truth.dims, truth.attrs["flag_meanings"]
    (('year', 'y', 'x'), 'forest pasture crop water urban bare')
    >>> cube = xembed.open_embeddings(site, [2017, 2024])
    >>> inside = (cube.coverage > 0.5).values
    >>> [CLASS_NAMES[int(np.bincount(t.values[inside]).argmax())] for t in truth]
    ['pasture', 'forest']
    """
    names = DETAIL_NAMES if detail else CLASS_NAMES
    out = _evaluate(where, year, 1 if detail else 0, "landcover")
    out.attrs.update(
        long_name="true land cover of the xembed sample",
        flag_values=np.arange(len(names), dtype=np.int8),
        flag_meanings=" ".join(names),
    )
    return out


def tree_cover(where: Any, year: int | Iterable[int] | None = None) -> xr.DataArray:
    """The sample's true tree-cover fraction (0..1) at the pixels of a site or cube.

    Defined from the generator: the forest direction's share of the vector
    mix each pixel's embedding is made from. 1 in forest, riparian and remnant
    forest; ``t`` in a restoration site ``t`` of the way from pasture to forest
    (``t = (year - start_year) / 3``, clipped to 0..1); 0 everywhere else
    (pasture, crop, water, urban, the deforestation from 2021). The per-field
    offsets, smooth variation and noise of the embeddings are not tree cover.

    Parameters
    ----------
    where, year
        As for :func:`landcover`.

    Returns
    -------
    xarray.DataArray
        float32 fractions, ``(y, x)`` for one year or ``(year, y, x)``.

    Examples
    --------
    >>> import xembed
    >>> site = xembed.demo_sites()[1]  # restoration from 2018
    >>> cover = tree_cover(site, range(2017, 2022))
    >>> inside = (xembed.open_embeddings(site, 2017).coverage == 1).values
    >>> [round(float(np.median(c.values[inside])), 2) for c in cover]
    [0.0, 0.0, 0.33, 0.67, 1.0]
    """
    out = _evaluate(where, year, 2, "tree_cover")
    out.attrs.update(long_name="true tree-cover fraction of the xembed sample", units="1")
    return out
