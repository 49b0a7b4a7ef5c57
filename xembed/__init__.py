"""xembed: AlphaEarth Foundations satellite embeddings as lazy xarray cubes.

>>> import xembed
>>> ds = xembed.open_embeddings(xembed.demo_sites()[0], range(2018, 2025))  # doctest: +SKIP
>>> ds.embed.to_frame()  # doctest: +SKIP
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from xembed import accessor as _accessor  # noqa: F401  (registers .embed)
from xembed import render
from xembed.batch import class_areas, extract, sample
from xembed.cube import open_embeddings
from xembed.errors import (
    CoverageWarning,
    DataNotFoundError,
    EarthEngineError,
    ReadError,
    SchemaError,
    SiteError,
    SourceError,
    XembedError,
)
from xembed.export import open_cube, open_sites, to_datatree, write_sites_zarr
from xembed.maps import explore, explore_sites
from xembed.ops import (
    assess,
    change,
    change_summary,
    check_coverage,
    kmeans,
    pairwise_similarity,
    pca_rgb,
    polygon_mean,
    rgb,
    search,
    similarity,
    similarity_matrix,
    to_frame,
    zonal_mean,
)
from xembed.report import report
from xembed.schema import BANDS, dequantize, quantize
from xembed.sites import Site, load_sites
from xembed.sources.sample import demo_sites, sample_root

try:
    __version__ = version("xembed")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "BANDS",
    "CoverageWarning",
    "DataNotFoundError",
    "EarthEngineError",
    "ReadError",
    "SchemaError",
    "Site",
    "SiteError",
    "SourceError",
    "XembedError",
    "__version__",
    "assess",
    "change",
    "change_summary",
    "check_coverage",
    "class_areas",
    "demo_sites",
    "dequantize",
    "explore",
    "explore_sites",
    "extract",
    "kmeans",
    "load_sites",
    "open_cube",
    "open_embeddings",
    "open_sites",
    "pairwise_similarity",
    "pca_rgb",
    "polygon_mean",
    "quantize",
    "render",
    "report",
    "rgb",
    "sample",
    "sample_root",
    "search",
    "similarity",
    "similarity_matrix",
    "to_datatree",
    "to_frame",
    "write_sites_zarr",
    "zonal_mean",
]
