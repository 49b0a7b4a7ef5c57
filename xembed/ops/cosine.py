"""Cosine similarity: between yearly means, per pixel between years, with a query.

The numpy kernel :func:`cosine_block` computes per-pixel cosines of one
chunk that holds all years and bands; :func:`_apply_cosine` maps it over a
dask cube; :func:`similarity`, :func:`pairwise_similarity`, :func:`change`
and :func:`change_summary` name the results. :func:`similarity_matrix`
compares a site's yearly means and :func:`search` every pixel with a query.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from xembed.ops._base import embeddings_of, spatial_coords, unit, weights_of, year_position
from xembed.ops.reduce import is_means, polygon_mean, weighted_quantile
from xembed.ops.zonal import grid_of
from xembed.schema import PIXEL_SIZE

__all__ = [
    "change",
    "change_summary",
    "cosine_block",
    "pairwise_similarity",
    "search",
    "similarity",
    "similarity_matrix",
]

# Pixels per tile in the cosine kernels: (years x 64 x 4096) float32 stays in L2.
_TILE = 4096

# contract(spec, a, b, out): out = the sum over bands of a * b (see _contract).
_Contract = Callable[[str, np.ndarray, np.ndarray, np.ndarray], None]


# --- kernel -------------------------------------------------------------------


def _contract(
    spec: str, a: np.ndarray, b: np.ndarray, out: np.ndarray, part_buf: np.ndarray, groups: int
) -> None:
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


def _pairwise_tile(
    tile: np.ndarray,
    contract: _Contract,
    gram_buf: np.ndarray,
    out: np.ndarray,
    win: tuple[slice, slice],
) -> None:
    """Cosines between every pair of years of one tile, into ``out[:, :, *win]``.

    ``tile`` is (years, band groups, bands per group, pixels).
    """
    n_years, t = tile.shape[0], tile.shape[-1]
    r, c = (s.stop - s.start for s in win)
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


def _yearly_tile(
    tile: np.ndarray,
    contract: _Contract,
    gram_buf: np.ndarray,
    out: np.ndarray,
    win: tuple[slice, slice],
    mode: str,
    ref: int,
) -> None:
    """Cosines of each year of one tile with the previous or the ``ref`` year, into ``out``."""
    n_years, t = tile.shape[0], tile.shape[-1]
    r, c = (s.stop - s.start for s in win)
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


def cosine_block(block: np.ndarray, mode: str, ref: int = 0) -> np.ndarray:
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
    contract: _Contract = functools.partial(_contract, part_buf=part_buf, groups=groups)
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
                    _pairwise_tile(tile, contract, gram_buf, out, win)
                else:
                    _yearly_tile(tile, contract, gram_buf, out, win, mode, ref)
    return out


# --- graph --------------------------------------------------------------------


def _apply_cosine(emb: xr.DataArray, mode: str, ref: int = 0) -> Any:
    """:func:`cosine_block` over every chunk, merged first to hold all years and bands."""
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
                cosine_block,
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
            return cosine_block(block, mode, ref)[:, None]

        return data.map_blocks(
            keep_axis,
            mode,
            ref,
            chunks=(data.chunks[0], (1,), data.chunks[2], data.chunks[3]),
            dtype=np.float32,
            meta=np.empty((0, 0, 0, 0), np.float32),
        )[:, 0]
    return cosine_block(np.asarray(data), mode, ref)


# --- per site and per pixel ---------------------------------------------------


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
    >>> import numpy as np
    >>> from xembed.testing import make_cube
    >>> sim = similarity_matrix(make_cube(years=(2020, 2021, 2022), shape=(8, 8)))
    >>> sim.dims, np.diag(sim.values).tolist()
    (('year', 'year_2'), [1.0, 1.0, 1.0])
    """
    if isinstance(obj, xr.DataArray) and is_means(obj):
        means = obj.transpose("year", "band")
    else:
        means = polygon_mean(obj)
    means = means.astype(np.float64)
    if normalize:
        means = unit(means)
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
    emb = embeddings_of(obj)
    if reference == "previous":
        mode, ref, label = "previous", 0, "previous year"
    elif reference == "first":
        mode, ref, label = "reference", 0, f"{int(emb['year'][0])}"
    elif isinstance(reference, (int, np.integer)) and not isinstance(reference, bool):
        mode, ref, label = (
            "reference",
            year_position(emb, int(reference), "reference year"),
            str(reference),
        )
    else:
        raise ValueError(
            f"reference must be a year of the cube, 'previous' or 'first', got {reference!r}"
        )
    out = xr.DataArray(
        _apply_cosine(emb, mode, ref),
        dims=("year", "y", "x"),
        coords={"year": emb["year"], **spatial_coords(emb)},
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
    emb = embeddings_of(obj)
    return xr.DataArray(
        _apply_cosine(emb, "pairwise"),
        dims=("year", "year_2", "y", "x"),
        coords={"year": emb["year"].values, "year_2": emb["year"].values, **spatial_coords(emb)},
        name="similarity",
        attrs={"long_name": "cosine similarity between years", "units": "1"},
    )


# --- change -------------------------------------------------------------------


def _site_start_year(obj: xr.Dataset | xr.DataArray) -> int | None:
    value = obj.attrs.get("site_start_year")
    if value is None or int(value) < 0:
        return None
    return int(value)


def _baseline(obj: xr.Dataset | xr.DataArray, emb: xr.DataArray, baseline: int | None) -> int:
    if baseline is not None:
        year_position(emb, baseline, "baseline year")
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
    emb = embeddings_of(obj)
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
    emb = embeddings_of(obj)
    weights = weights_of(obj, emb)
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
