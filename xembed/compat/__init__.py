"""The original notebook's API on xembed's core: migrate line by line.

The notebook this project replaces (``gee_polygons``, on Earth Engine) used
``load_sites``, ``Site.extract_continuous``, ``get_embedding_image``,
``render_image``, ``export_frames_as_strip``/``_gif`` and a few constants.
The same names live here, so its code runs with only the imports changed::

    # before                                   # after
    import ee                                  import xembed
    ee.Authenticate()                          from xembed.compat import (
    ee.Initialize(project="my-project")            use_source, load_sites, ALPHA_EMBEDDINGS,
    from gee_polygons.site import load_sites       EMBEDDING_BANDS, EMBEDDING_VIS_DEFAULT,
    ...                                            get_embedding_image, render_image,
                                                   export_frames_as_strip, export_frames_as_gif)
                                               use_source("ee", project="my-project")

:func:`use_source` is the one line that says where the data come from:
``"sample"`` (the default: the bundled demo data, offline), ``"cog"`` (the
public Cloud-Optimized GeoTIFF mirror, no account needed), ``"ee"`` (Earth
Engine) or the path of a local mirror folder.

What is the same, and what is not
---------------------------------
- Sites from :func:`load_sites` are :class:`xembed.Site` objects (everything
  in xembed accepts them) whose ``geometry`` is an :class:`EEGeometry`: the
  shapely polygon in EPSG:4326, plus the two Earth Engine calls the
  notebook makes, in **metres**: ``site.geometry.buffer(500).bounds()``.
  See :class:`EEGeometry` for what that wrapper changes.
- ``extract_continuous`` returns the same table (``site_id, year,
  A00..A63``); means are coverage-weighted (exact partial pixels), as
  :func:`xembed.polygon_mean` computes them.
- ``get_embedding_image`` returns a lazy one-year cube
  (:class:`xarray.Dataset`), not an ``ee.Image``; ``render_image`` returns
  the picture as a numpy array (:class:`xembed.render.Frame`, shown as a
  picture in Jupyter), drawn in the site's UTM zone with north up.
- The similarity the notebook printed (``embeddings @ embeddings.T``) is
  the dot product of means, about 0.92 on its diagonal;
  :func:`xembed.similarity_matrix` gives the cosine (1 on the diagonal).
"""

from xembed.compat.geometry import EEGeometry
from xembed.compat.notebook import (
    ALPHA_EMBEDDINGS,
    EMBEDDING_BANDS,
    EMBEDDING_VIS_DEFAULT,
    Site,
    export_frames_as_gif,
    export_frames_as_strip,
    extract_continuous,
    get_embedding_image,
    load_sites,
    render_image,
)
from xembed.compat.source import SourceSetting, current_source, use_source

__all__ = [
    "ALPHA_EMBEDDINGS",
    "EMBEDDING_BANDS",
    "EMBEDDING_VIS_DEFAULT",
    "EEGeometry",
    "Site",
    "SourceSetting",
    "current_source",
    "export_frames_as_gif",
    "export_frames_as_strip",
    "extract_continuous",
    "get_embedding_image",
    "load_sites",
    "render_image",
    "use_source",
]
