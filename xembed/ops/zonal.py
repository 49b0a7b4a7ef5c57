"""Zonal means: the mean embedding of many sites in one pass over a cube.

The sites' coverage on the cube's grid becomes one sparse table of
(site, pixel, weight) entries (:func:`grid_of` gives the grid); the numpy
kernel :func:`_zonal_block` turns one chunk and its entries into weighted
sums, and :func:`zonal_mean` builds the graph that adds them up per site.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from xembed.errors import SchemaError
from xembed.ops._base import embeddings_of, unit
from xembed.ops.reduce import MIN_VALID, check_min_valid
from xembed.schema import PIXEL_SIZE
from xembed.sites import as_sites

__all__ = ["grid_of", "zonal_mean"]

# Sparse (site, row, column, weight) entries, one array each.
_Entries = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# --- sites on the grid --------------------------------------------------------


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


def _projected(sites: Sequence[Any], dst: Any) -> np.ndarray:
    """The sites' geometries in ``dst``, all in one call (one transformer), as project() would."""
    import pyproj
    import shapely

    from xembed._util import transformer
    from xembed.grid import project

    src = pyproj.CRS.from_epsg(4326)
    geometries = np.array([site.geometry for site in sites], dtype=object)
    if src == dst:
        return shapely.force_2d(geometries)
    to_grid = transformer(src, dst)
    projected = shapely.transform(
        geometries, lambda x, y: to_grid.transform(x, y), interleaved=False
    )
    if not np.isfinite(shapely.get_coordinates(projected)).all():
        for site in sites:  # the per-site check raises project()'s SiteError
            project(site.geometry, src, dst)
    return projected


def _site_weights(sites: Sequence[Any], grid: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COO triplets (site, flat pixel, coverage) of every site on the grid.

    Sites may overlap: a pixel can carry several (site, weight) pairs. Each
    site's coverage is computed over its own window, the site's bounding box
    on the grid (one pixel of margin, clipped to the grid), so the cost grows
    with the sites' sizes, not with the grid times the number of sites.
    Entries come out grouped by site, in site order.
    """
    import pyproj

    from xembed.grid import Grid, coverage_fraction

    dst = pyproj.CRS.from_user_input(grid.crs)
    res = grid.res
    site_idx, pix_idx, weight = [], [], []
    for i, geometry in enumerate(_projected(sites, dst)):
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


# --- kernel -------------------------------------------------------------------


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


# --- graph --------------------------------------------------------------------


def _ratio(total: np.ndarray, weights: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):  # no weight: NaN, silently
        return total / weights


def _numpy_sums(values: np.ndarray, entries: _Entries, n_sites: int) -> np.ndarray:
    """Weighted sums and weights (2, n_sites, years, bands) of an in-memory cube."""
    site_idx, rows, cols, weight = entries
    n_years, n_bands = values.shape[:2]
    sums = np.zeros((2, n_sites, n_years, n_bands))
    # Batches of entries bound the gathered float64 values.
    batch = max(1 << 10, (1 << 24) // max(1, n_years * n_bands))
    for start in range(0, weight.size, batch):
        part = slice(start, start + batch)
        sums += _zonal_block(values, site_idx[part], rows[part], cols[part], weight[part], n_sites)
    return sums


def _block_buckets(chunks: tuple[tuple[int, ...], ...], entries: _Entries) -> list[tuple[Any, ...]]:
    """The entries per spatial block: (block row, block column, entries in block coordinates).

    Entries are bucketed by spatial block once (a stable sort keeps them
    grouped by site); a block no site touches gets no bucket.
    """
    site_idx, rows, cols, weight = entries
    row_edges = np.cumsum((0, *chunks[2]))
    col_edges = np.cumsum((0, *chunks[3]))
    n_col_blocks = len(chunks[3])
    key = (np.searchsorted(row_edges, rows, side="right") - 1) * n_col_blocks + (
        np.searchsorted(col_edges, cols, side="right") - 1
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
                rows[sel] - row_edges[bi],
                cols[sel] - col_edges[bj],
                weight[sel],
            )
        )
    return buckets


def _dask_sums(data: da.Array, entries: _Entries, n_sites: int) -> da.Array:
    """Weighted sums and weights (2, n_sites, years, bands) of a dask cube, lazily.

    Any chunking works (sums are per year and band): no rechunk, and a block
    no site touches is never read.
    """
    buckets = _block_buckets(data.chunks, entries)
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
    return da.block(pieces)


# --- xarray -------------------------------------------------------------------


def zonal_mean(
    cube: xr.Dataset | xr.DataArray,
    sites: Any,
    *,
    normalize: bool = False,
    min_valid: float = MIN_VALID,
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
    min_valid : float, default 0.9
        The valid fraction below which a site-year is reported, recorded in
        ``attrs["min_valid"]``. Like :func:`xembed.polygon_mean` this never
        warns (the result may be lazy); its table, ``to_frame(means)``, and
        ``check_coverage(means.compute())`` raise the
        :class:`xembed.CoverageWarning`.

    Returns
    -------
    xarray.DataArray
        ``(site, year, band)`` float64, lazy if the cube is; NaN for a site
        year without valid pixels. Coordinates ``valid_fraction(site, year)``
        (the coverage-weighted share of the site with data, 0..1) and
        ``valid_ha(site, year)`` (that area in hectares), from the same pass.

    Examples
    --------
    >>> import numpy as np
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
    >>> means["valid_fraction"].values.tolist()  # every pixel under the site has data
    [[1.0, 1.0]]
    >>> xembed.to_frame(means).columns[:4].tolist()
    ['site_id', 'year', 'valid_fraction', 'valid_ha']
    """
    min_valid = check_min_valid(min_valid)
    emb = embeddings_of(cube)
    site_list = as_sites(sites)
    if not site_list:
        raise ValueError("sites is empty; pass at least one site")
    ids = [s.id for s in site_list]
    if len(set(ids)) != len(ids):
        dupes = sorted({str(i) for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate site ids {dupes}; give every site its own id")
    grid = grid_of(cube)
    # Coverage of each site over its own bounding window, not the whole grid.
    site_idx, pix_idx, weight = _site_weights(site_list, grid)
    rows, cols = np.divmod(pix_idx, grid.width)
    entries = (site_idx, rows, cols, weight)
    data = emb.data
    means: Any
    if isinstance(data, da.Array):
        sums: Any = _dask_sums(data, entries, len(site_list))
        means = da.map_blocks(_ratio, sums[0], sums[1], dtype=np.float64)
    else:
        sums = _numpy_sums(np.asarray(data), entries, len(site_list))
        means = _ratio(sums[0], sums[1])
    result = xr.DataArray(
        means,
        dims=("site", "year", "band"),
        coords={"site": ids, "year": emb["year"].values, "band": emb["band"].values},
        name="zonal_mean",
        attrs={"long_name": "coverage-weighted mean embedding per site", "min_valid": min_valid},
    )
    if normalize:
        result = unit(result)
    # The weights with data per band (sums[1]) are those of the means: no extra pass.
    total = np.bincount(site_idx, weights=weight, minlength=len(site_list))
    return result.assign_coords(_coverage(sums[1].max(axis=-1), total, grid.res))


def _coverage(valid: Any, total: np.ndarray, res: float) -> dict[str, xr.DataArray]:
    """``valid_fraction`` and ``valid_ha`` (site, year) from the weights with data."""
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, 1.0 / total, 0.0)[:, None]
    dims = ("site", "year")
    return {
        # Rounded: valid and total are sums in different orders, and a site
        # with data everywhere must read exactly 1.
        "valid_fraction": xr.DataArray(
            (valid * share).round(12),
            dims=dims,
            attrs={
                "long_name": "share of the site's area with data (coverage-weighted)",
                "units": "1",
            },
        ),
        "valid_ha": xr.DataArray(
            valid * (res * res / 10_000.0),
            dims=dims,
            attrs={"long_name": "area of the site with data", "units": "ha"},
        ),
    }
