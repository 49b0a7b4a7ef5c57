"""Cosine similarity: between yearly means and per pixel between years.

The numpy kernels :func:`cosine_block` (all pairs of years of a chunk) and
:func:`cosine_years` (each year with a reference or the previous year, in
the chunk or one year from another) compute per-pixel cosines;
:func:`_apply_cosine` maps them over a dask cube; :func:`similarity`,
:func:`pairwise_similarity`, :func:`change` and :func:`change_summary` name
the results. :func:`similarity_matrix` compares a site's yearly means
(:mod:`xembed.ops.query` compares every pixel with a query)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from xembed.ops._base import embeddings_of, spatial_coords, unit, weights_of, year_position
from xembed.ops.reduce import is_means, pixel_area, polygon_mean, weighted_quantile

__all__ = [
    "change",
    "change_summary",
    "cosine_block",
    "cosine_years",
    "pairwise_similarity",
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


def cosine_block(block: np.ndarray, mode: str, ref: int = 0) -> np.ndarray:
    """Per-pixel cosines of one chunk holding all years and bands.

    ``mode``: ``"pairwise"`` -> (years, years, h, w); ``"previous"`` or
    ``"reference"`` (against year index ``ref``) -> (years, h, w), by
    :func:`cosine_years`. Tiles of pixels are made contiguous, then one
    band-contraction per pair of years (the practical numpy limit).
    """
    # Speed: tiles of whole rows (about _TILE pixels) are copied into one
    # reused contiguous float32 buffer (einsum is slow on strided 4-D views;
    # the copy reads the chunk from memory once), and one einsum per year
    # against itself and all later years gives the tile's Gram matrix: 36
    # band contractions for 8 years, the minimum.
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
    if mode != "pairwise":
        return cosine_years(block, mode, ref)
    n_years, n_bands, h, w = block.shape
    out = np.empty((n_years, n_years, h, w), np.float32)
    if out.size == 0:
        return out
    groups = n_bands // 8 if n_bands % 8 == 0 else 1
    cols = min(w, _TILE)
    rows = max(1, min(h, _TILE // cols))
    n_pix = rows * cols
    tile_buf = np.empty(n_years * n_bands * n_pix, np.float32)
    part_buf = np.empty(n_years * groups * n_pix, np.float32)
    gram_buf = np.empty(n_years * n_years * n_pix, np.float32)
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
                _pairwise_tile(tile, contract, gram_buf, out, win)
    return out


def _year_tile(
    year: np.ndarray, win: tuple[slice, slice], buf: np.ndarray, groups: int
) -> np.ndarray:
    """A ``(bands, h, w)`` window as ``(1, groups, bands/group, pixels)``: a view, else a copy."""
    n_bands, _, w = year.shape
    r, c = (s.stop - s.start for s in win)
    piece = year[(slice(None), *win)]
    if piece.dtype == np.float32 and c == w and piece.strides[2] == 4 and piece.strides[1] == 4 * w:
        tile = piece  # whole contiguous rows (a reader's chunk): the reshape is a view
    else:
        tile = buf[: n_bands * r * c].reshape(n_bands, r, c)
        np.copyto(tile, piece, casting="unsafe")
    return tile.reshape(1, groups, n_bands // groups, r * c)


def _cosines(partner: list[int | None], squared: np.ndarray, dots: np.ndarray) -> np.ndarray:
    """Cosines of each year with its partner from squared lengths and dot products (float64)."""
    inv = 1.0 / np.sqrt(squared.astype(np.float64))  # zero -> inf -> NaN
    cos = np.empty(dots.shape)
    for i, p in enumerate(partner):
        if p is None:
            cos[i] = np.nan
        elif p == i:  # 1 where the vector has a length; NaN or zero vectors -> NaN
            cos[i] = np.where(squared[i] > 0, 1.0, np.nan)
        else:
            np.multiply(dots[i], inv[i], out=cos[i])
            cos[i] *= inv[p]
    return np.clip(cos, -1.0, 1.0, out=cos)


def cosine_years(
    block: np.ndarray | Sequence[np.ndarray],
    mode: str,
    ref: int = 0,
    other: np.ndarray | None = None,
    other_squared: np.ndarray | None = None,
    squared_out: np.ndarray | None = None,
) -> np.ndarray:
    """Per-pixel cosines of each year of a chunk with its reference or previous year.

    ``block``: some years, all bands ``(years, bands, h, w)``, or a list of
    ``(bands, h, w)`` years (chunks of years, never concatenated). ``other``
    ``(bands, h, w)``: the year outside it that the chunk needs, the
    reference (``mode="reference"``, else ``ref`` indexes ``block``) or the
    year before ``block[0]`` (``"previous"``; without it that year is NaN).
    ``other_squared``: its squared lengths ``(h, w)``, as ``squared_out``
    ``(years, h, w)`` received them for its own chunk (else computed here).
    Returns ``(years, h, w)`` float32: the bits of the years merged.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> cube = rng.standard_normal((3, 64, 4, 5)).astype(np.float32)
    >>> merged = cosine_block(cube, "reference", 0)
    >>> by_year = [cosine_years(cube[i : i + 1], "reference", other=cube[0]) for i in range(3)]
    >>> bool(np.array_equal(np.concatenate(by_year), merged))
    True
    """
    # cosine_block's arithmetic (grouped float32 sums over bands, the cosine in
    # float64): merged and year-chunked cubes give the same bits. Tiles of whole
    # contiguous rows are views, so a year chunk is read once by its own task
    # and once by its partner's (which takes its length from the first).
    n_years = len(block)
    n_bands, h, w = block[0].shape if n_years else np.shape(block)[1:]
    out = np.empty((n_years, h, w), np.float32)
    if out.size == 0:
        return out
    years = [*block, *([] if other is None else [other])]
    extra = n_years if other is not None else None
    partner: list[int | None] = [ref if extra is None else extra] * n_years
    if mode == "previous":
        partner = [extra, *range(n_years - 1)]
    groups = n_bands // 8 if n_bands % 8 == 0 else 1
    cols = min(w, _TILE)
    rows = max(1, min(h, _TILE // cols))
    bufs = [np.empty(n_bands * rows * cols, np.float32) for _ in years]
    part_buf = np.empty(groups * rows * cols, np.float32)
    squared = np.empty((len(years), rows * cols), np.float32)
    dots = np.empty((n_years, rows * cols), np.float32)
    contract: _Contract = functools.partial(_contract, part_buf=part_buf, groups=groups)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for r0 in range(0, h, rows):
            for c0 in range(0, w, cols):
                win = (slice(r0, min(r0 + rows, h)), slice(c0, min(c0 + cols, w)))
                r, c = win[0].stop - r0, win[1].stop - c0
                tiles: dict[int, np.ndarray] = {}
                # Each year's dot with its partner right after its length: both in cache.
                for j in [*(p for p in partner[:1] if p is not None), *range(n_years)]:
                    if j in tiles:
                        continue
                    tiles[j] = _year_tile(years[j], win, bufs[j], groups)
                    if j == extra and other_squared is not None:
                        squared[j, : r * c] = other_squared[win].reshape(-1)
                    else:
                        contract("ygkt,ygkt->ygt", tiles[j], tiles[j], squared[j : j + 1, : r * c])
                    p = partner[j] if j < n_years else None
                    if p is not None and p != j:
                        contract("ygkt,ygkt->ygt", tiles[j], tiles[p], dots[j : j + 1, : r * c])
                if squared_out is not None:
                    squared_out[(slice(None), *win)] = squared[:n_years, : r * c].reshape(-1, r, c)
                cos = _cosines(partner, squared[:, : r * c], dots[:, : r * c])
                out[(slice(None), *win)] = cos.reshape(n_years, r, c)
    return out


# --- graph --------------------------------------------------------------------


def _merge_chunks(data: da.Array, axes: tuple[int, ...]) -> da.Array:
    """``data`` with one chunk along ``axes``, space split if a chunk would outgrow the limit."""
    if all(len(data.chunks[axis]) == 1 for axis in axes):
        return data
    # Merging years and bands multiplies the chunk size (8 years of
    # (1, 64, 512, 512) chunks would give 512 MiB chunks): if the merged chunk
    # outgrows dask's array.chunk-size, split space in the same, single
    # rechunk so that memory stays bounded by that size.
    merged = np.prod([data.shape[a] if a in axes else max(data.chunks[a]) for a in range(4)]) * 4
    limit = dask.utils.parse_bytes(dask.config.get("array.chunk-size"))
    target: dict[int, Any] = dict.fromkeys(axes, -1)
    if merged > limit:
        target.update({2: "auto", 3: "auto"})
    return data.rechunk(target, block_size_limit=limit)


def _over_year_chunks(blocks: list[list[np.ndarray]], mode: str, ref: int) -> np.ndarray:
    """:func:`cosine_years` of all year chunks of one spatial tile, as one list of years.

    ``blocks`` holds the tile's year chunks as dask hands them over (a list per
    chunk of its one band block): never concatenated, so no year is copied,
    and the kernel walks all years tile by tile, as on a merged chunk.
    """
    return cosine_years([year for chunk in blocks for year in chunk[0]], mode, ref)


def _by_year_chunk(data: da.Array, mode: str, ref: int) -> da.Array:
    """Cosines with no years merged: one task per spatial tile takes that tile's year chunks.

    Every chunk is read once (as the numpy kernel reads every year once), and
    the output has all years of the tile in one chunk (1/64 of the input).
    """
    return da.blockwise(
        _over_year_chunks,
        "Tyx",
        data,
        "tbyx",
        new_axes={"T": data.shape[0]},
        concatenate=False,
        mode=mode,
        ref=ref,
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
    )


def _apply_cosine(emb: xr.DataArray, mode: str, ref: int = 0) -> Any:
    """Per-pixel cosines of a cube: :func:`cosine_block` or :func:`cosine_years` per chunk.

    Pairwise cosines need every year of a pixel in one chunk (years merged
    once, lazily); a reference or previous year needs only the chunk's own
    years and one more, so chunks of years stay as they are.
    """
    data = emb.data
    if not isinstance(data, da.Array):
        return cosine_block(np.asarray(data), mode, ref)
    if mode != "pairwise":
        return _by_year_chunk(_merge_chunks(data, (1,)), mode, ref)
    data = _merge_chunks(data, (0, 1))
    n_years = data.shape[0]
    return da.map_blocks(
        cosine_block,
        data,
        mode,
        ref,
        chunks=((n_years,), (n_years,), data.chunks[2], data.chunks[3]),
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), np.float32),
    )


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
    # Coverage coords of year would be compared with those of year_2 (and computed).
    means = means.drop_vars(["valid_fraction", "valid_ha"], errors="ignore")
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
    (of the polygon's area with data), ``valid_ha`` and ``valid_fraction``
    (the area, and share of the polygon's area, with data in both that year
    and the baseline), ``mean_similarity`` and ``similarity_p{N}``
    (coverage-weighted, :func:`weighted_quantile`).

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
    pixel_ha = pixel_area(emb) / 10_000.0
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
            "valid_fraction": total / w.sum() if w.sum() > 0 else np.nan,
            "mean_similarity": float((np.where(valid, s, 0) * wv).sum() / total)
            if total > 0
            else np.nan,
        }
        for p in percentiles:
            row[f"similarity_p{p:g}"] = float(weighted_quantile(s.ravel(), wv.ravel(), p / 100))
        rows.append(row)
    return pd.DataFrame(rows)
