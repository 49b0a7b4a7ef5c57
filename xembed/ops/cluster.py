"""Clustering: k-means classes fitted once across years, numpy only.

The numpy kernels fit the centres on a sample (:func:`_kmeans_fit`) and label
one block (:func:`_kmeans_block`); :func:`kmeans` applies them lazily.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from xembed.ops._base import apply_fitted, embeddings_of, sample_pixels, spatial_coords

__all__ = ["kmeans"]


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
    >>> import numpy as np
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
    emb = embeddings_of(obj)
    samples = sample_pixels(emb, sample, seed, fit_on)
    labels, _ = apply_fitted(
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
        coords={"year": emb["year"], **spatial_coords(emb)},
        name="kmeans",
        attrs={"long_name": f"k-means class (k={k}, fitted across years)", "k": int(k)},
    )
