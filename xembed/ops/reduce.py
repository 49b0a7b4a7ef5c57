"""Polygon statistics: a site's pixels reduced per year and band, exactextract's way.

The numpy kernel :func:`weighted_quantile` (the weighted median), the
coverage-weighted reducers of :func:`polygon_mean`, the notebook's table
:func:`to_frame`, and how much of each site the numbers stand on
(:func:`coverage_coords`, :func:`check_coverage`).

Partial data
------------
Every statistic carries ``valid_fraction`` (the coverage-weighted share of
the site's area with data, 0..1) and ``valid_ha`` (that area in hectares):
coordinates of the arrays (:func:`polygon_mean`,
:func:`xembed.ops.zonal_mean`), columns of the tables (:func:`to_frame`,
:func:`xembed.extract`). Arrays never warn, lazy or not: they record
``min_valid`` in ``attrs``; the functions that return tables of numbers warn
once per call with :class:`xembed.CoverageWarning`, listing the site-years
whose valid fraction is below ``min_valid``, and so does
:func:`check_coverage` on computed means.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from xembed._util import stacklevel
from xembed.errors import CoverageWarning
from xembed.ops._base import embeddings_of, unit, weights_of
from xembed.schema import PIXEL_SIZE

__all__ = [
    "COVERAGE_COLUMNS",
    "MIN_VALID",
    "REDUCERS",
    "Reducer",
    "check_coverage",
    "check_min_valid",
    "coverage_coords",
    "is_means",
    "pixel_area",
    "polygon_mean",
    "to_frame",
    "weighted_quantile",
]

Reducer = Literal["mean", "median", "std", "min", "max", "count"]
REDUCERS: tuple[str, ...] = ("mean", "median", "std", "min", "max", "count")
#: Default ``min_valid``: warn about site-years with data under less than 90 % of the site.
MIN_VALID = 0.9
#: The columns every table of means carries after ``site_id, year`` (and ``stat``).
COVERAGE_COLUMNS: tuple[str, str] = ("valid_fraction", "valid_ha")
_MAX_LISTED = 10  # site-years named in a CoverageWarning


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


def check_min_valid(min_valid: float) -> float:
    """``min_valid`` as a float, checked to lie in 0..1.

    Examples
    --------
    >>> check_min_valid(0.5)
    0.5
    >>> check_min_valid(90)
    Traceback (most recent call last):
    ...
    ValueError: min_valid must be a fraction between 0 and 1 (e.g. 0.9 for 90 %), got 90
    """
    number = isinstance(min_valid, (int, float, np.integer, np.floating))
    value = float(min_valid) if number else float("nan")
    if isinstance(min_valid, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"min_valid must be a fraction between 0 and 1 (e.g. 0.9 for 90 %), got {min_valid!r}"
        )
    return value


def pixel_area(emb: xr.DataArray) -> float:
    """Area of one pixel in m^2, from the ``x``/``y`` spacing (10 m pixels: 100)."""
    x, y = np.asarray(emb["x"].values), np.asarray(emb["y"].values)
    dx = abs(float(x[1] - x[0])) if x.size > 1 else PIXEL_SIZE
    dy = abs(float(y[1] - y[0])) if y.size > 1 else dx
    return dx * dy


def coverage_coords(emb: xr.DataArray, weights: xr.DataArray) -> dict[str, xr.DataArray]:
    """``valid_fraction(year)`` and ``valid_ha(year)``: how much of the site has data.

    ``valid_fraction`` is sum(coverage of pixels with data) / sum(coverage),
    ``valid_ha`` the first sum in hectares. A pixel has data when its first
    band is not NaN (every source masks all 64 bands at once), so this reads
    1/64 of the chunks the statistic reads, in the same pass. Lazy if the
    cube is. A site of zero area has fraction 0.

    Examples
    --------
    >>> import numpy as np
    >>> from xembed.testing import make_cube
    >>> cube = make_cube(years=(2020, 2021), shape=(8, 8))
    >>> cube["embeddings"][1, :, :, :4] = np.nan  # 2021: the west half has no data
    >>> out = coverage_coords(cube["embeddings"], cube["coverage"])
    >>> out["valid_fraction"].values.round(3), out["valid_ha"].values.round(3)
    (array([1.   , 0.471]), array([0.151, 0.071]))
    """
    w = weights.astype(np.float64)
    has_data = emb.isel(band=0, drop=True).notnull()
    valid = (w * has_data).sum(("y", "x"))
    total = w.sum(("y", "x"))
    fraction = (valid / total.where(total > 0)).fillna(0.0)
    return {
        "valid_fraction": fraction.assign_attrs(
            long_name="share of the site's area with data (coverage-weighted)", units="1"
        ),
        "valid_ha": (valid * (pixel_area(emb) / 10_000.0)).assign_attrs(
            long_name="area of the site with data", units="ha"
        ),
    }


def polygon_mean(
    obj: xr.Dataset | xr.DataArray,
    *,
    reducer: Reducer = "mean",
    normalize: bool = False,
    min_valid: float = MIN_VALID,
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

    How much of the site each year's numbers stand on comes along as the
    coordinates ``valid_fraction(year)`` (0..1) and ``valid_ha(year)``
    (:func:`coverage_coords`), computed in the same pass.

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
    min_valid : float, default 0.9
        The valid fraction below which a year is reported, recorded in
        ``attrs["min_valid"]`` for :func:`to_frame` and
        :func:`check_coverage`. This function never warns, lazy or not
        (the fractions exist only once computed): ``to_frame(means)`` or
        ``check_coverage(means.compute())`` raise the
        :class:`xembed.CoverageWarning`.

    Returns
    -------
    xarray.DataArray
        ``(year, band)`` float, lazy if the cube is, with coordinates
        ``valid_fraction(year)`` and ``valid_ha(year)``. Years without a
        valid pixel give NaN (``count`` gives 0) and valid fraction 0.
        xarray compares the coordinates of both sides of an arithmetic
        operation: between lazy means whose coordinates differ (e.g.
        ``m.sel(year=2020) - m.sel(year=2019)``) that computes them, so
        compute the means first or drop them
        (``m.drop_vars(["valid_fraction", "valid_ha"])``).

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
    >>> mean["valid_fraction"].values.tolist()
    [1.0, 1.0]
    >>> float(polygon_mean(cube, reducer="std").max()) < 1e-6  # constant inside
    True
    """
    if reducer not in REDUCERS:
        raise ValueError(f"unknown reducer {reducer!r}; expected one of {list(REDUCERS)}")
    if normalize and reducer not in ("mean", "median"):
        raise ValueError(f"normalize=True needs reducer 'mean' or 'median', not {reducer!r}")
    min_valid = check_min_valid(min_valid)
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
    # Attached last: arithmetic on arrays with lazy coordinates may compare them.
    result = result.assign_coords(coverage_coords(emb, weights))
    result.name = f"polygon_{reducer}"
    result.attrs = {
        "long_name": f"coverage-weighted polygon {reducer} of the embeddings",
        "reducer": reducer,
        "normalized": int(normalize),
        "min_valid": min_valid,
    }
    if "site_id" in obj.attrs:
        result.attrs["site_id"] = obj.attrs["site_id"]
    return result


def is_means(obj: xr.Dataset | xr.DataArray) -> bool:
    """Yearly statistics already reduced over space: ``(year, band)``."""
    return isinstance(obj, xr.DataArray) and set(obj.dims) == {"year", "band"}


def _is_site_means(obj: xr.Dataset | xr.DataArray) -> bool:
    """Means of many sites, ``(site, year, band)`` (:func:`xembed.ops.zonal_mean`)."""
    return isinstance(obj, xr.DataArray) and set(obj.dims) == {"site", "year", "band"}


def to_frame(
    obj: xr.Dataset | xr.DataArray,
    *,
    reducer: Reducer = "mean",
    min_valid: float | None = None,
) -> pd.DataFrame:
    """The original notebook's table, with coverage: one row per site and year.

    Columns ``site_id, year, valid_fraction, valid_ha, A00..A63``: the
    statistic of :func:`polygon_mean` and how much of the site it stands on
    (:func:`coverage_coords`). Computes (its job is to return numbers).
    ``obj`` may also be statistics already reduced: ``(year, band)`` from
    :func:`polygon_mean`, so one computation feeds the table and
    :func:`similarity_matrix`, or ``(site, year, band)`` from
    :func:`xembed.ops.zonal_mean` (one row per site and year). Means without
    coverage coordinates give NaN there.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        A cube, or means.
    reducer : {"mean", "median", "std", "min", "max", "count"}
        For a cube: the statistic (:func:`polygon_mean`).
    min_valid : float, optional
        Warn (:class:`xembed.CoverageWarning`, once, listing them) about
        site-years whose valid fraction is below this; ``0`` never warns.
        Default: the ``min_valid`` the means were made with
        (``attrs["min_valid"]``), else 0.9.

    Warns
    -----
    xembed.CoverageWarning
        If some site-year has data under less than ``min_valid`` of its site.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> df = to_frame(make_cube(years=(2020, 2021), shape=(8, 8)))
    >>> df.shape, list(df.columns[:5])
    ((2, 68), ['site_id', 'year', 'valid_fraction', 'valid_ha', 'A00'])
    >>> df["valid_fraction"].tolist()
    [1.0, 1.0]
    """
    if is_means(obj) or _is_site_means(obj):
        assert isinstance(obj, xr.DataArray)
        stat = obj.compute()
    else:
        threshold = MIN_VALID if min_valid is None else min_valid
        stat = polygon_mean(obj, reducer=reducer, min_valid=threshold).compute()
    table = _means_frame(stat, obj.attrs.get("site_id", ""))
    check_coverage(
        table, stat.attrs.get("min_valid", MIN_VALID) if min_valid is None else min_valid
    )
    return table


def _means_frame(stat: xr.DataArray, site_id: object) -> pd.DataFrame:
    """Rows of computed means: ``site_id, year, valid_fraction, valid_ha, bands...``."""
    if "site" not in stat.dims:
        stat = stat.expand_dims(site=[_parse_id(site_id)])
    stat = stat.transpose("site", "year", "band")
    n_sites, n_years, n_bands = stat.shape
    table = pd.DataFrame(
        stat.to_numpy().astype("float64").reshape(n_sites * n_years, n_bands),
        columns=[str(b) for b in stat["band"].values],
    )
    for name in reversed(COVERAGE_COLUMNS):
        values = np.full((n_sites, n_years), np.nan)
        if name in stat.coords:  # (year,) or (site, year): broadcast to (site, year)
            coord = stat.coords[name]
            values[...] = coord.transpose(*(d for d in ("site", "year") if d in coord.dims))
        table.insert(0, name, values.reshape(-1))
    table.insert(0, "year", np.tile(stat["year"].to_numpy().astype(int), n_sites))
    table.insert(0, "site_id", np.repeat(_site_ids(stat["site"].values), n_years))
    return table


def _site_ids(values: np.ndarray) -> np.ndarray:
    ids = [v.item() if isinstance(v, np.generic) else v for v in values]
    return np.asarray(ids, dtype=np.int64 if all(isinstance(i, int) for i in ids) else object)


def check_coverage(
    means: xr.DataArray | pd.DataFrame, min_valid: float | None = None
) -> pd.DataFrame:
    """Warn about the site-years whose means stand on less than ``min_valid`` of the site.

    For means you computed yourself: ``polygon_mean`` and ``zonal_mean``
    never warn (they may be lazy), ``to_frame`` and ``extract`` do. Give it
    computed means (coordinates ``valid_fraction``, ``valid_ha``), or a table
    with those columns; lazy means are computed for their coordinates (a
    second pass over the data: compute them first).

    Parameters
    ----------
    means : xarray.DataArray or pandas.DataFrame
        ``(year, band)`` or ``(site, year, band)`` means, or a table from
        :func:`to_frame` or :func:`xembed.extract`.
    min_valid : float, optional
        Threshold in 0..1 (``0`` never warns). Default: the means'
        ``attrs["min_valid"]``, else 0.9.

    Returns
    -------
    pandas.DataFrame
        ``site_id, year, valid_fraction, valid_ha`` of the site-years below
        ``min_valid`` (empty if none), in the order of ``means``.

    Warns
    -----
    xembed.CoverageWarning
        Once, naming every such site-year and its valid fraction.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from xembed.testing import make_cube
    >>> cube = make_cube(years=(2020, 2021), shape=(8, 8))
    >>> cube["embeddings"][1, :, :, :4] = np.nan  # 2021: the west half has no data
    >>> means = polygon_mean(cube).compute()
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     low = check_coverage(means)
    >>> low[["year", "valid_fraction"]].round(3).to_dict("list")
    {'year': [2021], 'valid_fraction': [0.471]}
    >>> print(caught[0].message)  # doctest: +ELLIPSIS
    1 site-year has data under less than 90% of its site (min_valid=0.9):
    site 'test' in 2021: valid_fraction 0.471 (0.07 ha with data). ...
    >>> check_coverage(means, min_valid=0).empty
    True
    """
    if isinstance(means, pd.DataFrame):
        table = means
    else:
        if "valid_fraction" not in means.coords:
            raise ValueError(
                "these means have no 'valid_fraction' coordinate; make them with "
                "xembed.polygon_mean or xembed.zonal_mean"
            )
        table = _means_frame(means.isel(band=slice(0, 0)), means.attrs.get("site_id", ""))
    if min_valid is None:
        min_valid = means.attrs.get("min_valid", MIN_VALID)
    threshold = check_min_valid(min_valid)
    columns = ["site_id", "year", *COVERAGE_COLUMNS]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"the table lacks the columns {missing}; expected a table from xembed.to_frame "
            "or xembed.extract"
        )
    first = table.drop_duplicates(["site_id", "year"])  # extract: one row per statistic
    low = first.loc[first["valid_fraction"] < threshold, columns].reset_index(drop=True)
    if not low.empty:
        warnings.warn(CoverageWarning(_coverage_message(low, threshold)), stacklevel=stacklevel())
    return low


def _coverage_message(low: pd.DataFrame, threshold: float) -> str:
    single = low["site_id"].nunique() == 1 and str(low["site_id"].iloc[0]) == ""
    listed = []
    for row in low.head(_MAX_LISTED).itertuples():
        where = f"year {row.year}" if single else f"site {row.site_id!r} in {row.year}"
        listed.append(
            f"{where}: valid_fraction {row.valid_fraction:.3f} ({row.valid_ha:.2f} ha with data)"
        )
    more = f"; ... ({len(low)} in all)" if len(low) > _MAX_LISTED else ""
    n = len(low)
    return (
        f"{n} site-year{'s' if n > 1 else ''} {'have' if n > 1 else 'has'} data under less "
        f"than {threshold:.0%} of {'their' if n > 1 else 'its'} site (min_valid={threshold:g}): "
        + "; ".join(listed)
        + more
        + ". Those means describe only the part with data (the valid_fraction and valid_ha "
        "columns or coordinates say how much); drop those rows, or pass min_valid=0 to "
        "accept partial site-years"
    )


def _parse_id(site_id: object) -> object:
    """Ids are kept as text in attrs (NetCDF-safe); integer-looking ones come back as int."""
    text = str(site_id)
    return int(text) if text.lstrip("-").isdigit() else text
