"""xembed: AlphaEarth Foundations satellite embeddings as lazy xarray cubes.

>>> import xembed
>>> ds = xembed.open_embeddings(xembed.demo_sites()[0], range(2018, 2025))  # doctest: +SKIP
>>> ds.embed.to_frame()  # doctest: +SKIP
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from xembed import accessor as _accessor  # noqa: F401  (registers .embed)
from xembed.cube import open_embeddings
from xembed.errors import DataNotFoundError, SchemaError, SiteError, SourceError, XembedError
from xembed.ops import polygon_mean, to_frame
from xembed.schema import BANDS, dequantize, quantize
from xembed.sites import Site, load_sites
from xembed.sources.sample import demo_sites, sample_root

try:
    __version__ = version("xembed")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "BANDS",
    "DataNotFoundError",
    "SchemaError",
    "Site",
    "SiteError",
    "SourceError",
    "XembedError",
    "__version__",
    "demo_sites",
    "dequantize",
    "load_sites",
    "open_embeddings",
    "polygon_mean",
    "quantize",
    "sample_root",
    "to_frame",
]
