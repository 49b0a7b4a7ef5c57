"""What every part of :mod:`xembed.render` shares: optional imports, defaults, new figures.

matplotlib and imageio are optional (the ``viz`` extra): they are imported
on first use, with an ImportError that says how to install them.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["DEFAULT_BANDS", "DPI", "INSTALL_HINT", "iio", "mpl", "new_figure", "png_figure_class"]

#: Resolution of every figure and frame; frame sizes are given in pixels at this dpi.
DPI = 100.0
#: Red, green and blue bands of the original notebook's composite.
DEFAULT_BANDS = ("A01", "A16", "A09")
INSTALL_HINT = "install the plotting extras: pip install 'xembed[viz]' (matplotlib, imageio)"


def mpl() -> Any:
    """``matplotlib`` with the Agg canvas, or an ImportError with the install hint."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError as err:  # pragma: no cover - matplotlib is in the test env
        raise ImportError(f"xembed.render needs matplotlib; {INSTALL_HINT}") from err
    return matplotlib


def iio() -> Any:
    """``imageio.v3``, or an ImportError with the install hint."""
    try:
        import imageio.v3 as iio
    except ImportError as err:  # pragma: no cover - imageio is in the test env
        raise ImportError(f"writing PNG/GIF files needs imageio; {INSTALL_HINT}") from err
    return iio


@functools.cache
def png_figure_class() -> type[Figure]:
    """A Figure subclass that Jupyter displays without pyplot (built on first use)."""
    mpl()
    from matplotlib.figure import Figure

    class PngFigure(Figure):
        """A matplotlib Figure with ``_repr_png_``: shown in Jupyter without pyplot."""

        def _repr_png_(self) -> bytes:
            import io

            from matplotlib.backends.backend_agg import FigureCanvasAgg

            buf = io.BytesIO()
            FigureCanvasAgg(self).print_png(buf)
            return buf.getvalue()

    return PngFigure


def new_figure(figsize: tuple[float, float], dpi: float = DPI) -> Figure:
    """A Figure on its own Agg canvas (no pyplot state), shown as PNG in Jupyter.

    Examples
    --------
    >>> fig = new_figure((2.0, 1.0))
    >>> fig.canvas.get_width_height(), fig._repr_png_()[:4]
    ((200, 100), b'\\x89PNG')
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = png_figure_class()(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig
