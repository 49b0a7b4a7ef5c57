"""What every family of analyses shares: the embeddings, weights, years, sampling.

Accessors that check a cube once for all analyses (:func:`embeddings_of`,
:func:`weights_of`, :func:`year_position`), the unit-length normalisation,
the coordinates of per-pixel results, and the fit-on-a-sample, apply-per-block
scheme of :func:`xembed.ops.pca_rgb` and :func:`xembed.ops.kmeans`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from xembed.errors import SchemaError

__all__ = [
    "apply_fitted",
    "embeddings_of",
    "sample_pixels",
    "spatial_coords",
    "unit",
    "weights_of",
    "year_position",
]


# --- access -------------------------------------------------------------------


def embeddings_of(obj: xr.Dataset | xr.DataArray) -> xr.DataArray:
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


def weights_of(obj: xr.Dataset | xr.DataArray, emb: xr.DataArray) -> xr.DataArray:
    """Per-pixel weights: ``coverage`` (variable or coordinate), else 1."""
    if isinstance(obj, xr.Dataset) and "coverage" in obj:
        return obj["coverage"].fillna(0)
    if "coverage" in emb.coords:
        return emb.coords["coverage"].fillna(0)
    return xr.ones_like(emb.isel(year=0, band=0, drop=True), dtype=np.float32)


def unit(vectors: xr.DataArray, dim: str = "band") -> xr.DataArray:
    """Vectors divided by their L2 norm along ``dim`` (zero vectors -> NaN)."""
    norm = (vectors**2).sum(dim, skipna=False) ** 0.5
    return vectors / norm.where(norm > 0)


def year_position(emb: xr.DataArray, year: int, what: str) -> int:
    """The index of ``year`` in the cube; ``what`` names it in the error if absent."""
    years = [int(y) for y in emb["year"].values]
    if int(year) not in years:
        raise ValueError(f"{what} {year!r} is not in the cube; its years are {years}")
    return years.index(int(year))


def spatial_coords(emb: xr.DataArray) -> dict[str, Any]:
    """Coordinates of a per-pixel result: y, x and any 2-D ones (coverage, spatial_ref)."""
    return {str(k): c for k, c in emb.coords.items() if set(c.dims) <= {"y", "x"}}


# --- fit on a sample, apply per block -----------------------------------------


def sample_pixels(emb: xr.DataArray, n: int, seed: int, years: Sequence[int] | None) -> Any:
    """A random sample of (lazy) pixel vectors, shape (n, bands), possibly with NaN rows.

    ``years``: the ``fit_on`` years to sample from (checked), or None for all.
    """
    if years is not None:
        for y in years:
            year_position(emb, y, "fit_on year")
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


def apply_fitted(
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
