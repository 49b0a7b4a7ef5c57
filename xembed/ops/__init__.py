"""The analyses: pure functions on the cube, lazy unless they return numbers.

Each function takes a cube (:class:`xarray.Dataset` with ``embeddings`` and
``coverage``) or an embeddings :class:`xarray.DataArray` and is also
available as a one-line ``.embed`` accessor method (``ds.embed.similarity()``).

Conventions
-----------
- Cosines re-normalise every vector first: the stored embeddings are unit
  length only up to quantisation, and means of unit vectors are not unit.
- Masked pixels (NaN) stay NaN; a zero vector has no direction and gives NaN.
- Pairwise cosines need all years and bands of a pixel in one chunk (other
  chunkings are rechunked once, lazily); cosines with a reference or previous
  year take a tile's year chunks as they are and merge only chunked bands.

Layout
------
One module per family, each keeping its numpy kernels (functions of plain
arrays), the dask graph that maps them over chunks and the xarray functions
that name the results apart, in that order:

- :mod:`xembed.ops.reduce`: polygon statistics (:func:`polygon_mean`,
  :func:`weighted_quantile`, :func:`to_frame`) and how much of each site
  they stand on (``valid_fraction``, ``valid_ha``, :func:`check_coverage`);
- :mod:`xembed.ops.zonal`: many sites in one pass (:func:`zonal_mean`, :func:`grid_of`);
- :mod:`xembed.ops.cosine`: cosine similarity (:func:`similarity_matrix`,
  :func:`similarity`, :func:`pairwise_similarity`, :func:`change`,
  :func:`change_summary`, :func:`search`);
- :mod:`xembed.ops.composite`: RGBA composites (:func:`rgb`, :func:`pca_rgb`);
- :mod:`xembed.ops.cluster`: :func:`kmeans` (scikit-learn);
- :mod:`xembed.ops.learn`: learning from labels (:func:`sample`,
  :func:`predict`, :func:`classify`, :func:`class_area`);
- :mod:`xembed.ops.assess`: cross-validated scores with spatial folds
  (:func:`assess`, :func:`spatial_blocks`, :class:`Assessment`);
- :mod:`xembed.ops._base`: what they share (the embeddings and weights of a
  cube, year positions, fit on a sample then apply per block).
"""

from __future__ import annotations

from xembed.ops.assess import Assessment as Assessment
from xembed.ops.assess import assess, spatial_blocks
from xembed.ops.cluster import kmeans
from xembed.ops.composite import pca_rgb, rgb
from xembed.ops.cosine import (
    change,
    change_summary,
    pairwise_similarity,
    similarity,
    similarity_matrix,
)
from xembed.ops.learn import class_area, classify, predict, sample
from xembed.ops.query import search
from xembed.ops.reduce import REDUCERS as REDUCERS
from xembed.ops.reduce import Reducer as Reducer
from xembed.ops.reduce import check_coverage, polygon_mean, to_frame, weighted_quantile
from xembed.ops.zonal import grid_of as grid_of
from xembed.ops.zonal import zonal_mean

__all__ = [
    "assess",
    "change",
    "change_summary",
    "check_coverage",
    "class_area",
    "classify",
    "kmeans",
    "pairwise_similarity",
    "pca_rgb",
    "polygon_mean",
    "predict",
    "rgb",
    "sample",
    "search",
    "similarity",
    "similarity_matrix",
    "spatial_blocks",
    "to_frame",
    "weighted_quantile",
    "zonal_mean",
]

# The functions' public home is this package, as when it was one module: the
# accessor's "Accessor form of xembed.ops.similarity", help() and reprs name it
# (doctests are collected here for the same reason).
for _func in (*(globals()[name] for name in __all__), grid_of, Assessment):
    _func.__module__ = __name__
del _func
