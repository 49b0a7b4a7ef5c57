"""Composites: RGBA images of a cube, from three bands or three principal components.

:func:`rgb` stretches three bands; :func:`pca_rgb` fits one PCA on a sample
pooled across years (scikit-learn's, applied per block by
:func:`xembed.ops._base.apply_fitted`) so colours compare between years.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from xembed.ops._base import apply_fitted, embeddings_of, sample_pixels, spatial_coords
from xembed.ops.learn import import_sklearn
from xembed.schema import BANDS

__all__ = ["pca_rgb", "rgb"]


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
    emb = embeddings_of(obj)
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


def _fit_pca(samples: np.ndarray, n_components: int, percentiles: tuple[float, float]):
    """scikit-learn's PCA on the sample's pixels with data, signs fixed, and the stretch."""
    decomposition = import_sklearn("decomposition")
    x = np.asarray(samples, dtype=np.float64)
    x = x[~np.isnan(x).any(axis=1)]
    if x.shape[0] < n_components + 1:
        raise ValueError(
            f"only {x.shape[0]} pixels with data to fit the PCA; need more than {n_components}"
        )
    # A uniform sample has no variance: sklearn's explained-variance ratio divides by 0.
    with np.errstate(invalid="ignore", divide="ignore"):
        pca = decomposition.PCA(n_components=n_components, svd_solver="full").fit(x)
    comps = pca.components_
    # Deterministic signs: the largest loading of each component is positive.
    signs = np.sign(comps[np.arange(n_components), np.abs(comps).argmax(axis=1)])
    comps = comps * signs[:, None]
    mean = pca.mean_
    scores = (x - mean) @ comps.T
    lo, hi = np.percentile(scores, percentiles, axis=0)
    return {"mean": mean, "components": comps, "lo": lo, "hi": hi}


def _pca_block(block: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """(years, bands, h, w) -> (years, 3, h, w) float32 scores."""
    moved = np.moveaxis(block, 1, -1).astype(np.float64) - params["mean"]
    scores = moved @ params["components"].T
    return np.moveaxis(scores, -1, 1).astype(np.float32)


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

    One PCA (scikit-learn's :class:`~sklearn.decomposition.PCA`, the ``ml``
    extra: ``pip install 'xembed[ml]'``) is fitted on a random sample of
    pixels pooled across years (``fit_on``, default all), and one stretch
    (the ``percentiles`` of the sample's scores, per component) is used for
    every year, so colours are comparable between years: identical vectors
    get identical colours.

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
    emb = embeddings_of(obj)
    samples = sample_pixels(emb, sample, seed, fit_on)

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

    scores, _ = apply_fitted(emb, fit, apply, samples, 3, np.float32)
    channels = xr.DataArray(
        scores,
        dims=("year", "channel", "y", "x"),
        coords={"year": emb["year"], **spatial_coords(emb)},
    )
    out = _to_uint8(channels, 0.0, 1.0)
    out.name = "pca_rgb"
    out.attrs = {"percentiles": str(tuple(percentiles)), "sample": sample, "seed": seed}
    return out
