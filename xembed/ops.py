"""The analyses: pure functions on the cube, lazy unless they return numbers.

Each function takes a cube (:class:`xarray.Dataset` with ``embeddings`` and
``coverage``) or an embeddings :class:`xarray.DataArray` and is also
available as a one-line ``.embed`` accessor method (``ds.embed.similarity()``).

Conventions
-----------
- Cosines re-normalise every vector first: the stored embeddings are unit
  length only up to quantisation, and means of unit vectors are not unit.
- Masked pixels (NaN) stay NaN; a zero vector has no direction and gives NaN.
- Per-pixel kernels need all years and all bands of a pixel in one chunk
  (the default chunking of :func:`xembed.open_embeddings`); other chunkings
  are rechunked once, lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from xembed.errors import SchemaError
from xembed.schema import BANDS, PIXEL_SIZE
from xembed.sites import as_sites

__all__ = [
    "change",
    "change_summary",
    "kmeans",
    "pairwise_similarity",
    "pca_rgb",
    "polygon_mean",
    "rgb",
    "search",
    "similarity",
    "similarity_matrix",
    "to_frame",
    "weighted_quantile",
    "zonal_mean",
]

Reducer = Literal["mean", "median", "std", "min", "max", "count"]
REDUCERS: tuple[str, ...] = ("mean", "median", "std", "min", "max", "count")
# Pixels per tile in the cosine kernels: (years x 64 x 4096) float32 stays in L2.
_TILE = 4096


# --- access -------------------------------------------------------------------


def _embeddings(obj: xr.Dataset | xr.DataArray) -> xr.DataArray:
    """The ``embeddings`` array of a cube, checked for the dims analyses need."""
    if isinstance(obj, xr.Dataset):
        if "embeddings" not in obj:
            names = sorted(map(str, obj.data_vars))
            raise SchemaError(
                f"dataset has no 'embeddings' variable (variables: {names}); "
                "open a cube with xembed.open_embeddings(...)"
            )
        emb = obj["embeddings"]
    elif isinstance(obj, xr.DataArray):
        emb = obj
    else:
        raise TypeError(
            f"expected an xarray Dataset or DataArray, got {type(obj).__name__}; "
            "open a cube with xembed.open_embeddings(...)"
        )
    missing = [d for d in ("year", "band", "y", "x") if d not in emb.dims]
    if missing:
        raise SchemaError(
            f"embeddings lack the dimensions {missing} (they have {emb.dims}); expected "
            "('year', 'band', 'y', 'x')"
        )
    return emb.transpose("year", "band", "y", "x")


def _weights(obj: xr.Dataset | xr.DataArray, emb: xr.DataArray) -> xr.DataArray:
    """Per-pixel weights: ``coverage`` (variable or coordinate), else 1."""
    if isinstance(obj, xr.Dataset) and "coverage" in obj:
        return obj["coverage"].fillna(0)
    if "coverage" in emb.coords:
        return emb.coords["coverage"].fillna(0)
    return xr.ones_like(emb.isel(year=0, band=0, drop=True), dtype=np.float32)


def _unit(vectors: xr.DataArray, dim: str = "band") -> xr.DataArray:
    """Vectors divided by their L2 norm along ``dim`` (zero vectors -> NaN)."""
    norm = (vectors**2).sum(dim, skipna=False) ** 0.5
    return vectors / norm.where(norm > 0)


def _site_start_year(obj: xr.Dataset | xr.DataArray) -> int | None:
    value = obj.attrs.get("site_start_year")
    if value is None or int(value) < 0:
        return None
    return int(value)


def _year_position(emb: xr.DataArray, year: int, what: str) -> int:
    years = [int(y) for y in emb["year"].values]
    if int(year) not in years:
        raise ValueError(f"{what} {year!r} is not in the cube; its years are {years}")
    return years.index(int(year))


# --- polygon statistics -------------------------------------------------------


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
    emb = _embeddings(obj)
    weights = _weights(obj, emb)
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
        result = _unit(result)
    result.name = f"polygon_{reducer}"
    result.attrs = {
        "long_name": f"coverage-weighted polygon {reducer} of the embeddings",
        "reducer": reducer,
        "normalized": int(normalize),
    }
    if "site_id" in obj.attrs:
        result.attrs["site_id"] = obj.attrs["site_id"]
    return result


def _is_means(obj: xr.Dataset | xr.DataArray) -> bool:
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
    stat = (obj if _is_means(obj) else polygon_mean(obj, reducer=reducer)).compute()
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


def grid_of(obj: xr.Dataset | xr.DataArray) -> Any:
    """The :class:`xembed.grid.Grid` of a cube, from its coordinates and CRS.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> grid_of(make_cube(shape=(4, 6))).shape
    (4, 6)
    """
    from xembed.grid import Grid

    crs = obj.rio.crs
    if crs is None:
        raise SchemaError("the cube has no CRS; write one with ds.rio.write_crs('EPSG:327xx')")
    x, y = obj["x"].values, obj["y"].values
    res = float(x[1] - x[0]) if x.size > 1 else PIXEL_SIZE
    return Grid(
        crs=crs,
        west=float(x[0]) - res / 2,
        north=float(y[0]) + res / 2,
        width=x.size,
        height=y.size,
        res=res,
    )


def _site_weights(sites: Sequence[Any], grid: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COO triplets (site, flat pixel, coverage) of every site on the grid.

    Sites may overlap: a pixel can carry several (site, weight) pairs.
    """
    from xembed.grid import coverage_fraction, project

    site_idx, pix_idx, weight = [], [], []
    for i, site in enumerate(sites):
        geometry = project(site.geometry, "EPSG:4326", grid.crs)
        cov = coverage_fraction(geometry, grid)
        flat = np.flatnonzero(cov)
        site_idx.append(np.full(flat.size, i, dtype=np.int64))
        pix_idx.append(flat)
        weight.append(cov.reshape(-1)[flat].astype(np.float64))
    return np.concatenate(site_idx), np.concatenate(pix_idx), np.concatenate(weight)


def _site_weights_windowed(
    sites: Sequence[Any], grid: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_site_weights`, each site's coverage computed over its own window.

    The window is the site's bounding box on the grid (one pixel of margin,
    clipped to the grid), so the cost grows with the sites' sizes, not with
    the grid times the number of sites. Entries come out grouped by site, in
    site order.
    """
    import pyproj
    import shapely

    from xembed._util import transformer
    from xembed.grid import Grid, coverage_fraction, project

    src = pyproj.CRS.from_epsg(4326)
    dst = pyproj.CRS.from_user_input(grid.crs)
    res = grid.res
    # All sites projected in one call (one transformer), as project() would.
    geometries = np.array([site.geometry for site in sites], dtype=object)
    if src == dst:
        projected = shapely.force_2d(geometries)
    else:
        to_grid = transformer(src, dst)
        projected = shapely.transform(
            geometries, lambda x, y: to_grid.transform(x, y), interleaved=False
        )
        if not np.isfinite(shapely.get_coordinates(projected)).all():
            for site in sites:  # the per-site check raises project()'s SiteError
                project(site.geometry, src, dst)
    site_idx, pix_idx, weight = [], [], []
    for i, geometry in enumerate(projected):
        if geometry.is_empty:
            continue
        minx, miny, maxx, maxy = geometry.bounds
        c0 = max(int(np.floor((minx - grid.west) / res)) - 1, 0)
        c1 = min(int(np.ceil((maxx - grid.west) / res)) + 1, grid.width)
        r0 = max(int(np.floor((grid.north - maxy) / res)) - 1, 0)
        r1 = min(int(np.ceil((grid.north - miny) / res)) + 1, grid.height)
        if c0 >= c1 or r0 >= r1:
            continue  # outside the grid
        window = Grid(
            crs=dst,
            west=grid.west + c0 * res,
            north=grid.north - r0 * res,
            width=c1 - c0,
            height=r1 - r0,
            res=res,
        )
        cov = coverage_fraction(geometry, window)
        rows, cols = np.nonzero(cov)
        site_idx.append(np.full(rows.size, i, dtype=np.int64))
        pix_idx.append((rows + r0).astype(np.int64) * grid.width + (cols + c0))
        weight.append(cov[rows, cols].astype(np.float64))
    if not weight:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    return np.concatenate(site_idx), np.concatenate(pix_idx), np.concatenate(weight)


def _zonal_block(
    block: np.ndarray,
    sites: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    weight: np.ndarray,
    n_sites: int,
) -> np.ndarray:
    """Weighted sums and weights of one block: (2, n_sites, years, bands)."""
    n_years, n_bands = block.shape[:2]
    out = np.zeros((2, n_sites, n_years, n_bands))
    if weight.size == 0:
        return out
    sites = np.asarray(sites)
    if sites.size > 1 and bool((sites[1:] < sites[:-1]).any()):
        order = np.argsort(sites, kind="stable")  # zonal_mean passes them grouped already
        sites, rows, cols, weight = sites[order], rows[order], cols[order], weight[order]
    # One run of entries per site: weighted sums are np.add.reduceat over runs.
    starts = np.flatnonzero(np.r_[True, sites[1:] != sites[:-1]])
    present = sites[starts]
    w = np.asarray(weight, dtype=np.float64)
    # Gather the entries' pixels: (years * bands, n), each row one band plane.
    if block.flags.c_contiguous:
        planes = block.reshape(n_years * n_bands, -1)
        values = np.take(planes, np.asarray(rows) * block.shape[3] + cols, axis=1)
    else:
        values = block[:, :, rows, cols].reshape(n_years * n_bands, -1)
    weighted = values * w  # float64
    missing = np.isnan(weighted)
    if missing.any():
        weighted[missing] = 0.0
        wsum = np.add.reduceat(np.where(missing, 0.0, w), starts, axis=1)
    else:
        wsum = np.broadcast_to(np.add.reduceat(w, starts), (n_years * n_bands, starts.size))
    sums = np.add.reduceat(weighted, starts, axis=1)
    out[0, present] = sums.T.reshape(-1, n_years, n_bands)
    out[1, present] = wsum.T.reshape(-1, n_years, n_bands)
    return out


def zonal_mean(
    cube: xr.Dataset | xr.DataArray, sites: Any, *, normalize: bool = False
) -> xr.DataArray:
    """Coverage-weighted mean embedding of many sites, in one pass over the cube.

    The sites' coverage fractions on the cube's grid become one sparse
    (site, pixel, weight) table; each chunk of the cube contributes weighted
    sums for the sites it touches, and the partial sums are added up. Data
    is read once whatever the number of sites; sites may overlap.

    Parameters
    ----------
    cube : xarray.Dataset or xarray.DataArray
        A cube with a CRS; ``clip`` does not matter, the sites' own
        coverage is used.
    sites : list of Site, shapely geometries or GeoJSON mappings, or a GeoDataFrame
        In EPSG:4326. Ids come from the sites (else their position).
    normalize : bool
        Return unit-length means.

    Returns
    -------
    xarray.DataArray
        ``(site, year, band)`` float64, lazy if the cube is; NaN for a site
        year without valid pixels.

    Examples
    --------
    >>> import shapely, xembed
    >>> from xembed.testing import make_cube, planted_vector
    >>> cube = make_cube(shape=(16, 16))
    >>> polygon = shapely.from_wkt(cube.attrs["site_geometry_wkt"])  # lon/lat
    >>> site = xembed.Site(id=7, start_year=None, geometry=polygon)
    >>> means = zonal_mean(cube, [site])
    >>> means.dims, means.sizes["site"]
    (('site', 'year', 'band'), 1)
    >>> bool(np.allclose(means.sel(site=7).isel(year=0), planted_vector(), atol=1e-6))
    True
    """
    emb = _embeddings(cube)
    site_list = as_sites(sites)
    if not site_list:
        raise ValueError("sites is empty; pass at least one site")
    ids = [s.id for s in site_list]
    if len(set(ids)) != len(ids):
        dupes = sorted({str(i) for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate site ids {dupes}; give every site its own id")
    grid = grid_of(cube)
    # Coverage of each site over its own bounding window, not the whole grid.
    site_idx, pix_idx, weight = _site_weights_windowed(site_list, grid)
    rows_all, cols_all = np.divmod(pix_idx, grid.width)
    n_sites, n_years, n_bands = len(site_list), emb.sizes["year"], emb.sizes["band"]
    data = emb.data
    if isinstance(data, da.Array):
        # Any chunking works (sums are per year and band): no rechunk. Entries
        # are bucketed by spatial block once (a stable sort keeps them grouped
        # by site); a block no site touches is never read.
        row_edges = np.cumsum((0, *data.chunks[2]))
        col_edges = np.cumsum((0, *data.chunks[3]))
        n_col_blocks = len(data.chunks[3])
        key = (np.searchsorted(row_edges, rows_all, side="right") - 1) * n_col_blocks + (
            np.searchsorted(col_edges, cols_all, side="right") - 1
        )
        order = np.argsort(key, kind="stable")
        keys, first = np.unique(key[order], return_index=True)
        last = np.r_[first[1:], order.size]
        buckets = []
        for k, start, stop in zip(keys.tolist(), first.tolist(), last.tolist(), strict=True):
            bi, bj = divmod(k, n_col_blocks)
            sel = order[start:stop]
            buckets.append(
                (
                    bi,
                    bj,
                    site_idx[sel],
                    rows_all[sel] - row_edges[bi],
                    cols_all[sel] - col_edges[bj],
                    weight[sel],
                )
            )
        blocks = data.to_delayed()
        pieces = []
        for yi, ny in enumerate(data.chunks[0]):
            row = []
            for ki, nb in enumerate(data.chunks[1]):
                shape = (2, n_sites, ny, nb)
                partials = [
                    da.from_delayed(
                        dask.delayed(_zonal_block)(blocks[yi, ki, bi, bj], s, r, c, w, n_sites),
                        shape=shape,
                        dtype=np.float64,
                    )
                    for bi, bj, s, r, c, w in buckets
                ]
                # A tree of sums, 8 partials at a time: memory stays a few partials.
                total = da.stack(partials).sum(axis=0, split_every=8) if partials else None
                row.append(da.zeros(shape) if total is None else total)
            pieces.append(row)
        sums = da.block(pieces)
    else:
        # In memory: batches of entries bound the gathered float64 values.
        values = np.asarray(data)
        sums = np.zeros((2, n_sites, n_years, n_bands))
        batch = max(1 << 10, (1 << 24) // max(1, n_years * n_bands))
        for start in range(0, weight.size, batch):
            part = slice(start, start + batch)
            sums += _zonal_block(
                values, site_idx[part], rows_all[part], cols_all[part], weight[part], n_sites
            )

    def ratio(total: np.ndarray, weights: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):  # no weight: NaN, silently
            return total / weights

    if isinstance(sums, da.Array):
        means = da.map_blocks(ratio, sums[0], sums[1], dtype=np.float64)
    else:
        means = ratio(sums[0], sums[1])
    result = xr.DataArray(
        means,
        dims=("site", "year", "band"),
        coords={"site": ids, "year": emb["year"].values, "band": emb["band"].values},
        name="zonal_mean",
        attrs={"long_name": "coverage-weighted mean embedding per site"},
    )
    return _unit(result) if normalize else result


# --- cosine similarity --------------------------------------------------------


def similarity_matrix(obj: xr.Dataset | xr.DataArray, *, normalize: bool = True) -> xr.DataArray:
    """Cosine similarity between the site's yearly mean embeddings.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        A cube, or yearly means ``(year, band)`` (e.g. from :func:`polygon_mean`).
    normalize : bool
        ``True`` (default): the cosine of the means, each mean divided by
        its length; the diagonal is exactly 1 for every year with data.
        ``False``: the raw dot product of the means, as the original
        notebook printed (``embeddings @ embeddings.T``). A mean of unit
        vectors is shorter than 1, so that "similarity" has the squared
        length of each mean on its diagonal (about 0.92 there) and mixes
        site heterogeneity into the comparison.

    Returns
    -------
    xarray.DataArray
        ``(year, year_2)`` float64: ``year_2`` holds the same years as
        ``year``; element ``[i, j]`` compares year ``i`` with year ``j``.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> sim = similarity_matrix(make_cube(years=(2020, 2021, 2022), shape=(8, 8)))
    >>> sim.dims, np.diag(sim.values).tolist()
    (('year', 'year_2'), [1.0, 1.0, 1.0])
    """
    if isinstance(obj, xr.DataArray) and _is_means(obj):
        means = obj.transpose("year", "band")
    else:
        means = polygon_mean(obj)
    means = means.astype(np.float64)
    if normalize:
        means = _unit(means)
    other = means.rename(year="year_2")
    sim = (means * other).sum("band", skipna=False)
    if normalize:
        same = sim["year"] == sim["year_2"]
        sim = xr.where(same & sim.notnull(), 1.0, sim.clip(-1.0, 1.0))
    sim = sim.transpose("year", "year_2")
    sim.name = "similarity"
    sim.attrs = {
        "long_name": "cosine similarity of yearly mean embeddings"
        if normalize
        else "dot product of yearly mean embeddings (not normalised)",
        "normalized": int(normalize),
    }
    return sim


def _cosine_block(block: np.ndarray, mode: str, ref: int = 0) -> np.ndarray:
    """Per-pixel cosines of one chunk holding all years and bands.

    ``mode``: ``"pairwise"`` -> (years, years, h, w); ``"previous"`` or
    ``"reference"`` (against year index ``ref``) -> (years, h, w).
    Tiles of pixels are made contiguous and normalised once, then one
    band-contraction per pair of years (the practical numpy limit).
    """
    # Speed: tiles of whole rows (about _TILE pixels) are copied into one
    # reused contiguous float32 buffer (einsum is slow on strided 4-D views;
    # the copy reads the chunk from memory once), and one einsum per year
    # against itself and all later years gives the tile's Gram matrix: 36
    # band contractions for 8 years, the minimum; "previous" needs 15.
    # einsum, copyto and the ufuncs release the GIL, so dask's threads work
    # on different chunks at once.
    # Accuracy: the sums over bands are float32 in groups of 8 bands, and the
    # groups are added pairwise, which bounds the rounding error to a few
    # float32 ulps (a plain sum over 64 bands accumulates up to ~32 ulps).
    # The cosine G_ij / sqrt(G_ii) / sqrt(G_jj) is taken in float64 and then
    # rounded to float32, so identical vectors give exactly 1, and scaling a
    # vector changes nothing beyond rounding.
    # The order of operations per pixel does not depend on the tiling: dask
    # and numpy give the same bits.
    n_years, n_bands, h, w = block.shape
    pairwise = mode == "pairwise"
    out = np.empty((n_years, n_years, h, w) if pairwise else (n_years, h, w), np.float32)
    if out.size == 0:
        return out
    groups = n_bands // 8 if n_bands % 8 == 0 else 1
    cols = min(w, _TILE)
    rows = max(1, min(h, _TILE // cols))
    n_pix = rows * cols
    tile_buf = np.empty(n_years * n_bands * n_pix, np.float32)
    part_buf = np.empty(n_years * groups * n_pix, np.float32)
    gram_buf = np.empty((n_years * n_years if pairwise else 2 * n_years) * n_pix, np.float32)

    def contract(spec: str, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        """out = sum over bands of a * b: groups of bands, then the groups pairwise."""
        parts = part_buf[: out.shape[0] * groups * out.shape[1]].reshape(
            out.shape[0], groups, out.shape[1]
        )
        np.einsum(spec, a, b, out=parts)
        n = groups
        while n > 2:
            half = n // 2
            np.add(parts[:, :half], parts[:, n - half : n], out=parts[:, :half])
            n -= half
        if n == 2:
            np.add(parts[:, 0], parts[:, 1], out=out)
        else:
            out[...] = parts[:, 0]

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for r0 in range(0, h, rows):
            r1 = min(r0 + rows, h)
            for c0 in range(0, w, cols):
                c1 = min(c0 + cols, w)
                r, c = r1 - r0, c1 - c0
                t = r * c
                win = (slice(r0, r1), slice(c0, c1))
                tile: np.ndarray = tile_buf[: n_years * n_bands * t].reshape(n_years, n_bands, t)
                np.copyto(
                    tile.reshape(n_years, n_bands, r, c),
                    block[:, :, r0:r1, c0:c1],
                    casting="unsafe",
                )
                tile = tile.reshape(n_years, groups, n_bands // groups, t)
                if pairwise:
                    gram = gram_buf[: n_years * n_years * t].reshape(n_years, n_years, t)
                    for i in range(n_years):
                        contract("ygkt,gkt->ygt", tile[i:], tile[i], gram[i, i:])
                    squared = gram.reshape(n_years * n_years, t)[:: n_years + 1]  # G_ii
                    inv = 1.0 / np.sqrt(squared.astype(np.float64))  # zero -> inf -> NaN
                    for i in range(n_years):
                        # 1 where the vector has a length; NaN or zero vectors -> NaN.
                        out[(i, i, *win)] = np.where(squared[i] > 0, 1.0, np.nan).reshape(r, c)
                        if i + 1 == n_years:
                            continue
                        cos = gram[i, i + 1 :] * inv[i]
                        cos *= inv[i + 1 :]
                        np.clip(cos, -1.0, 1.0, out=cos)
                        row = cos.reshape(n_years - i - 1, r, c)
                        out[(i, slice(i + 1, None), *win)] = row
                        out[(slice(i + 1, None), i, *win)] = row
                    continue
                squared = gram_buf[: n_years * t].reshape(n_years, t)
                contract("ygkt,ygkt->ygt", tile, tile, squared)
                inv = 1.0 / np.sqrt(squared.astype(np.float64))
                dot = gram_buf[n_years * t : 2 * n_years * t].reshape(n_years, t)
                if mode == "previous":
                    contract("ygkt,ygkt->ygt", tile[1:], tile[:-1], dot[1:])
                    cos = np.empty((n_years, t))
                    cos[0] = np.nan
                    np.multiply(dot[1:], inv[1:], out=cos[1:])
                    cos[1:] *= inv[:-1]
                else:
                    contract("ygkt,gkt->ygt", tile, tile[ref], dot)
                    cos = dot * inv
                    cos *= inv[ref]
                    cos[ref] = np.where(squared[ref] > 0, 1.0, np.nan)
                np.clip(cos, -1.0, 1.0, out=cos)
                out[(slice(None), *win)] = cos.reshape(n_years, r, c)
    return out


def _apply_cosine(emb: xr.DataArray, mode: str, ref: int = 0) -> Any:
    data = emb.data
    if isinstance(data, da.Array):
        if len(data.chunks[0]) > 1 or len(data.chunks[1]) > 1:
            # Merging years and bands multiplies the chunk size (8 years of
            # (1, 64, 512, 512) chunks would give 512 MiB chunks): if the merged
            # chunk outgrows dask's array.chunk-size, split space in the same,
            # single rechunk so that memory stays bounded by that size.
            merged = data.shape[0] * data.shape[1] * max(data.chunks[2]) * max(data.chunks[3]) * 4
            limit = dask.utils.parse_bytes(dask.config.get("array.chunk-size"))
            target: dict[int, Any] = {0: -1, 1: -1}
            if merged > limit:
                target.update({2: "auto", 3: "auto"})
            data = data.rechunk(target, block_size_limit=limit)
        n_years = data.shape[0]
        if mode == "pairwise":
            return data.map_blocks(
                _cosine_block,
                mode,
                ref,
                chunks=((n_years,), (n_years,), data.chunks[2], data.chunks[3]),
                dtype=np.float32,
                meta=np.empty((0, 0, 0, 0), np.float32),
            )

        # Not drop_axis=1: with it dask hands the function a concatenated *copy*
        # of each block (a whole chunk copied, and doubled in memory); a length-1
        # band axis, dropped by indexing afterwards, passes the block as it is.
        def keep_axis(block: np.ndarray, mode: str, ref: int) -> np.ndarray:
            return _cosine_block(block, mode, ref)[:, None]

        return data.map_blocks(
            keep_axis,
            mode,
            ref,
            chunks=(data.chunks[0], (1,), data.chunks[2], data.chunks[3]),
            dtype=np.float32,
            meta=np.empty((0, 0, 0, 0), np.float32),
        )[:, 0]
    return _cosine_block(np.asarray(data), mode, ref)


def _spatial_coords(emb: xr.DataArray) -> dict[str, Any]:
    """Coordinates of a per-pixel result: y, x and any 2-D ones (coverage, spatial_ref)."""
    return {str(k): c for k, c in emb.coords.items() if set(c.dims) <= {"y", "x"}}


def similarity(
    obj: xr.Dataset | xr.DataArray, reference: int | Literal["previous", "first"] = "previous"
) -> xr.DataArray:
    """Per-pixel cosine similarity of each year with a reference.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        A cube.
    reference : int, "previous" or "first"
        A year of the cube; ``"previous"``: each year against the year
        before it (the first year is NaN); ``"first"``: against the first year.

    Returns
    -------
    xarray.DataArray
        ``(year, y, x)`` float32 in [-1, 1]; the reference year is 1 where
        there is data. Masked pixels stay NaN. Lazy if the cube is.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> cube = make_cube(years=(2020, 2021), shape=(8, 8))
    >>> sim = similarity(cube, reference="first")
    >>> sim.dims
    ('year', 'y', 'x')
    >>> float(sim.sel(year=2021).where(cube.coverage > 0).min())  # planted: same vector
    1.0
    """
    emb = _embeddings(obj)
    if reference == "previous":
        mode, ref, label = "previous", 0, "previous year"
    elif reference == "first":
        mode, ref, label = "reference", 0, f"{int(emb['year'][0])}"
    elif isinstance(reference, (int, np.integer)) and not isinstance(reference, bool):
        mode, ref, label = (
            "reference",
            _year_position(emb, int(reference), "reference year"),
            str(reference),
        )
    else:
        raise ValueError(
            f"reference must be a year of the cube, 'previous' or 'first', got {reference!r}"
        )
    out = xr.DataArray(
        _apply_cosine(emb, mode, ref),
        dims=("year", "y", "x"),
        coords={"year": emb["year"], **_spatial_coords(emb)},
        name="similarity",
        attrs={"long_name": f"cosine similarity with {label}", "units": "1", "reference": label},
    )
    return out


def pairwise_similarity(obj: xr.Dataset | xr.DataArray) -> xr.DataArray:
    """Per-pixel cosine similarity between every pair of years.

    Returns
    -------
    xarray.DataArray
        ``(year, year_2, y, x)`` float32, symmetric in ``year``/``year_2``,
        1 on the diagonal where there is data, NaN where masked.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> sim = pairwise_similarity(make_cube(years=(2020, 2021, 2022), shape=(4, 4)))
    >>> sim.dims, sim.shape
    (('year', 'year_2', 'y', 'x'), (3, 3, 4, 4))
    >>> bool((sim.values == sim.values.transpose(1, 0, 2, 3)).all())
    True
    """
    emb = _embeddings(obj)
    return xr.DataArray(
        _apply_cosine(emb, "pairwise"),
        dims=("year", "year_2", "y", "x"),
        coords={"year": emb["year"].values, "year_2": emb["year"].values, **_spatial_coords(emb)},
        name="similarity",
        attrs={"long_name": "cosine similarity between years", "units": "1"},
    )


# --- change -------------------------------------------------------------------


def _baseline(obj: xr.Dataset | xr.DataArray, emb: xr.DataArray, baseline: int | None) -> int:
    if baseline is not None:
        _year_position(emb, baseline, "baseline year")
        return int(baseline)
    start = _site_start_year(obj)
    years = [int(y) for y in emb["year"].values]
    return start if start in years else years[0]


def change(
    obj: xr.Dataset | xr.DataArray,
    baseline: int | None = None,
    *,
    threshold: float | None = None,
) -> xr.DataArray:
    """Per-pixel change since a baseline year: ``1 - cosine``.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        A cube.
    baseline : int, optional
        The baseline year. Default: the site's ``start_year`` if the cube
        has it, else the cube's first year.
    threshold : float, optional
        If given, return where the change exceeds it (bool; masked pixels
        are False) instead of the change itself.

    Returns
    -------
    xarray.DataArray
        ``(year, y, x)``: float32 in [0, 2] (NaN where masked), or bool
        with a threshold. ``attrs["baseline"]`` names the year.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> cube = make_cube(years=(2020, 2021), shape=(8, 8))
    >>> d = change(cube)
    >>> int(d.attrs["baseline"]), float(d.sel(year=2021).where(cube.coverage > 0).max())
    (2020, 0.0)
    >>> change(cube, threshold=0.5).dtype
    dtype('bool')
    """
    emb = _embeddings(obj)
    year = _baseline(obj, emb, baseline)
    distance = 1 - similarity(emb, reference=year)
    distance.name = "change"
    distance.attrs = {"long_name": f"1 - cosine similarity with {year}", "baseline": year}
    if threshold is None:
        return distance
    changed = distance > threshold
    changed.name = "changed"
    changed.attrs = {
        "long_name": f"change since {year} above {threshold}",
        "baseline": year,
        "threshold": float(threshold),
    }
    return changed


def change_summary(
    obj: xr.Dataset,
    threshold: float = 0.2,
    *,
    baseline: int | None = None,
    percentiles: Iterable[float] = (10, 50, 90),
) -> pd.DataFrame:
    """Per-year summary of change inside the site polygon (computes).

    Columns: ``year``, ``baseline``, ``changed_ha`` (coverage-weighted area
    of pixels whose ``1 - cosine`` exceeds ``threshold``), ``changed_fraction``
    (of the polygon's area with data), ``valid_ha``, ``mean_similarity`` and
    ``similarity_p{N}`` (coverage-weighted, :func:`weighted_quantile`).

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> table = change_summary(make_cube(years=(2020, 2021), shape=(8, 8)))
    >>> table[["year", "changed_ha", "mean_similarity"]].round(6).to_dict("list")
    {'year': [2020, 2021], 'changed_ha': [0.0, 0.0], 'mean_similarity': [1.0, 1.0]}
    """
    emb = _embeddings(obj)
    weights = _weights(obj, emb)
    year = _baseline(obj, emb, baseline)
    sim = similarity(emb, reference=year)
    sim, weights = dask.compute(sim, weights)
    pixel_ha = (
        float(np.abs(np.diff(emb["x"].values[:2]))[0] if emb.sizes["x"] > 1 else PIXEL_SIZE) ** 2
        / 1e4
    )
    w = np.asarray(weights.values, dtype=np.float64)
    rows = []
    for i, y in enumerate(sim["year"].values):
        s = np.asarray(sim.values[i], dtype=np.float64)
        valid = ~np.isnan(s) & (w > 0)
        wv = np.where(valid, w, 0.0)
        total = wv.sum()
        changed = np.where(valid & (1 - s > threshold), w, 0.0).sum()
        row: dict[str, Any] = {
            "year": int(y),
            "baseline": year,
            "changed_ha": changed * pixel_ha,
            "changed_fraction": changed / total if total > 0 else np.nan,
            "valid_ha": total * pixel_ha,
            "mean_similarity": float((np.where(valid, s, 0) * wv).sum() / total)
            if total > 0
            else np.nan,
        }
        for p in percentiles:
            row[f"similarity_p{p:g}"] = float(weighted_quantile(s.ravel(), wv.ravel(), p / 100))
        rows.append(row)
    return pd.DataFrame(rows)


# --- similarity search --------------------------------------------------------


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
    emb = _embeddings(obj)
    if year is not None:
        _year_position(emb, year, "year")
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


# --- composites -----------------------------------------------------------------


def _stretch_values(value: Any, name: str) -> np.ndarray:
    """One finite value or three (red, green, blue), as float32."""
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.ndim != 1 or arr.size not in (1, 3):
        raise ValueError(f"{name} must be one value or three (red, green, blue), got {value!r}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got {value!r}")
    return np.broadcast_to(arr, (3,)).astype(np.float32)


def _to_uint8(channels: xr.DataArray, vmin: Any, vmax: Any) -> xr.DataArray:
    """Stretch (year, channel, y, x) to uint8 RGBA; NaN -> (0, 0, 0, 0)."""
    lo = xr.DataArray(_stretch_values(vmin, "vmin"), dims="channel")
    hi = xr.DataArray(_stretch_values(vmax, "vmax"), dims="channel")
    if bool((hi <= lo).any()):
        raise ValueError(f"vmax must exceed vmin, got vmin={vmin!r}, vmax={vmax!r}")
    scaled = ((channels - lo) / (hi - lo)).clip(0, 1) * 255
    valid = channels.notnull().all("channel")
    rgb8 = scaled.round().where(valid, 0).astype(np.uint8)
    alpha = (valid * 255).astype(np.uint8).expand_dims(channel=1)
    out = xr.concat([rgb8, alpha], dim="channel")
    out = out.assign_coords(channel=["r", "g", "b", "a"]).transpose("year", "y", "x", "channel")
    return out


def rgb(
    obj: xr.Dataset | xr.DataArray,
    bands: Sequence[str] = ("A01", "A16", "A09"),
    *,
    vmin: float | Sequence[float] = -0.3,
    vmax: float | Sequence[float] = 0.3,
) -> xr.DataArray:
    """An RGBA composite of three bands, stretched linearly to uint8.

    The original notebook's visualisation (bands A01/A16/A09, -0.3..0.3).

    Parameters
    ----------
    bands : three band names
        Red, green, blue.
    vmin, vmax : float or three floats
        The stretch, given explicitly (never guessed from the data).

    Returns
    -------
    xarray.DataArray
        ``(year, y, x, channel)`` uint8 with channels ``r, g, b, a``:
        pixels without data are ``(0, 0, 0, 0)``, transparent (black if
        the alpha channel is dropped). Lazy if the cube is.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> img = rgb(make_cube(shape=(4, 4)))
    >>> img.dims, img.dtype, img.shape
    (('year', 'y', 'x', 'channel'), dtype('uint8'), (2, 4, 4, 4))
    """
    emb = _embeddings(obj)
    bands = [str(b) for b in bands]
    unknown = [b for b in bands if b not in BANDS]
    if len(bands) != 3 or unknown:
        raise ValueError(
            f"rgb needs three band names from A00..A63, got {bands!r}"
            + (f" (unknown: {unknown})" if unknown else "")
            + "; pass three of A00..A63, e.g. ('A01', 'A16', 'A09')"
        )
    missing = [b for b in bands if b not in emb["band"].values]
    if missing:
        raise ValueError(f"bands {missing} are not in the cube; it has {list(emb['band'].values)}")
    channels = emb.sel(band=bands).rename(band="channel").drop_vars("channel")
    out = _to_uint8(channels, vmin, vmax)
    out.name = "rgb"
    out.attrs = {"bands": ",".join(bands), "vmin": str(vmin), "vmax": str(vmax)}
    return out


def _sample_pixels(emb: xr.DataArray, n: int, seed: int, years: Sequence[int] | None):
    """A random sample of (lazy) pixel vectors, shape (n, bands), possibly with NaN rows.

    ``years``: the ``fit_on`` years to sample from (checked), or None for all.
    """
    if years is not None:
        for y in years:
            _year_position(emb, y, "fit_on year")
    sel = emb if years is None else emb.sel(year=list(years))
    n_years, _, ny, nx = sel.shape
    total = n_years * ny * nx
    rng = np.random.default_rng(seed)
    pick = rng.choice(total, size=min(n, total), replace=False)
    pick.sort()
    t, rest = np.divmod(pick, ny * nx)
    r, c = np.divmod(rest, nx)
    data = sel.data
    if isinstance(data, da.Array):
        return data.vindex[t, :, r, c]
    return np.asarray(data)[t, :, r, c]


def _fit_pca(samples: np.ndarray, n_components: int, percentiles: tuple[float, float]):
    x = np.asarray(samples, dtype=np.float64)
    x = x[~np.isnan(x).any(axis=1)]
    if x.shape[0] < n_components + 1:
        raise ValueError(
            f"only {x.shape[0]} pixels with data to fit the PCA; need more than {n_components}"
        )
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:n_components]
    # Deterministic signs: the largest loading of each component is positive.
    signs = np.sign(comps[np.arange(n_components), np.abs(comps).argmax(axis=1)])
    comps = comps * signs[:, None]
    scores = (x - mean) @ comps.T
    lo, hi = np.percentile(scores, percentiles, axis=0)
    return {"mean": mean, "components": comps, "lo": lo, "hi": hi}


def _pca_block(block: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """(years, bands, h, w) -> (years, 3, h, w) float32 scores."""
    moved = np.moveaxis(block, 1, -1).astype(np.float64) - params["mean"]
    scores = moved @ params["components"].T
    return np.moveaxis(scores, -1, 1).astype(np.float32)


def _apply_fitted(
    emb: xr.DataArray,
    fit: Callable[[np.ndarray], Any],
    apply: Callable[[np.ndarray, Any], np.ndarray],
    samples: Any,
    out_axis_size: int | None,
    dtype: Any,
) -> tuple[Any, Any]:
    """Fit on a sample and apply blockwise: lazily (one delayed fit) for dask."""
    data = emb.data
    if isinstance(data, da.Array):
        params = dask.delayed(fit)(samples)
        data = data.rechunk({1: -1})
        if out_axis_size is None:
            out = data.map_blocks(
                apply, params, drop_axis=1, dtype=dtype, meta=np.empty((0, 0, 0), dtype)
            )
        else:
            out = data.map_blocks(
                apply,
                params,
                dtype=dtype,
                chunks=(data.chunks[0], (out_axis_size,), data.chunks[2], data.chunks[3]),
                meta=np.empty((0, 0, 0, 0), dtype),
            )
        return out, params
    params = fit(np.asarray(samples))
    return apply(np.asarray(data), params), params


def pca_rgb(
    obj: xr.Dataset | xr.DataArray,
    n_components: int = 3,
    *,
    fit_on: Sequence[int] | None = None,
    sample: int = 20_000,
    seed: int = 0,
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> xr.DataArray:
    """An RGBA composite of the first three principal components.

    One PCA is fitted on a random sample of pixels pooled across years
    (``fit_on``, default all), and one stretch (the ``percentiles`` of the
    sample's scores, per component) is used for every year, so colours are
    comparable between years: identical vectors get identical colours.

    Parameters
    ----------
    n_components : int
        Components to fit; the first three become red, green and blue.
    fit_on : years, optional
        Years whose pixels the PCA is fitted on.
    sample : int
        Pixels sampled for the fit (NaN pixels are dropped).
    seed : int
        Seed of the sample.
    percentiles : (low, high)
        The named stretch: sample percentiles mapped to 0 and 255.

    Returns
    -------
    xarray.DataArray
        ``(year, y, x, channel)`` uint8 RGBA as :func:`rgb`; lazy for dask
        cubes (the fit runs when the result is computed). The fitted
        parameters are in ``attrs["pca"]`` for numpy cubes.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> img = pca_rgb(make_cube(shape=(8, 8)))
    >>> img.dtype, img.shape
    (dtype('uint8'), (2, 8, 8, 4))
    """
    if n_components < 3:
        raise ValueError(
            f"pca_rgb needs n_components >= 3 for red, green and blue, got {n_components}"
        )
    if not (0 <= percentiles[0] < percentiles[1] <= 100):
        raise ValueError(f"percentiles must be (low, high) within 0..100, got {percentiles!r}")
    emb = _embeddings(obj)
    samples = _sample_pixels(emb, sample, seed, fit_on)

    def fit(s: np.ndarray) -> dict[str, np.ndarray]:
        params = _fit_pca(s, n_components, percentiles)
        params["components"] = params["components"][:3]
        params["lo"], params["hi"] = params["lo"][:3], params["hi"][:3]
        return params

    def apply(block: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
        scores = _pca_block(block, params)
        lo, hi = params["lo"][None, :, None, None], params["hi"][None, :, None, None]
        span = hi - lo
        # A component without spread in the sample (a uniform site) maps to mid-grey.
        scaled = np.where(span > 0, (scores - lo) / np.where(span > 0, span, 1.0), 0.5)
        return np.where(np.isnan(scores), np.nan, scaled).astype(np.float32)

    scores, _ = _apply_fitted(emb, fit, apply, samples, 3, np.float32)
    channels = xr.DataArray(
        scores,
        dims=("year", "channel", "y", "x"),
        coords={"year": emb["year"], **_spatial_coords(emb)},
    )
    out = _to_uint8(channels, 0.0, 1.0)
    out.name = "pca_rgb"
    out.attrs = {"percentiles": str(tuple(percentiles)), "sample": sample, "seed": seed}
    return out


def _kmeans_fit(x: np.ndarray, k: int, seed: int, max_iter: int) -> np.ndarray:
    """k-means++ then Lloyd iterations; centres sorted for stable labels."""
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x).any(axis=1)]
    if x.shape[0] < k:
        raise ValueError(f"only {x.shape[0]} pixels with data to fit {k} clusters; lower k")
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(x.shape[0])]]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else None
        centres.append(x[rng.choice(x.shape[0], p=p)])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(axis=1))
    c = np.array(centres)
    for _ in range(max_iter):
        labels = _nearest(x, c)
        new = np.array(
            [x[labels == j].mean(axis=0) if (labels == j).any() else c[j] for j in range(k)]
        )
        if np.allclose(new, c, atol=1e-10):
            break
        c = new
    # Order clusters by their first coordinate, then second...: labels stable across runs.
    order = np.lexsort(c.T[::-1])
    return c[order]


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (x**2).sum(axis=1)[:, None] - 2 * x @ centres.T + (centres**2).sum(axis=1)[None, :]
    return d.argmin(axis=1)


def _kmeans_block(block: np.ndarray, centres: np.ndarray) -> np.ndarray:
    moved = np.moveaxis(block, 1, -1).astype(np.float64)
    flat = moved.reshape(-1, moved.shape[-1])
    valid = ~np.isnan(flat).any(axis=1)
    labels = np.full(flat.shape[0], -1, dtype=np.int16)
    if valid.any():
        labels[valid] = _nearest(flat[valid], centres)
    return labels.reshape(moved.shape[:-1])


def kmeans(
    obj: xr.Dataset | xr.DataArray,
    k: int = 6,
    *,
    sample: int = 20_000,
    fit_on: Sequence[int] | None = None,
    seed: int = 0,
    max_iter: int = 100,
) -> xr.DataArray:
    """Unsupervised classes: k-means fitted once across years, numpy only.

    The centres are fitted on a random sample of pixels pooled over the
    years (``fit_on``, default all), then every pixel of every year gets its
    nearest centre, so a label means the same class every year.

    Returns
    -------
    xarray.DataArray
        ``(year, y, x)`` int16 labels ``0..k-1``, ``-1`` where masked; lazy
        for dask cubes. Labels are ordered by the centres' coordinates, so
        the same data and seed give the same labels.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> cube = make_cube(shape=(8, 8))
    >>> labels = kmeans(cube, k=3)
    >>> labels.dtype, labels.dims
    (dtype('int16'), ('year', 'y', 'x'))
    >>> inside = labels.where(cube.coverage > 0, drop=True).values  # planted: one class
    >>> len(set(inside[~np.isnan(inside)].ravel().tolist()))
    1
    """
    if int(k) < 1:
        raise ValueError(f"k must be a positive number of clusters, got {k!r}")
    emb = _embeddings(obj)
    samples = _sample_pixels(emb, sample, seed, fit_on)
    labels, _ = _apply_fitted(
        emb,
        lambda s: _kmeans_fit(s, int(k), seed, max_iter),
        _kmeans_block,
        samples,
        None,
        np.int16,
    )
    return xr.DataArray(
        labels,
        dims=("year", "y", "x"),
        coords={"year": emb["year"], **_spatial_coords(emb)},
        name="kmeans",
        attrs={"long_name": f"k-means class (k={k}, fitted across years)", "k": int(k)},
    )
