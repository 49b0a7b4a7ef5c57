"""Frames, strips, GIFs and figures: what users look at and hand on.

- :func:`render`: one year of a cube as an RGB picture (a :class:`Frame`),
  with the site boundary drawn on it and a label, at a chosen pixel size;
- :func:`frames`: the same for every year; :func:`save_strip` and
  :func:`save_gif` write them side by side (PNG) or animated (GIF);
- :func:`plot`: a facet grid of the years for Jupyter;
  :func:`plot_similarity_matrix`, :func:`plot_change` and
  :func:`plot_search`: the analysis figures, with colour bars.

Conventions
-----------
- North is up. Cubes are drawn from their ``x``/``y`` coordinates (a cube
  stored south-up is flipped for display), and the site polygon, kept in
  EPSG:4326, is projected into the cube's CRS (``ds.rio.crs``) to be drawn.
- Pixels without data (NaN embeddings, transparent RGBA) are shown as a dark
  grey checkerboard (:data:`NODATA_CHECKER`), as image editors show
  transparency, so they never pass for data.
- Frames are enlarged (or shrunk) by nearest neighbour: every embedding
  pixel stays a crisp square block.
- Matplotlib runs on its Agg canvas without ``pyplot``: no global figure
  state, nothing opens a window, and figures are safe to build in threads.
  Figures display in Jupyter through ``_repr_png_``.
- Files are written atomically (a temporary file renamed into place), so a
  failed write never leaves a half-written picture behind.

Modules
-------
- :mod:`.frame`: cubes to RGBA pictures, the boundary, labels, :func:`render`
  and :func:`frames`;
- :mod:`.files`: :func:`save_png`, :func:`save_figure`, :func:`save_strip`,
  :func:`save_gif`;
- :mod:`.figures`: :func:`plot`, :func:`plot_similarity_matrix`,
  :func:`plot_change`, :func:`plot_search`.
"""

from __future__ import annotations

from xembed.render.figures import plot, plot_change, plot_search, plot_similarity_matrix
from xembed.render.files import save_figure, save_gif, save_png, save_strip
from xembed.render.frame import BOUNDARY_COLOR, NODATA_CHECKER, Frame, frames, render

__all__ = [
    "BOUNDARY_COLOR",
    "NODATA_CHECKER",
    "Frame",
    "frames",
    "plot",
    "plot_change",
    "plot_search",
    "plot_similarity_matrix",
    "render",
    "save_figure",
    "save_gif",
    "save_png",
    "save_strip",
]
