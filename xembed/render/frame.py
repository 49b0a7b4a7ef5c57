"""Frames: cubes and RGB arrays drawn as pictures, with the site boundary and a label.

From input to picture: :func:`rgba_stack` computes the RGBA pictures of the
asked years, north up, with their extent; :func:`projected_boundary` puts the
site polygon in the cube's CRS; :func:`render` and :func:`frames` compose the
frames (resize, no-data checkerboard, boundary, label). :mod:`.figures`
reuses the stack, the boundary and the checkerboard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from xembed.ops import rgb
from xembed.render._common import DEFAULT_BANDS, DPI, iio, new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "BOUNDARY_COLOR",
    "NODATA_CHECKER",
    "Frame",
    "RgbaStack",
    "composite",
    "crs_of",
    "draw_boundary",
    "frames",
    "north_up",
    "projected_boundary",
    "render",
    "rgba_stack",
    "years_of",
]

#: The two greys (RGB) of the checkerboard that marks pixels without data.
NODATA_CHECKER: tuple[tuple[int, int, int], tuple[int, int, int]] = ((38, 38, 38), (70, 70, 70))
#: Colour of the site boundary (drawn with a black halo, visible on any colour).
BOUNDARY_COLOR = "#ffe600"
_HALO_COLOR = "black"


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
        return bytes(iio().imwrite("<bytes>", np.ascontiguousarray(arr), extension=".png"))


# --------------------------------------------------------------------------- input -> RGBA


@dataclass
class RgbaStack:
    """RGBA pictures of some years, north-up, with their place on Earth."""

    rgba: np.ndarray  # (n, ny, nx, 4) uint8, row 0 = north
    years: list[int | None]
    extent: tuple[float, float, float, float]  # left, right, bottom, top (CRS units)
    crs: Any  # pyproj/rasterio CRS or None
    attrs: dict[str, Any]


def crs_of(obj: xr.Dataset | xr.DataArray) -> Any:
    """The CRS of a cube or array (``obj.rio.crs``), or None if it has none."""
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


def years_of(obj: xr.Dataset | xr.DataArray) -> list[int]:
    """The years of a cube or array (also of one cut to a single year), or []."""
    obj = _with_year_dim(obj)
    return [int(y) for y in obj["year"].values] if "year" in obj.dims else []


def _select_years(obj: Any, years: Sequence[int] | None) -> Any:
    if years is None or "year" not in obj.dims:
        return obj
    have = years_of(obj)
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
    obj = _with_year_dim(obj)
    if isinstance(obj, xr.Dataset):
        if "embeddings" not in obj:
            raise TypeError(
                f"the dataset has no 'embeddings' variable (variables: "
                f"{sorted(map(str, obj.data_vars))}); pass a cube from "
                "xembed.open_embeddings(...) or an RGB array from xembed.rgb(...)"
            )
        sel = _select_years(obj, years)
        return rgb(sel, bands, vmin=vmin, vmax=vmax), dict(obj.attrs), crs_of(obj)
    if not isinstance(obj, xr.DataArray):
        raise TypeError(
            f"expected a cube (xarray.Dataset from xembed.open_embeddings) or an RGB DataArray "
            f"(from xembed.rgb / xembed.pca_rgb), got {type(obj).__name__}"
        )
    if "band" in obj.dims:  # embeddings
        sel = _select_years(obj, years)
        return rgb(sel, bands, vmin=vmin, vmax=vmax), dict(obj.attrs), crs_of(obj)
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
    return arr, dict(obj.attrs), crs_of(obj)


def _pixel_size(coord: np.ndarray, other: np.ndarray) -> float:
    for c in (coord, other):
        if c.size > 1:
            return float(abs(c[1] - c[0]))
    return 10.0


def north_up(
    values: np.ndarray, x: np.ndarray, y: np.ndarray, *, y_axis: int = 0
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Flip ``values`` north up and west left, whatever order the coordinates are stored in.

    ``y_axis`` is the axis of ``values`` along ``y`` (``x`` is the next one);
    ``x`` and ``y`` are the pixel centres. Returns the flipped values (a view)
    and their extent ``(left, right, bottom, top)``, as imshow takes it.

    Examples
    --------
    A south-up grid of 2 x 2 pixels of 10 m:

    >>> centres = np.array([0.0, 10.0])
    >>> values, extent = north_up(np.arange(4).reshape(2, 2), x=centres, y=centres)
    >>> values.tolist(), [float(v) for v in extent]
    ([[2, 3], [0, 1]], [-5.0, 15.0, -5.0, 15.0])
    """
    if y.size > 1 and y[0] < y[-1]:
        values, y = np.flip(values, axis=y_axis), y[::-1]
    if x.size > 1 and x[0] > x[-1]:
        values, x = np.flip(values, axis=y_axis + 1), x[::-1]
    dx, dy = _pixel_size(x, y), _pixel_size(y, x)
    return values, (x[0] - dx / 2, x[-1] + dx / 2, y[-1] - dy / 2, y[0] + dy / 2)


def rgba_stack(
    obj: Any,
    years: Sequence[int] | None,
    bands: Sequence[str] = DEFAULT_BANDS,
    vmin: Any = -0.3,
    vmax: Any = 0.3,
) -> RgbaStack:
    """Compute the RGBA pictures (one dask compute for all years), north-up."""
    arr, attrs, crs = _rgba_array(obj, years, bands, vmin, vmax)
    x = np.asarray(arr["x"].values, dtype=float) if "x" in arr.coords else np.arange(arr.sizes["x"])
    y = (
        np.asarray(arr["y"].values, dtype=float)
        if "y" in arr.coords
        else -np.arange(arr.sizes["y"])
    )
    rgba, extent = north_up(np.asarray(arr.values, dtype=np.uint8), x, y, y_axis=1)
    yrs: list[int | None] = (
        [None if int(v) == -1 else int(v) for v in arr["year"].values]
        if "year" in arr.coords
        else [None] * rgba.shape[0]
    )
    return RgbaStack(np.ascontiguousarray(rgba), yrs, extent, crs, attrs)


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


def projected_boundary(boundary: Any, crs: Any, attrs: dict[str, Any]) -> Any:
    """The boundary in the cube's CRS (None if there is nothing to draw).

    ``boundary`` is as :func:`render` takes it; ``crs`` and ``attrs`` are the
    cube's (``attrs["site_geometry_wkt"]`` is its own site).
    """
    from xembed.grid import project

    geom = _boundary_geometry(boundary, attrs)
    if geom is None:
        return None
    if crs is None:
        if boundary is None:
            return None  # the cube names its site but has no CRS to place it: skip quietly
        raise ValueError(
            "cannot draw the boundary: the cube has no CRS. Write it with "
            "ds = ds.rio.write_crs('EPSG:32722') (the cube's UTM zone), or pass boundary=False"
        )
    return project(geom, "EPSG:4326", crs)


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


def draw_boundary(ax: Axes, geom: Any, linewidth_px: float, dpi: float) -> None:
    """Outline ``geom`` (in the axes' data coordinates) in :data:`BOUNDARY_COLOR`."""
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


def composite(rgba: np.ndarray, height: int, width: int) -> np.ndarray:
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
            fontsize=size * 72.0 / DPI,
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
    base = composite(rgba, height, width)
    if boundary is None and label is None:
        return Frame.from_array(base)
    # A hair over the size: Agg truncates the canvas size to whole pixels.
    fig = new_figure(((width + 1e-3) / DPI, (height + 1e-3) / DPI))
    fig.figimage(base, xo=0, yo=0, origin="upper", resize=False, zorder=-10)
    if boundary is not None:
        ax = fig.add_axes((0.0, 0.0, width / (width + 1e-3), height / (height + 1e-3)))
        ax.set_axis_off()
        ax.patch.set_visible(False)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect("auto")
        draw_boundary(ax, boundary, max(2.0, max(height, width) / 200.0), DPI)
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
    bands: Sequence[str] = DEFAULT_BANDS,
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
    >>> from xembed.render import save_strip
    >>> path = save_strip([frame, plain], os.path.join(tempfile.mkdtemp(), "two.png"))
    >>> path.name
    'two.png'
    """
    years = years_of(cube_or_rgb)
    if year is None:
        if len(years) > 1:
            raise ValueError(
                f"the cube has several years {years}: pass year= (e.g. year={years[-1]}), "
                "or use xembed.render.frames(...) for all of them"
            )
        chosen = None
    else:
        chosen = [int(year)]
    stack = rgba_stack(cube_or_rgb, chosen, bands, vmin, vmax)
    return _frame_from_stack(stack, 0, boundary=boundary, label=label, dimensions=dimensions)


def _frame_from_stack(
    stack: RgbaStack, i: int, *, boundary: Any, label: Any, dimensions: int | None
) -> Frame:
    ny, nx = stack.rgba.shape[1:3]
    size = _output_size(ny, nx, dimensions)
    return _draw_frame(
        stack.rgba[i],
        stack.extent,
        boundary=projected_boundary(boundary, stack.crs, stack.attrs),
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
    stack = rgba_stack(
        cube_or_rgb,
        chosen,
        kwargs.pop("bands", DEFAULT_BANDS),
        kwargs.pop("vmin", -0.3),
        kwargs.pop("vmax", 0.3),
    )
    kwargs.setdefault("boundary", None)
    kwargs.setdefault("label", None)
    kwargs.setdefault("dimensions", 500)
    return [_frame_from_stack(stack, i, **kwargs) for i in range(len(stack.years))]
