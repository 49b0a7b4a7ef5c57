"""Frames, strips, GIFs and figures: what users look at and hand on.

- :func:`render`: one year of a cube as an RGB picture (a :class:`Frame`),
  with the site boundary drawn on it and a label, at a chosen pixel size;
- :func:`frames`: the same for every year; :func:`save_strip` and
  :func:`save_gif` write them side by side (PNG) or animated (GIF);
- :func:`plot`: a facet grid of the years for Jupyter;
  :func:`plot_similarity_matrix` and :func:`plot_change`: the analysis
  figures, with colour bars.

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
"""

from __future__ import annotations

import functools
import math
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "BOUNDARY_COLOR",
    "NODATA_CHECKER",
    "Frame",
    "frames",
    "plot",
    "plot_change",
    "plot_similarity_matrix",
    "render",
    "save_figure",
    "save_gif",
    "save_png",
    "save_strip",
]

#: The two greys (RGB) of the checkerboard that marks pixels without data.
NODATA_CHECKER: tuple[tuple[int, int, int], tuple[int, int, int]] = ((38, 38, 38), (70, 70, 70))
#: Colour of the site boundary (drawn with a black halo, visible on any colour).
BOUNDARY_COLOR = "#ffe600"
_HALO_COLOR = "black"
_DPI = 100.0
_DEFAULT_BANDS = ("A01", "A16", "A09")
_SIM_TITLE = "Cosine similarity between years"
_INSTALL_HINT = "install the plotting extras: pip install 'xembed[viz]' (matplotlib, imageio)"


# --------------------------------------------------------------------------- optional imports


def _mpl() -> Any:
    """``matplotlib`` with the Agg canvas, or an ImportError with the install hint."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError as err:  # pragma: no cover - matplotlib is in the test env
        raise ImportError(f"xembed.render needs matplotlib; {_INSTALL_HINT}") from err
    return matplotlib


def _iio() -> Any:
    try:
        import imageio.v3 as iio
    except ImportError as err:  # pragma: no cover - imageio is in the test env
        raise ImportError(f"writing PNG/GIF files needs imageio; {_INSTALL_HINT}") from err
    return iio


@functools.cache
def _png_figure_class() -> type[Figure]:
    """A Figure subclass that Jupyter displays without pyplot (built on first use)."""
    _mpl()
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


def _new_figure(figsize: tuple[float, float], dpi: float = _DPI) -> Figure:
    """A Figure on its own Agg canvas (no pyplot state), shown as PNG in Jupyter."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = _png_figure_class()(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


# --------------------------------------------------------------------------- Frame


class Frame(np.ndarray):
    """An RGB(A) ``uint8`` picture ``(height, width, 3 or 4)`` that Jupyter shows.

    A plain :class:`numpy.ndarray` in every respect (``np.asarray(frame)``
    drops the subclass), plus ``_repr_png_``: a cell that ends with a frame
    displays the picture instead of printing numbers.

    Examples
    --------
    >>> frame = Frame.from_array(np.zeros((2, 3, 3), dtype=np.uint8))
    >>> isinstance(frame, np.ndarray), frame.shape
    (True, (2, 3, 3))
    >>> frame._repr_png_()[:4]
    b'\\x89PNG'
    """

    @classmethod
    def from_array(cls, array: np.ndarray) -> Frame:
        """View ``array`` as a Frame (no copy)."""
        return np.asarray(array).view(cls)

    def __array_wrap__(
        self, array: np.ndarray, context: Any = None, return_scalar: bool = False
    ) -> Any:
        # Results of ufuncs and reductions (frame.mean(), frame > 0) are plain numbers
        # or arrays, not pictures.
        out = np.asarray(array)
        return out[()] if out.ndim == 0 else out

    def _repr_png_(self) -> bytes | None:
        arr = np.asarray(self)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.size == 0:
            return None  # a slice that is no longer a picture: IPython falls back to repr
        return bytes(_iio().imwrite("<bytes>", np.ascontiguousarray(arr), extension=".png"))


# --------------------------------------------------------------------------- input -> RGBA


@dataclass
class _Stack:
    """RGBA pictures of some years, north-up, with their place on Earth."""

    rgba: np.ndarray  # (n, ny, nx, 4) uint8, row 0 = north
    years: list[int | None]
    extent: tuple[float, float, float, float]  # left, right, bottom, top (CRS units)
    crs: Any  # pyproj/rasterio CRS or None
    attrs: dict[str, Any]


def _crs_of(obj: xr.Dataset | xr.DataArray) -> Any:
    import rioxarray  # noqa: F401  (registers .rio)

    try:
        return obj.rio.crs
    except Exception:  # rioxarray raises several kinds for objects without a grid
        return None


def _with_year_dim(obj: Any) -> Any:
    """A cube cut to one year (``cube.sel(year=2020)``) gets its ``year`` dimension back."""
    if (
        isinstance(obj, (xr.Dataset, xr.DataArray))
        and "year" not in obj.dims
        and "year" in obj.coords
        and obj["year"].ndim == 0
    ):
        return obj.expand_dims("year")
    return obj


def _years_of(obj: xr.Dataset | xr.DataArray) -> list[int]:
    obj = _with_year_dim(obj)
    return [int(y) for y in obj["year"].values] if "year" in obj.dims else []


def _select_years(obj: Any, years: Sequence[int] | None) -> Any:
    if years is None or "year" not in obj.dims:
        return obj
    have = _years_of(obj)
    missing = [int(y) for y in years if int(y) not in have]
    if missing:
        raise ValueError(f"years {missing} are not in the cube; its years are {have}")
    return obj.sel(year=[int(y) for y in years])


def _rgba_array(
    obj: Any,
    years: Sequence[int] | None,
    bands: Sequence[str],
    vmin: Any,
    vmax: Any,
) -> tuple[xr.DataArray, dict[str, Any], Any]:
    """A ``(year, y, x, channel)`` uint8 RGBA DataArray (lazy or not), attrs and CRS."""
    from xembed import ops

    obj = _with_year_dim(obj)
    if isinstance(obj, xr.Dataset):
        if "embeddings" not in obj:
            raise TypeError(
                f"the dataset has no 'embeddings' variable (variables: "
                f"{sorted(map(str, obj.data_vars))}); pass a cube from "
                "xembed.open_embeddings(...) or an RGB array from xembed.rgb(...)"
            )
        sel = _select_years(obj, years)
        return ops.rgb(sel, bands, vmin=vmin, vmax=vmax), dict(obj.attrs), _crs_of(obj)
    if not isinstance(obj, xr.DataArray):
        raise TypeError(
            f"expected a cube (xarray.Dataset from xembed.open_embeddings) or an RGB DataArray "
            f"(from xembed.rgb / xembed.pca_rgb), got {type(obj).__name__}"
        )
    if "band" in obj.dims:  # embeddings
        sel = _select_years(obj, years)
        return ops.rgb(sel, bands, vmin=vmin, vmax=vmax), dict(obj.attrs), _crs_of(obj)
    if "channel" not in obj.dims or not {"y", "x"} <= set(obj.dims):
        raise ValueError(
            f"an RGB DataArray needs dims (year, y, x, channel) as xembed.rgb returns, got "
            f"{obj.dims}; pass a cube to render its bands"
        )
    if obj.dtype != np.uint8:
        raise ValueError(
            f"an RGB DataArray must be uint8 (0-255), got {obj.dtype}; build it with "
            "xembed.rgb(cube, bands, vmin=..., vmax=...) or xembed.pca_rgb(cube)"
        )
    if obj.sizes["channel"] not in (3, 4):
        raise ValueError(f"an RGB DataArray needs 3 or 4 channels, got {obj.sizes['channel']}")
    arr = obj if "year" in obj.dims else obj.expand_dims(year=[-1])
    arr = _select_years(arr, years).transpose("year", "y", "x", "channel")
    if arr.sizes["channel"] == 3:
        alpha = xr.full_like(arr.isel(channel=[0]), 255)
        arr = xr.concat([arr, alpha], dim="channel")
    return arr, dict(obj.attrs), _crs_of(obj)


def _pixel_size(coord: np.ndarray, other: np.ndarray) -> float:
    for c in (coord, other):
        if c.size > 1:
            return float(abs(c[1] - c[0]))
    return 10.0


def _stack(
    obj: Any,
    years: Sequence[int] | None,
    bands: Sequence[str] = _DEFAULT_BANDS,
    vmin: Any = -0.3,
    vmax: Any = 0.3,
) -> _Stack:
    """Compute the RGBA pictures (one dask compute for all years), north-up."""
    arr, attrs, crs = _rgba_array(obj, years, bands, vmin, vmax)
    rgba = np.asarray(arr.values, dtype=np.uint8)
    x = np.asarray(arr["x"].values, dtype=float) if "x" in arr.coords else np.arange(arr.sizes["x"])
    y = (
        np.asarray(arr["y"].values, dtype=float)
        if "y" in arr.coords
        else -np.arange(arr.sizes["y"])
    )
    # North up, west left, whatever order the coordinates are stored in.
    if y.size > 1 and y[0] < y[-1]:
        rgba, y = rgba[:, ::-1], y[::-1]
    if x.size > 1 and x[0] > x[-1]:
        rgba, x = rgba[:, :, ::-1], x[::-1]
    dx, dy = _pixel_size(x, y), _pixel_size(y, x)
    extent = (x[0] - dx / 2, x[-1] + dx / 2, y[-1] - dy / 2, y[0] + dy / 2)
    yrs: list[int | None] = (
        [None if int(v) == -1 else int(v) for v in arr["year"].values]
        if "year" in arr.coords
        else [None] * rgba.shape[0]
    )
    return _Stack(np.ascontiguousarray(rgba), yrs, extent, crs, attrs)


# --------------------------------------------------------------------------- boundary


def _boundary_geometry(boundary: Any, attrs: dict[str, Any]) -> Any:
    """The boundary to draw, as a shapely geometry in EPSG:4326, or None."""
    import shapely

    if boundary is False:
        return None
    if boundary is None:
        wkt = attrs.get("site_geometry_wkt")
        return shapely.from_wkt(wkt) if wkt else None
    if isinstance(boundary, xr.Dataset):
        return _boundary_geometry(None, dict(boundary.attrs))
    from xembed.sites import Site

    if isinstance(boundary, Site):
        boundary = boundary.geometry
    if isinstance(boundary, shapely.Geometry):
        return boundary
    if isinstance(boundary, str):
        return shapely.from_wkt(boundary)
    geo = getattr(boundary, "__geo_interface__", boundary)
    if isinstance(geo, dict):
        if geo.get("type") == "Feature":
            geo = geo["geometry"]
        return shapely.geometry.shape(geo)
    raise TypeError(
        f"boundary must be a Site, a shapely geometry in EPSG:4326 (lon/lat), a WKT string, a "
        f"GeoJSON mapping, None (the cube's own site) or False (none); got "
        f"{type(boundary).__name__}"
    )


def _projected_boundary(boundary: Any, stack: _Stack) -> Any:
    """The boundary in the cube's CRS (None if there is nothing to draw)."""
    from xembed.grid import project

    geom = _boundary_geometry(boundary, stack.attrs)
    if geom is None:
        return None
    if stack.crs is None:
        if boundary is None:
            return None  # the cube names its site but has no CRS to place it: skip quietly
        raise ValueError(
            "cannot draw the boundary: the cube has no CRS. Write it with "
            "ds = ds.rio.write_crs('EPSG:32722') (the cube's UTM zone), or pass boundary=False"
        )
    return project(geom, "EPSG:4326", stack.crs)


def _rings(geom: Any) -> list[np.ndarray]:
    """Coordinate arrays of every line to draw for a geometry (exteriors and holes)."""
    import shapely

    out: list[np.ndarray] = []
    for part in shapely.get_parts(geom):
        kind = part.geom_type
        if kind == "Polygon":
            out.append(np.asarray(part.exterior.coords))
            out.extend(np.asarray(r.coords) for r in part.interiors)
        elif kind in ("LineString", "LinearRing"):
            out.append(np.asarray(part.coords))
        elif kind == "Point":
            out.append(np.asarray(part.coords))
        else:  # nested collections
            out.extend(_rings(part))
    return out


def _draw_boundary(ax: Axes, geom: Any, linewidth_px: float, dpi: float) -> None:
    from matplotlib import patheffects

    lw = linewidth_px * 72.0 / dpi
    # A one-pixel black halo each side keeps the line visible on any colour.
    halo = [patheffects.withStroke(linewidth=lw + 2.0 * 72.0 / dpi, foreground=_HALO_COLOR)]
    for ring in _rings(geom):
        ax.plot(
            ring[:, 0],
            ring[:, 1],
            color=BOUNDARY_COLOR,
            linewidth=lw,
            solid_joinstyle="round",
            solid_capstyle="round",
            marker="o" if len(ring) == 1 else None,
            path_effects=halo,
            scalex=False,
            scaley=False,
        )


# --------------------------------------------------------------------------- frames


def _output_size(ny: int, nx: int, dimensions: int | None) -> tuple[int, int]:
    """(height, width) of a frame whose longer side is ``dimensions`` pixels."""
    if dimensions is None:
        return ny, nx
    if isinstance(dimensions, bool) or not isinstance(dimensions, (int, np.integer)):
        raise TypeError(
            f"dimensions must be an int (pixels on the longer side, e.g. 500) or None "
            f"(one frame pixel per embedding pixel), got {dimensions!r}"
        )
    if dimensions < 1:
        raise ValueError(f"dimensions must be at least 1 pixel, got {dimensions}")
    scale = int(dimensions) / max(ny, nx)
    return max(1, round(ny * scale)), max(1, round(nx * scale))


def _resample_nearest(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of ``(ny, nx, c)`` to ``(height, width, c)``."""
    ny, nx = img.shape[:2]
    rows = np.minimum(((np.arange(height) + 0.5) * ny / height).astype(int), ny - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * nx / width).astype(int), nx - 1)
    return img[rows][:, cols]


def _checker(height: int, width: int) -> np.ndarray:
    """The no-data checkerboard, ``(height, width, 3)`` uint8."""
    cell = max(2, round(max(height, width) / 64))
    r = (np.arange(height) // cell)[:, None]
    c = (np.arange(width) // cell)[None, :]
    dark, light = (np.asarray(v, dtype=np.uint8) for v in NODATA_CHECKER)
    return np.where(((r + c) % 2 == 0)[..., None], dark, light)


def _composite(rgba: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an RGBA picture and put it over the no-data checkerboard: RGB uint8."""
    big = _resample_nearest(rgba, height, width)
    if big.shape[2] == 3:
        return np.ascontiguousarray(big)
    alpha = big[..., 3:4].astype(np.float32) / 255.0
    if bool((alpha == 1).all()):
        return np.ascontiguousarray(big[..., :3])
    under = _checker(height, width).astype(np.float32)
    out = big[..., :3].astype(np.float32) * alpha + under * (1 - alpha)
    return np.round(out).astype(np.uint8)


def _label_text(label: Any, year: int | None) -> str | None:
    if label is False or label == "":
        return None
    if label is None:
        return None if year is None else str(year)
    if callable(label):
        out = label(year)
        return None if out in (None, False, "") else str(out)
    return str(label).replace("{year}", "" if year is None else str(year))


def _draw_label(fig: Figure, text: str, height: int, width: int) -> None:
    from matplotlib.transforms import IdentityTransform

    size_px = max(10.0, min(40.0, 0.045 * max(height, width)))
    margin = max(3.0, 0.02 * max(height, width))
    pad = 0.35  # box padding, in font sizes

    def place(size: float) -> Any:
        offset = margin + pad * size
        return fig.text(
            offset,
            height - offset,
            text,
            transform=IdentityTransform(),
            ha="left",
            va="top",
            color="white",
            fontsize=size * 72.0 / _DPI,
            fontweight="bold",
            bbox={
                "boxstyle": f"square,pad={pad}",
                "facecolor": "black",
                "alpha": 0.7,
                "edgecolor": "none",
            },
        )

    artist = place(size_px)
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    room = width - 2 * margin
    used = artist.get_window_extent(renderer).width + 2 * pad * size_px
    if used > room and size_px > 6:  # shrink a long label to fit the frame
        artist.remove()
        place(max(6.0, size_px * room / used))


def _draw_frame(
    rgba: np.ndarray,
    extent: tuple[float, float, float, float],
    *,
    boundary: Any,
    label: str | None,
    size: tuple[int, int],
) -> Frame:
    """Compose one frame: picture, boundary, label; returns RGB uint8."""
    height, width = size
    base = _composite(rgba, height, width)
    if boundary is None and label is None:
        return Frame.from_array(base)
    # A hair over the size: Agg truncates the canvas size to whole pixels.
    fig = _new_figure(((width + 1e-3) / _DPI, (height + 1e-3) / _DPI))
    fig.figimage(base, xo=0, yo=0, origin="upper", resize=False, zorder=-10)
    if boundary is not None:
        ax = fig.add_axes((0.0, 0.0, width / (width + 1e-3), height / (height + 1e-3)))
        ax.set_axis_off()
        ax.patch.set_visible(False)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect("auto")
        _draw_boundary(ax, boundary, max(2.0, max(height, width) / 200.0), _DPI)
    if label is not None:
        _draw_label(fig, label, height, width)
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())  # type: ignore[attr-defined]
    out = np.ascontiguousarray(buf[:height, :width, :3])
    if out.shape[:2] != (height, width):  # pragma: no cover - guarded by the 1e-3 above
        raise RuntimeError(f"matplotlib drew {out.shape[:2]} pixels, expected {(height, width)}")
    return Frame.from_array(out)


def render(
    cube_or_rgb: xr.Dataset | xr.DataArray,
    year: int | None = None,
    *,
    boundary: Any = None,
    label: str | Callable[[int | None], str] | bool | None = None,
    dimensions: int | None = 500,
    bands: Sequence[str] = _DEFAULT_BANDS,
    vmin: float | Sequence[float] = -0.3,
    vmax: float | Sequence[float] = 0.3,
) -> Frame:
    """One year of a cube as a picture with the site boundary and a label.

    The three ``bands`` are stretched linearly from ``vmin`` to ``vmax`` (the
    original notebook's A01/A16/A09 and -0.3..0.3 by default) as
    :func:`xembed.rgb` does; an RGB array from :func:`xembed.rgb` or
    :func:`xembed.pca_rgb` is drawn as it is.

    **Context view.** A cube opened with ``clip=True`` (the default) is NaN
    outside the polygon, which shows as the no-data checkerboard. For the
    original notebook's view, the site with 500 m of surroundings, open the
    cube with a buffer and without clipping::

        cube = xembed.open_embeddings(site, years, buffer=500, clip=False)
        frame = render(cube, 2023)

    Parameters
    ----------
    cube_or_rgb : xarray.Dataset or xarray.DataArray
        A cube (from :func:`xembed.open_embeddings`), its ``embeddings``, or
        an RGB(A) uint8 ``(year, y, x, channel)`` array.
    year : int, optional
        The year to draw; may be omitted when there is only one.
    boundary : Site, shapely geometry, WKT, GeoJSON mapping, None or False
        The polygon to outline, in EPSG:4326 lon/lat (projected into the
        cube's CRS to be drawn). ``None`` (default): the cube's own site,
        from ``attrs["site_geometry_wkt"]`` (RGB arrays from
        :func:`xembed.rgb` do not carry it: pass the site). ``False``: none.
        Drawn in :data:`BOUNDARY_COLOR` with a black halo.
    label : str, callable, None or False
        Text in white on a dark box at the top left. ``None`` (default): the
        year. ``"{year}"`` in a string is replaced by the year; a callable
        gets the year. ``False`` or ``""``: no label. A long label is
        shrunk to fit.
    dimensions : int or None, default 500
        Pixels on the frame's longer side, as Earth Engine's thumbnails take
        it; the picture is resized by nearest neighbour, so pixels stay
        crisp. ``None``: one frame pixel per embedding pixel.
    bands : three band names, default ("A01", "A16", "A09")
        Red, green, blue (ignored for RGB arrays).
    vmin, vmax : float or three floats, default -0.3, 0.3
        The linear stretch (ignored for RGB arrays).

    Returns
    -------
    Frame
        ``(height, width, 3)`` uint8, north up; a numpy array that Jupyter
        displays as a picture. Pixels without data show as a dark grey
        checkerboard (:data:`NODATA_CHECKER`).

    Raises
    ------
    ValueError
        If ``year`` is not in the cube, or is omitted and the cube has
        several years; if the cube has no CRS but a boundary is asked for.

    See Also
    --------
    frames : every year at once.
    save_strip, save_gif : write frames to files.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> cube = make_cube(years=(2020, 2021), shape=(32, 48))
    >>> frame = render(cube, 2021, dimensions=480)
    >>> frame.shape, frame.dtype
    ((320, 480, 3), dtype('uint8'))
    >>> plain = render(cube, 2021, dimensions=480, boundary=False, label=False)
    >>> bool((frame != plain).any())  # the boundary and the label are drawn
    True

    Save it (here into a temporary folder):

    >>> import os, tempfile
    >>> path = save_strip([frame, plain], os.path.join(tempfile.mkdtemp(), "two.png"))
    >>> path.name
    'two.png'
    """
    years = _years_of(cube_or_rgb)
    if year is None:
        if len(years) > 1:
            raise ValueError(
                f"the cube has several years {years}: pass year= (e.g. year={years[-1]}), "
                "or use xembed.render.frames(...) for all of them"
            )
        chosen = None
    else:
        chosen = [int(year)]
    stack = _stack(cube_or_rgb, chosen, bands, vmin, vmax)
    return _frame_from_stack(stack, 0, boundary=boundary, label=label, dimensions=dimensions)


def _frame_from_stack(
    stack: _Stack, i: int, *, boundary: Any, label: Any, dimensions: int | None
) -> Frame:
    ny, nx = stack.rgba.shape[1:3]
    size = _output_size(ny, nx, dimensions)
    return _draw_frame(
        stack.rgba[i],
        stack.extent,
        boundary=_projected_boundary(boundary, stack),
        label=_label_text(label, stack.years[i]),
        size=size,
    )


def frames(
    cube_or_rgb: xr.Dataset | xr.DataArray,
    years: Iterable[int] | None = None,
    **kwargs: Any,
) -> list[Frame]:
    """:func:`render` every year (or the given ``years``), with one compute.

    Parameters
    ----------
    cube_or_rgb : xarray.Dataset or xarray.DataArray
        As for :func:`render`.
    years : iterable of int, optional
        Years to draw, in this order. Default: all of the cube's years.
    **kwargs
        ``boundary``, ``label`` (default: each frame's year; ``"{year}"`` is
        replaced), ``dimensions``, ``bands``, ``vmin``, ``vmax`` as for
        :func:`render`.

    Returns
    -------
    list of Frame
        One ``(height, width, 3)`` uint8 frame per year, all the same size.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> out = frames(make_cube(years=(2020, 2021, 2022), shape=(8, 8)), dimensions=64)
    >>> len(out), out[0].shape
    (3, (64, 64, 3))
    """
    allowed = {"boundary", "label", "dimensions", "bands", "vmin", "vmax"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(
            f"frames() got unexpected arguments {unknown}; expected some of {sorted(allowed)}"
        )
    chosen = None if years is None else [int(y) for y in years]
    stack = _stack(
        cube_or_rgb,
        chosen,
        kwargs.pop("bands", _DEFAULT_BANDS),
        kwargs.pop("vmin", -0.3),
        kwargs.pop("vmax", 0.3),
    )
    kwargs.setdefault("boundary", None)
    kwargs.setdefault("label", None)
    kwargs.setdefault("dimensions", 500)
    return [_frame_from_stack(stack, i, **kwargs) for i in range(len(stack.years))]


# --------------------------------------------------------------------------- files


def _as_rgb8(frame: Any, i: int) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(
            f"frame {i} has shape {arr.shape}; expected (height, width, 3) RGB or "
            "(height, width, 4) RGBA, as render() returns"
        )
    if arr.dtype != np.uint8:
        raise ValueError(
            f"frame {i} is {arr.dtype}; expected uint8 pictures (0-255), as render() returns"
        )
    return arr[..., :3]


def _frame_list(frames: Iterable[Any]) -> list[np.ndarray]:
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = [frames]  # one frame given on its own
    out = [_as_rgb8(f, i) for i, f in enumerate(frames)]
    if not out:
        raise ValueError("no frames to write; pass a non-empty list of frames from render()")
    return out


def _pad(img: np.ndarray, height: int, width: int, fill: tuple[int, int, int]) -> np.ndarray:
    if img.shape[:2] == (height, width):
        return img
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = np.asarray(fill, dtype=np.uint8)
    out[: img.shape[0], : img.shape[1]] = img
    return out


def _atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Write through a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{str(path)!r} is a folder; give a file name, e.g. {path / 'out.png'}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_png(frame: Any, path: str | os.PathLike[str]) -> Path:
    """Write one frame as a PNG (atomically; folders are created).

    Examples
    --------
    >>> import os, tempfile
    >>> import imageio.v3 as iio
    >>> from xembed.testing import make_cube
    >>> frame = render(make_cube(shape=(8, 8)), 2020, dimensions=40)
    >>> iio.imread(save_png(frame, os.path.join(tempfile.mkdtemp(), "f.png"))).shape
    (40, 40, 3)
    """
    img = _frame_list([frame])[0]
    iio = _iio()
    return _atomic_write(path, lambda tmp: iio.imwrite(tmp, img, extension=".png"))


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: float | None = None) -> Path:
    """Write a figure (e.g. from :func:`plot_change`) as a PNG, atomically.

    Examples
    --------
    >>> import os, tempfile
    >>> from xembed.testing import make_cube
    >>> from xembed.ops import similarity_matrix
    >>> fig = plot_similarity_matrix(similarity_matrix(make_cube(shape=(8, 8))))
    >>> save_figure(fig, os.path.join(tempfile.mkdtemp(), "sim.png")).suffix
    '.png'
    """
    return _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi or fig.dpi))


def save_strip(
    frames: Sequence[Any],
    path: str | os.PathLike[str],
    *,
    gap: int = 8,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Path:
    """Write frames side by side into one PNG.

    Parameters
    ----------
    frames : sequence of (height, width, 3 or 4) uint8 arrays
        E.g. from :func:`frames` (already labelled). Frames of different
        heights are aligned at the top; alpha channels are dropped.
    path : str or path
        The PNG file to write (folders are created; written atomically).
    gap : int, default 8
        Pixels between frames.
    background : RGB, default white
        Colour of the gaps and of padding.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import os, tempfile
    >>> import imageio.v3 as iio
    >>> from xembed.testing import make_cube
    >>> out = frames(make_cube(years=(2020, 2021), shape=(8, 8)), dimensions=40)
    >>> path = save_strip(out, os.path.join(tempfile.mkdtemp(), "strip.png"))
    >>> iio.imread(path).shape  # 2 x 40 px + 8 px gap
    (40, 88, 3)
    """
    if gap < 0:
        raise ValueError(f"gap must be >= 0 pixels, got {gap}")
    imgs = _frame_list(frames)
    height = max(f.shape[0] for f in imgs)
    parts: list[np.ndarray] = []
    for i, img in enumerate(imgs):
        if i:
            parts.append(_pad(np.empty((0, gap, 3), np.uint8), height, gap, background))
        parts.append(_pad(img, height, img.shape[1], background))
    strip = np.concatenate(parts, axis=1)
    iio = _iio()
    return _atomic_write(path, lambda tmp: iio.imwrite(tmp, strip, extension=".png"))


def save_gif(
    frames: Sequence[Any],
    path: str | os.PathLike[str],
    duration_ms: float = 700,
    loop: int = 0,
) -> Path:
    """Write frames as an animated GIF.

    Parameters
    ----------
    frames : sequence of (height, width, 3 or 4) uint8 arrays
        E.g. from :func:`frames`; smaller frames are padded (white, at the
        bottom and right) to the largest.
    path : str or path
        The GIF file to write (folders are created; written atomically).
    duration_ms : float, default 700
        Display time of each frame in milliseconds.
    loop : int, default 0
        Times to play; 0 loops forever.

    Returns
    -------
    pathlib.Path
        ``path``.

    Notes
    -----
    GIF stores at most 256 colours per frame: Pillow picks an adaptive
    palette per frame, so colours are close but not exact (use
    :func:`save_strip` for exact pixels).

    Examples
    --------
    >>> import os, tempfile
    >>> import imageio.v3 as iio
    >>> from xembed.testing import make_cube
    >>> out = frames(make_cube(years=(2020, 2021, 2022), shape=(8, 8)), dimensions=40)
    >>> path = save_gif(out, os.path.join(tempfile.mkdtemp(), "years.gif"))
    >>> iio.imread(path, index=None).shape[:3]
    (3, 40, 40)
    """
    if duration_ms <= 0:
        raise ValueError(f"duration_ms must be > 0, got {duration_ms}")
    imgs = _frame_list(frames)
    height = max(f.shape[0] for f in imgs)
    width = max(f.shape[1] for f in imgs)
    stack = np.stack([_pad(f, height, width, (255, 255, 255)) for f in imgs])
    iio = _iio()

    def write(tmp: Path) -> None:
        iio.imwrite(tmp, stack, extension=".gif", duration=float(duration_ms), loop=int(loop))

    return _atomic_write(path, write)


# --------------------------------------------------------------------------- figures


def _similarity_table(
    sim: Any, labels: Sequence[Any] | None
) -> tuple[np.ndarray, list[Any], list[Any]]:
    if isinstance(sim, xr.DataArray):
        if sim.ndim != 2:
            raise ValueError(f"a similarity matrix has 2 dims, got {sim.dims}")
        rows, cols = (sim[d].values.tolist() if d in sim.coords else None for d in sim.dims)
        values = np.asarray(sim.values, dtype=float)
    elif isinstance(sim, pd.DataFrame):
        values = sim.to_numpy(dtype=float)
        rows, cols = sim.index.tolist(), sim.columns.tolist()
    else:
        values = np.asarray(sim, dtype=float)
        if values.ndim != 2:
            raise ValueError(f"a similarity matrix is 2-D, got shape {values.shape}")
        rows = cols = None
    if labels is not None:
        labels = list(labels)
        if len(labels) != values.shape[0] or values.shape[0] != values.shape[1]:
            raise ValueError(
                f"{len(labels)} labels for a {values.shape[0]} x {values.shape[1]} matrix"
            )
        rows = cols = labels
    rows = rows if rows is not None else list(range(values.shape[0]))
    cols = cols if cols is not None else list(range(values.shape[1]))
    return values, rows, cols


def plot_similarity_matrix(
    sim: xr.DataArray | pd.DataFrame | np.ndarray,
    *,
    ax: Axes | None = None,
    title: str | None = _SIM_TITLE,
    labels: Sequence[Any] | None = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    fmt: str = ".3f",
    annotate: bool = True,
) -> Figure:
    """A heatmap of a year-by-year similarity matrix, values written in the cells.

    Parameters
    ----------
    sim : xarray.DataArray, pandas.DataFrame or 2-D array
        E.g. :func:`xembed.similarity_matrix` (``(year, year_2)``), or the
        original notebook's ``sim_df``. Tick labels come from its
        coordinates or index (or ``labels``).
    ax : matplotlib Axes, optional
        Draw into this axes (its figure gets the colour bar); default a new
        figure.
    title : str or None
        Axes title (a matrix made with ``normalize=False`` gets a title and
        colour-bar label that say it holds dot products).
    labels : sequence, optional
        Tick labels for a plain array.
    cmap : str, default "viridis"
        Colour map.
    vmin, vmax : float, optional
        Colour range; default the matrix's smallest and largest finite value
        (a stretch that shows differences of a few thousandths).
    fmt : str, default ".3f"
        Format of the annotated values.
    annotate : bool, default True
        Write each value in its cell (in black or white, whichever reads
        better on the cell's colour). NaN cells are left blank.

    Returns
    -------
    matplotlib.figure.Figure
        Displayed as PNG in Jupyter; save with ``fig.savefig("sim.png")``.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> from xembed import similarity_matrix
    >>> fig = plot_similarity_matrix(similarity_matrix(make_cube(years=(2020, 2021, 2022))))
    >>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
    ['2020', '2021', '2022']
    >>> fig.axes[0].texts[0].get_text()
    '1.000'
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    values, rows, cols = _similarity_table(sim, labels)
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if vmin is None and finite.size else (0.0 if vmin is None else vmin)
    hi = float(finite.max()) if vmax is None and finite.size else (1.0 if vmax is None else vmax)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    if ax is None:
        n = max(values.shape)
        side = min(12.0, max(4.0, 0.75 * n + 2.0))
        fig = _new_figure((side + 1.2, side))
        fig.set_layout_engine("constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure  # type: ignore[assignment]
    norm = Normalize(lo, hi)
    colours = colormaps[cmap]
    image = ax.imshow(values, cmap=colours, norm=norm, interpolation="nearest")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=45 if len(cols) > 8 else 0)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if annotate:
        n_cells = values.size
        fontsize = max(5.0, min(10.0, 80.0 / max(values.shape)))
        for (i, j), v in np.ndenumerate(values):
            if not np.isfinite(v):
                continue
            r, g, b, _ = colours(norm(v))
            dark_cell = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(
                j,
                i,
                format(v, fmt),
                ha="center",
                va="center",
                fontsize=fontsize if n_cells > 1 else 10,
                color="white" if dark_cell else "black",
            )
    raw = isinstance(sim, xr.DataArray) and str(sim.attrs.get("normalized", 1)) == "0"
    what = "dot product of means (not normalised)" if raw else "cosine similarity"
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=what)
    if title == _SIM_TITLE and raw:
        title = "Dot product of yearly means (not normalised)"
    if title:
        ax.set_title(title)
    return fig


def _nice_length(span: float) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^k) near a fifth of ``span``."""
    target = span / 5.0
    if target <= 0:
        return 0.0
    exp = 10.0 ** math.floor(math.log10(target))
    return next(m * exp for m in (5, 2, 1) if m * exp <= target)


def _scale_bar(ax: Axes, extent: tuple[float, float, float, float]) -> None:
    from matplotlib import patheffects

    left, right, bottom, top = extent
    length = _nice_length(right - left)
    if length <= 0:
        return
    x0 = left + 0.05 * (right - left)
    y0 = bottom + 0.06 * (top - bottom)
    halo = [patheffects.withStroke(linewidth=4, foreground="black")]
    ax.plot([x0, x0 + length], [y0, y0], color="white", linewidth=2.5, path_effects=halo)
    text = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    ax.text(
        x0 + length / 2,
        y0 + 0.02 * (top - bottom),
        text,
        ha="center",
        va="bottom",
        color="white",
        fontsize=9,
        path_effects=halo,
    )


def _grid_extent(da_: xr.DataArray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Values north-up and their extent, for imshow."""
    arr = da_.transpose("y", "x")
    values = np.asarray(arr.values)
    x = np.asarray(arr["x"].values, dtype=float)
    y = np.asarray(arr["y"].values, dtype=float)
    if y.size > 1 and y[0] < y[-1]:
        values, y = values[::-1], y[::-1]
    if x.size > 1 and x[0] > x[-1]:
        values, x = values[:, ::-1], x[::-1]
    dx, dy = _pixel_size(x, y), _pixel_size(y, x)
    return values, (x[0] - dx / 2, x[-1] + dx / 2, y[-1] - dy / 2, y[0] + dy / 2)


def plot_change(
    change: xr.DataArray,
    year: int | None = None,
    *,
    boundary: Any = None,
    threshold: float | None = None,
    ax: Axes | None = None,
    cmap: str = "magma",
    vmax: float | None = None,
    title: str | None = None,
) -> Figure:
    """A change map of one year, with a colour bar, the site boundary and a scale bar.

    Parameters
    ----------
    change : xarray.DataArray
        ``(year, y, x)`` or ``(y, x)`` from :func:`xembed.change` (``1 -
        cosine``, float) or its thresholded form (bool).
    year : int, optional
        The year to show; may be omitted when there is only one.
    boundary : Site, shapely geometry, cube, None or False
        The polygon to outline, in EPSG:4326 (a cube: its site). ``None``:
        the ``site_geometry_wkt`` attribute if the array has one, else no
        boundary (:func:`xembed.change` drops it: pass the cube or site).
    threshold : float, optional
        Outline where the change crosses this value (cyan contour) and mark
        it on the colour bar.
    ax : matplotlib Axes, optional
        Draw into this axes; default a new figure.
    cmap : str, default "magma"
        Colour map for float change (0 = unchanged).
    vmax : float, optional
        Top of the colour range (the bottom is 0). Default: the 99th
        percentile of the year's values, rounded up to 0.05, so a few
        extreme pixels do not wash the map out (the colour bar's arrow
        marks values above it).
    title : str, optional
        Default ``"Change {baseline} → {year} (1 − cosine)"``.

    Returns
    -------
    matplotlib.figure.Figure
        North up, axes in metres of the cube's CRS. Pixels without data
        are light grey.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> import xembed
    >>> cube = make_cube(years=(2020, 2021))
    >>> fig = plot_change(xembed.change(cube), 2021, boundary=cube, threshold=0.5)
    >>> fig.axes[0].get_title()
    'Change 2020 → 2021 (1 − cosine)'
    """
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    if not isinstance(change, xr.DataArray) or not {"y", "x"} <= set(change.dims):
        raise TypeError(
            "plot_change needs a (year, y, x) DataArray from xembed.change(cube), got "
            f"{type(change).__name__}"
            + (f" with dims {change.dims}" if isinstance(change, xr.DataArray) else "")
        )
    arr = change
    if "year" in arr.dims:
        years = _years_of(arr)
        if year is None:
            if len(years) != 1:
                raise ValueError(f"the change map has years {years}: pass year= to choose one")
            year = years[0]
        if int(year) not in years:
            raise ValueError(f"year {year!r} is not in the change map; its years are {years}")
        arr = arr.sel(year=int(year))
    values, extent = _grid_extent(arr)
    binary = values.dtype == bool
    stack = _Stack(
        np.empty((0, 0, 0, 4), np.uint8), [year], extent, _crs_of(change), dict(change.attrs)
    )
    geom = _projected_boundary(boundary, stack)

    if ax is None:
        ny, nx = values.shape
        width = 6.5
        fig = _new_figure((width, max(3.0, min(10.0, (width - 1.3) * ny / max(nx, 1)))))
        fig.set_layout_engine("constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure  # type: ignore[assignment]
    if binary:
        two = ListedColormap(["#2b2b2b", "#ff3d00"])
        image = ax.imshow(
            values.astype(np.int8),
            cmap=two,
            vmin=-0.5,
            vmax=1.5,
            extent=extent,
            interpolation="nearest",
        )
        bar = fig.colorbar(image, ax=ax, ticks=[0, 1], fraction=0.046, pad=0.04)
        bar.ax.set_yticklabels(["unchanged", "changed"])
    else:
        finite = values[np.isfinite(values)]
        if vmax is None:
            top = float(np.percentile(finite, 99)) if finite.size else 1.0
            vmax = max(0.05, math.ceil(top / 0.05) * 0.05)
        colours = colormaps[cmap].with_extremes(bad="#d9d9d9")
        image = ax.imshow(
            np.ma.masked_invalid(values),
            cmap=colours,
            vmin=0.0,
            vmax=vmax,
            extent=extent,
            interpolation="nearest",
        )
        extend = "max" if finite.size and float(finite.max()) > vmax else "neither"
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, extend=extend)
        bar.set_label("change (1 − cosine similarity)")
        if threshold is not None:
            bar.ax.axhline(threshold, color="cyan", linewidth=2)
            ny, nx = values.shape
            xs = np.linspace(extent[0], extent[1], nx + 1)[:-1] + (extent[1] - extent[0]) / nx / 2
            ys = np.linspace(extent[3], extent[2], ny + 1)[:-1] - (extent[3] - extent[2]) / ny / 2
            filled = np.where(np.isfinite(values), values, 0.0)
            if filled.min() < threshold < filled.max():
                ax.contour(xs, ys, filled, levels=[threshold], colors="cyan", linewidths=1.2)
    if geom is not None:
        _draw_boundary(ax, geom, 2.5, fig.dpi)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize=8)
    crs = stack.crs.to_string() if stack.crs is not None else "unknown CRS"
    ax.set_xlabel(f"x (m, {crs})")
    ax.set_ylabel("y (m)")
    _scale_bar(ax, extent)
    if title is None:
        baseline = change.attrs.get("baseline")
        since = f"{baseline} → " if baseline is not None else ""
        title = (
            f"Change {since}{year} (1 − cosine)"
            if not binary
            else (
                f"Changed since {baseline}: {year}"
                + (f" (> {change.attrs['threshold']:g})" if "threshold" in change.attrs else "")
            )
        )
    ax.set_title(title)
    return fig


def plot(
    cube_or_rgb: xr.Dataset | xr.DataArray,
    *,
    years: Iterable[int] | None = None,
    bands: Sequence[str] = _DEFAULT_BANDS,
    vmin: float | Sequence[float] = -0.3,
    vmax: float | Sequence[float] = 0.3,
    boundary: Any = None,
    col_wrap: int = 4,
    size: float = 3.0,
    title: str | None = None,
) -> Figure:
    """A facet grid of the years, one RGB panel each, for Jupyter.

    Parameters
    ----------
    cube_or_rgb : xarray.Dataset or xarray.DataArray
        A cube or an RGB array, as for :func:`render`.
    years : iterable of int, optional
        Years to show; default all.
    bands, vmin, vmax
        The composite, as for :func:`render`.
    boundary : Site, shapely geometry, None or False
        As for :func:`render` (default: the cube's site).
    col_wrap : int, default 4
        Panels per row.
    size : float, default 3.0
        Width of a panel in inches.
    title : str, optional
        A title over the grid; default names the site and the bands.

    Returns
    -------
    matplotlib.figure.Figure
        North up; no-data pixels show as the dark checkerboard.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> fig = plot(make_cube(years=(2020, 2021, 2022), shape=(16, 16)), col_wrap=2)
    >>> [ax.get_title() for ax in fig.axes if ax.get_visible()]
    ['2020', '2021', '2022']
    """
    if col_wrap < 1:
        raise ValueError(f"col_wrap must be >= 1, got {col_wrap}")
    chosen = None if years is None else [int(y) for y in years]
    stack = _stack(cube_or_rgb, chosen, bands, vmin, vmax)
    geom = _projected_boundary(boundary, stack)
    n = len(stack.years)
    ncols = min(col_wrap, n)
    nrows = math.ceil(n / ncols)
    ny, nx = stack.rgba.shape[1:3]
    aspect = ny / max(nx, 1)
    fig = _new_figure((size * ncols, size * aspect * nrows + 0.45 * nrows + 0.5))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    # Enough pixels per panel for a crisp checkerboard under no-data pixels.
    factor = max(1, math.ceil(size * fig.dpi / max(ny, nx)))
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        picture = _composite(stack.rgba[k], ny * factor, nx * factor)
        ax.imshow(picture, extent=stack.extent, interpolation="nearest")
        if geom is not None:
            _draw_boundary(ax, geom, 2.0, fig.dpi)
        ax.set_xlim(stack.extent[0], stack.extent[1])
        ax.set_ylim(stack.extent[2], stack.extent[3])
        ax.set_xticks([])
        ax.set_yticks([])
        year = stack.years[k]
        ax.set_title("" if year is None else str(year))
    if title is None:
        site = stack.attrs.get("site_id")
        what = (
            ""
            if isinstance(cube_or_rgb, xr.DataArray) and "channel" in cube_or_rgb.dims
            else ("/".join(bands))
        )
        title = " · ".join(t for t in (f"site {site}" if site else "", what) if t)
    if title:
        fig.suptitle(title)
    fig.set_layout_engine("constrained")
    return fig
