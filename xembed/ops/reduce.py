"""Polygon statistics: a site's pixels reduced per year and band, exactextract's way.

The numpy kernel :func:`weighted_quantile` (the weighted median), the
coverage-weighted reducers of :func:`polygon_mean` and the notebook's table
:func:`to_frame`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from xembed.ops._base import embeddings_of, unit, weights_of

__all__ = ["REDUCERS", "Reducer", "is_means", "polygon_mean", "to_frame", "weighted_quantile"]

Reducer = Literal["mean", "median", "std", "min", "max", "count"]
REDUCERS: tuple[str, ...] = ("mean", "median", "std", "min", "max", "count")


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Weighted quantile over the last axis, exactextract's definition.

    Equal values are pooled (their weights added), then sorted; with weights
    ``w`` and their running sum ``S``, the ``i``-th distinct value (0-based)
    sits at ``s_i = i w_i + (n - 1) S_{i-1}`` on a scale of ``S_n (n - 1)``,
    and the quantile interpolates linearly between neighbours (for equal
    weights and distinct values this is numpy's default "linear" quantile).
    NaN values and zero weights are left out; no values gives NaN.

    Examples
    --------
    >>> import numpy as np
    >>> weighted_quantile(np.array([1.0, 2.0, 3.0, 4.0]), np.ones(4), 0.5)
    array(2.5)
    >>> weighted_quantile(np.array([[1.0, 2.0, np.nan]]), np.array([1.0, 3.0, 1.0]), 0.5)
    array([1.5])
    >>> weighted_quantile(np.array([1.0, 1.0, 2.0]), np.ones(3), 0.5)  # 1 weighs 2
    array(1.5)
    """
    values = np.asarray(values, dtype=np.float64)
    weights = np.broadcast_to(np.asarray(weights, dtype=np.float64), values.shape)
    out = np.full(values.shape[:-1], np.nan)
    flat_v = values.reshape(-1, values.shape[-1])
    flat_w = weights.reshape(-1, values.shape[-1])
    flat_out = out.reshape(-1)
    for i in range(flat_v.shape[0]):
        keep = ~np.isnan(flat_v[i]) & (flat_w[i] > 0)
        x, w = flat_v[i][keep], flat_w[i][keep]
        n = x.size
        if n == 0:
            continue
        if n == 1:
            flat_out[i] = x[0]
            continue
        # Equal values pool their weights first, as exactextract does (quantised
        # data repeats values all the time).
        x, inverse = np.unique(x, return_inverse=True)
        w = np.bincount(inverse, weights=w)
        n = x.size
        if n == 1:
            flat_out[i] = x[0]
            continue
        cum = np.cumsum(w)
        s = np.arange(n) * w + (n - 1) * np.concatenate(([0.0], cum[:-1]))
        target = q * cum[-1] * (n - 1)
        right = int(np.searchsorted(s, target, side="right"))
        if right >= n:
            flat_out[i] = x[-1]
        else:
            left = right - 1
            flat_out[i] = x[left] + (target - s[left]) * (x[right] - x[left]) / (s[right] - s[left])
    return out


def _median_over_pixels(emb: xr.DataArray, weights: xr.DataArray) -> xr.DataArray:
    stacked = emb.stack(pixel=("y", "x"))
    w = weights.stack(pixel=("y", "x"))
    if stacked.chunks is not None:
        stacked = stacked.chunk({"pixel": -1})
    if w.chunks is not None:
        w = w.chunk({"pixel": -1})
    return xr.apply_ufunc(
        weighted_quantile,
        stacked,
        w,
        0.5,
        input_core_dims=[["pixel"], ["pixel"], []],
        dask="parallelized",
        output_dtypes=[np.float64],
    ).drop_vars("pixel", errors="ignore")


def polygon_mean(
    obj: xr.Dataset | xr.DataArray,
    *,
    reducer: Reducer = "mean",
    normalize: bool = False,
) -> xr.DataArray:
    """A statistic of the site's pixels per year and band, weighted by coverage.

    Each pixel counts with the fraction of its area inside the polygon
    (``coverage``); pixels without data (NaN) are left out. The definitions
    are exactextract's:

    - ``"mean"``: sum(coverage * value) / sum(coverage);
    - ``"std"``: the coverage-weighted population standard deviation;
    - ``"median"``: the coverage-weighted median (:func:`weighted_quantile`);
    - ``"min"``/``"max"``: over pixels that touch the polygon (coverage > 0);
    - ``"count"``: sum of coverage of the pixels with data, i.e. the
      polygon's area with data in pixels (100 m^2 each).

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        A cube, or embeddings (weighted by a ``coverage`` coordinate if any,
        else equally).
    reducer : {"mean", "median", "std", "min", "max", "count"}
    normalize : bool
        Divide each year's result by its length, giving unit vectors (only
        for ``"mean"`` and ``"median"``). The mean of unit vectors is
        shorter than 1 (about 0.96 for a uniform site).

    Returns
    -------
    xarray.DataArray
        ``(year, band)`` float, lazy if the cube is. Years without a valid
        pixel give NaN (``count`` gives 0).

    Examples
    --------
    >>> import numpy as np
    >>> from xembed.testing import make_cube, planted_vector
    >>> cube = make_cube(years=(2020, 2021), shape=(8, 8))
    >>> mean = polygon_mean(cube)
    >>> mean.dims, mean.shape
    (('year', 'band'), (2, 64))
    >>> bool(np.allclose(mean.isel(year=1), planted_vector()))
    True
    >>> float(polygon_mean(cube, reducer="std").max()) < 1e-6  # constant inside
    True
    """
    if reducer not in REDUCERS:
        raise ValueError(f"unknown reducer {reducer!r}; expected one of {list(REDUCERS)}")
    if normalize and reducer not in ("mean", "median"):
        raise ValueError(f"normalize=True needs reducer 'mean' or 'median', not {reducer!r}")
    emb = embeddings_of(obj)
    weights = weights_of(obj, emb)
    dims = ("y", "x")
    if reducer == "mean":
        result = emb.weighted(weights).mean(dims)
    elif reducer == "std":
        result = emb.weighted(weights).std(dims)
    elif reducer == "count":
        result = (weights * emb.notnull()).sum(dims)
    elif reducer in ("min", "max"):
        # Not nanmin/nanmax: on dask they warn "All-NaN slice" for every chunk
        # outside the polygon. Embeddings are finite, so +-inf marks "no pixel".
        fill = np.float32(np.inf if reducer == "min" else -np.inf)
        inside = emb.where(weights > 0).fillna(fill)
        result = getattr(inside, reducer)(dims, skipna=False)
        result = result.where(result != fill)
    else:
        result = _median_over_pixels(emb, weights)
    if normalize:
        result = unit(result)
    result.name = f"polygon_{reducer}"
    result.attrs = {
        "long_name": f"coverage-weighted polygon {reducer} of the embeddings",
        "reducer": reducer,
        "normalized": int(normalize),
    }
    if "site_id" in obj.attrs:
        result.attrs["site_id"] = obj.attrs["site_id"]
    return result


def is_means(obj: xr.Dataset | xr.DataArray) -> bool:
    """Yearly statistics already reduced over space: ``(year, band)``."""
    return isinstance(obj, xr.DataArray) and set(obj.dims) == {"year", "band"}


def to_frame(obj: xr.Dataset | xr.DataArray, *, reducer: Reducer = "mean") -> pd.DataFrame:
    """The original notebook's table: ``site_id, year, A00..A63``, one row per year.

    Computes the polygon statistic (its job is to return numbers). ``obj``
    may also be yearly statistics already reduced, ``(year, band)`` from
    :func:`polygon_mean`, so one computation feeds the table and
    :func:`similarity_matrix`.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> df = to_frame(make_cube(years=(2020, 2021), shape=(8, 8)))
    >>> df.shape, list(df.columns[:3])
    ((2, 66), ['site_id', 'year', 'A00'])
    """
    stat = (obj if is_means(obj) else polygon_mean(obj, reducer=reducer)).compute()
    table = pd.DataFrame(
        stat.to_numpy().astype("float64"), columns=[str(b) for b in stat["band"].values]
    )
    table.insert(0, "year", stat["year"].to_numpy().astype(int))
    table.insert(0, "site_id", _parse_id(obj.attrs.get("site_id", "")))
    return table


def _parse_id(site_id: object) -> object:
    """Ids are kept as text in attrs (NetCDF-safe); integer-looking ones come back as int."""
    text = str(site_id)
    return int(text) if text.lstrip("-").isdigit() else text
