"""Similarity search: the cosine of every pixel with a query vector, pixel or polygon."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from xembed.ops._base import embeddings_of, year_position
from xembed.ops.zonal import grid_of
from xembed.schema import PIXEL_SIZE

__all__ = ["search"]


def _query_vector(obj: xr.Dataset | xr.DataArray, emb: xr.DataArray, query: Any, year: int | None):
    """The query as a (band,) DataArray (lazy when it comes from the cube)."""
    import shapely

    if isinstance(query, xr.DataArray) and query.dims == ("band",):
        return query
    if isinstance(query, shapely.Geometry) or (isinstance(query, Mapping) and "type" in query):
        from xembed.grid import coverage_fraction, project
        from xembed.sites import as_site

        geometry = project(as_site(query).geometry, "EPSG:4326", obj.rio.crs)
        cov = coverage_fraction(geometry, grid_of(obj))
        if not cov.any():
            raise ValueError("the query polygon does not overlap the cube; draw it inside the cube")
        weights = xr.DataArray(cov, dims=("y", "x"))
        sel = emb.isel(year=0) if year is None else emb.sel(year=year)
        return sel.weighted(weights).mean(("y", "x")).drop_vars("year")
    if isinstance(query, tuple) and len(query) == 2:
        x, y = query
        sel = emb.isel(year=0) if year is None else emb.sel(year=year)
        xs, ys = emb["x"].values, emb["y"].values
        half = abs(float(xs[1] - xs[0])) / 2 if xs.size > 1 else PIXEL_SIZE / 2
        if not (
            xs.min() - half <= x <= xs.max() + half and ys.min() - half <= y <= ys.max() + half
        ):
            raise ValueError(
                f"query location {query!r} is outside the cube (x {xs.min() - half}.."
                f"{xs.max() + half}, y {ys.min() - half}..{ys.max() + half}, in {obj.rio.crs})"
            )
        point = sel.sel(x=x, y=y, method="nearest")
        return point.drop_vars([c for c in point.coords if c != "band"])
    vector = np.asarray(query, dtype=np.float64)
    if vector.shape != (emb.sizes["band"],):
        raise ValueError(
            f"query must be a {emb.sizes['band']}-vector, an (x, y) location in the cube's CRS, "
            f"or a polygon in EPSG:4326; got an array of shape {vector.shape}"
        )
    return xr.DataArray(vector, dims="band", coords={"band": emb["band"]})


def search(obj: xr.Dataset | xr.DataArray, query: Any, *, year: int | None = None) -> xr.DataArray:
    """Cosine similarity of every pixel with a query embedding.

    Earth Engine's similarity-search tutorial: pick examples of what you
    look for, average their embeddings, map the cosine everywhere.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        A cube (use ``clip=False`` to search beyond the polygon).
    query : array-like, (x, y) tuple or polygon
        A 64-vector; a location ``(x, y)`` in the cube's CRS (its pixel's
        vector); or a polygon in EPSG:4326 (its coverage-weighted mean).
    year : int, optional
        The year a location or polygon query is taken from (default: the
        cube's first year).

    Returns
    -------
    xarray.DataArray
        ``(year, y, x)`` float32 cosine in [-1, 1], lazy if the cube is.

    Examples
    --------
    >>> from xembed.testing import make_cube, planted_vector
    >>> cube = make_cube(years=(2020, 2021), shape=(8, 8))
    >>> hits = search(cube, planted_vector())
    >>> float(hits.where(cube.coverage > 0).min())
    1.0
    """
    emb = embeddings_of(obj)
    if year is not None:
        year_position(emb, year, "year")
    # float64 throughout, so a pixel equal to the query scores exactly 1 in float32.
    q = _query_vector(obj, emb, query, year).astype(np.float64)
    pixels = emb.astype(np.float64)
    norm = (pixels**2).sum("band", skipna=False) ** 0.5
    q_norm = (q**2).sum("band") ** 0.5
    dot = (pixels * q).sum("band", skipna=False)
    out = (dot / (norm.where(norm > 0) * q_norm.where(q_norm > 0))).clip(-1.0, 1.0)
    out = out.astype(np.float32)
    out.name = "search"
    out.attrs = {"long_name": "cosine similarity with the query", "units": "1"}
    return out
