"""Clustering: k-means classes fitted once across years, with scikit-learn.

:func:`_kmeans_fit` fits scikit-learn's ``MiniBatchKMeans`` on a sample of
pixels, :func:`_kmeans_block` labels one block with it; :func:`kmeans`
applies them lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from xembed.ops._base import apply_fitted, embeddings_of, sample_pixels, spatial_coords
from xembed.ops.learn import import_sklearn

__all__ = ["kmeans"]


def _kmeans_fit(x: np.ndarray, k: int, seed: int, max_iter: int) -> Any:
    """scikit-learn's MiniBatchKMeans on the sample's pixels with data, and the label order.

    Returns the fitted model and ``rank``: ``rank[label]`` is the cluster's
    position when centres are sorted by their first coordinate, then the
    second...: labels that do not depend on the fit's internal numbering.
    """
    cluster = import_sklearn("cluster")
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x).any(axis=1)]
    if x.shape[0] < k:
        raise ValueError(f"only {x.shape[0]} pixels with data to fit {k} clusters; lower k")
    model = cluster.MiniBatchKMeans(
        n_clusters=k, random_state=seed, max_iter=max_iter, n_init=3, batch_size=4096
    ).fit(x)
    order = np.lexsort(model.cluster_centers_.T[::-1])
    rank = np.empty(k, dtype=np.int16)
    rank[order] = np.arange(k, dtype=np.int16)
    return model, rank


def _kmeans_block(block: np.ndarray, fitted: Any) -> np.ndarray:
    model, rank = fitted
    moved = np.moveaxis(block, 1, -1).astype(np.float64)
    flat = moved.reshape(-1, moved.shape[-1])
    valid = ~np.isnan(flat).any(axis=1)
    labels = np.full(flat.shape[0], -1, dtype=np.int16)
    if valid.any():
        labels[valid] = rank[model.predict(flat[valid])]
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
    """Unsupervised classes: k-means fitted once across years.

    scikit-learn's :class:`~sklearn.cluster.MiniBatchKMeans` (the ``ml``
    extra: ``pip install 'xembed[ml]'``) is fitted on a random sample of
    pixels pooled over the years (``fit_on``, default all), then every pixel
    of every year gets its nearest centre, so a label means the same class
    every year.

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
