"""Figures for analyses: a facet grid of the years, the similarity matrix, change and search maps.

Figures are built on their own Agg canvas (no ``pyplot``), so nothing opens a
window and building them in threads is safe; they display in Jupyter as PNG.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from xembed.render._common import DEFAULT_BANDS, new_figure
from xembed.render.frame import (
    composite,
    crs_of,
    draw_boundary,
    north_up,
    projected_boundary,
    rgba_stack,
    years_of,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colorbar import Colorbar
    from matplotlib.figure import Figure

__all__ = ["plot", "plot_change", "plot_search", "plot_similarity_matrix"]

_SIM_TITLE = "Cosine similarity between years"


def _figure_and_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """``ax`` and its figure, or a new figure of ``figsize`` inches with one axes."""
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig = new_figure(figsize)
    # "compressed", not "constrained": the heat-map and the maps have a fixed
    # aspect, and constrained layout sized their margins for the axes before
    # the aspect shrank it, cutting the year labels of a heat-map whose colour
    # bar needs two decimals ("017") and the y label of a tall map.
    fig.set_layout_engine("compressed")
    return fig, fig.add_subplot()


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
    side = min(12.0, max(4.0, 0.75 * max(values.shape) + 2.0))
    fig, ax = _figure_and_axes(ax, (side + 1.2, side))
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
    x = np.asarray(arr["x"].values, dtype=float)
    y = np.asarray(arr["y"].values, dtype=float)
    return north_up(np.asarray(arr.values), x, y)


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
    arr, year = _map_year(change, year, "plot_change", "xembed.change(cube)", "change map")
    values, extent = _grid_extent(arr)
    binary = values.dtype == bool
    fig, ax = _map_figure(ax, values.shape)
    if binary:
        _show_changed(fig, ax, values, extent)
    else:
        _show_change(fig, ax, values, extent, cmap=cmap, vmax=vmax, threshold=threshold)
    _finish_map(fig, ax, change, boundary, extent)
    ax.set_title(_change_title(change, year, binary) if title is None else title)
    return fig


def plot_search(
    hits: xr.DataArray,
    year: int | None = None,
    *,
    boundary: Any = None,
    threshold: float | None = None,
    ax: Axes | None = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    title: str | None = None,
) -> Figure:
    """A similarity-search map: the cosine of every pixel with the query, bright = similar.

    Parameters
    ----------
    hits : xarray.DataArray
        ``(year, y, x)`` or ``(y, x)`` from :func:`xembed.search` (cosine
        with the query, -1 to 1).
    year : int, optional
        The year to show; may be omitted when there is only one.
    boundary : Site, shapely geometry, cube, None or False
        A polygon to outline in EPSG:4326 (e.g. the site the query came
        from), as for :func:`plot_change`.
    threshold : float, optional
        Outline the pixels at least this similar (cyan contour) and mark the
        value on the colour bar.
    ax : matplotlib Axes, optional
        Draw into this axes; default a new figure.
    cmap : str, default "viridis"
        Colour map, from least to most similar.
    vmin : float, optional
        Bottom of the colour range (the top is 1, a perfect match). Default:
        the 1st percentile of the year's values, rounded down to 0.05, so the
        map's contrast goes to the pixels that differ (the colour bar's arrow
        marks values below it).
    title : str, optional
        Default ``"Similarity search {year}: cosine with the query"``.

    Returns
    -------
    matplotlib.figure.Figure
        North up, axes in metres of the cube's CRS, a scale bar; pixels
        without data are light grey.

    Examples
    --------
    >>> from xembed.testing import make_cube, planted_vector
    >>> import xembed
    >>> cube = make_cube(years=(2020, 2021))
    >>> hits = xembed.search(cube, planted_vector())
    >>> fig = plot_search(hits, 2021, boundary=cube, threshold=0.9)
    >>> fig.axes[0].get_title(), fig.axes[1].get_ylabel()
    ('Similarity search 2021: cosine with the query', 'cosine similarity with the query')
    """
    arr, year = _map_year(hits, year, "plot_search", "xembed.search(cube, query)", "search map")
    values, extent = _grid_extent(arr)
    fig, ax = _map_figure(ax, values.shape)
    finite = values[np.isfinite(values)]
    if vmin is None:
        bottom = float(np.percentile(finite, 1)) if finite.size else -1.0
        vmin = min(0.95, math.floor(bottom / 0.05) * 0.05)
    image = ax.imshow(
        np.ma.masked_invalid(values),
        cmap=_colours_with_grey(cmap),
        vmin=vmin,
        vmax=1.0,
        extent=extent,
        interpolation="nearest",
    )
    extend = "min" if finite.size and float(finite.min()) < vmin else "neither"
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, extend=extend)
    bar.set_label(str(hits.attrs.get("long_name", "cosine similarity with the query")))
    if threshold is not None:
        _threshold_contour(ax, bar, values, extent, threshold)
    _finish_map(fig, ax, hits, boundary, extent)
    default = (
        f"Similarity search {year}: cosine with the query"
        if year is not None
        else ("Similarity search: cosine with the query")
    )
    ax.set_title(default if title is None else title)
    return fig


def _map_year(
    arr: Any, year: int | None, func: str, source: str, what: str
) -> tuple[xr.DataArray, int | None]:
    """The ``(y, x)`` map of ``year`` (checked), or of the only year, or of a 2-D array."""
    if not isinstance(arr, xr.DataArray) or not {"y", "x"} <= set(arr.dims):
        raise TypeError(
            f"{func} needs a (year, y, x) DataArray from {source}, got {type(arr).__name__}"
            + (f" with dims {arr.dims}" if isinstance(arr, xr.DataArray) else "")
        )
    if "year" not in arr.dims:
        return arr, year
    years = years_of(arr)
    if year is None:
        if len(years) != 1:
            raise ValueError(f"the {what} has years {years}: pass year= to choose one")
        year = years[0]
    if int(year) not in years:
        raise ValueError(f"year {year!r} is not in the {what}; its years are {years}")
    return arr.sel(year=int(year)), year


def _map_figure(ax: Axes | None, shape: tuple[int, ...]) -> tuple[Figure, Axes]:
    """``ax`` and its figure, or a new figure shaped for a map of ``shape`` pixels."""
    ny, nx = shape
    width = 6.5
    return _figure_and_axes(ax, (width, max(3.0, min(10.0, (width - 1.3) * ny / max(nx, 1)))))


def _finish_map(
    fig: Figure,
    ax: Axes,
    arr: xr.DataArray,
    boundary: Any,
    extent: tuple[float, float, float, float],
) -> None:
    """Boundary, north-up limits in metres, axis labels and a scale bar."""
    crs = crs_of(arr)
    geom = projected_boundary(boundary, crs, dict(arr.attrs))
    if geom is not None:
        draw_boundary(ax, geom, 2.5, fig.dpi)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize=8)
    ax.set_xlabel(f"x (m, {crs.to_string() if crs is not None else 'unknown CRS'})")
    ax.set_ylabel("y (m)")
    _scale_bar(ax, extent)


def _colours_with_grey(cmap: str) -> Any:
    """``cmap`` with NaN (no data) drawn light grey."""
    from matplotlib import colormaps

    return colormaps[cmap].with_extremes(bad="#d9d9d9")


def _show_changed(
    fig: Figure, ax: Axes, values: np.ndarray, extent: tuple[float, float, float, float]
) -> None:
    """Draw a thresholded (bool) change map in two colours, with a two-tick colour bar."""
    from matplotlib.colors import ListedColormap

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


def _show_change(
    fig: Figure,
    ax: Axes,
    values: np.ndarray,
    extent: tuple[float, float, float, float],
    *,
    cmap: str,
    vmax: float | None,
    threshold: float | None,
) -> None:
    """Draw a float change map from 0 to ``vmax`` (NaN light grey), with its colour bar."""
    finite = values[np.isfinite(values)]
    if vmax is None:
        top = float(np.percentile(finite, 99)) if finite.size else 1.0
        vmax = max(0.05, math.ceil(top / 0.05) * 0.05)
    image = ax.imshow(
        np.ma.masked_invalid(values),
        cmap=_colours_with_grey(cmap),
        vmin=0.0,
        vmax=vmax,
        extent=extent,
        interpolation="nearest",
    )
    extend = "max" if finite.size and float(finite.max()) > vmax else "neither"
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, extend=extend)
    bar.set_label("change (1 − cosine similarity)")
    if threshold is not None:
        _threshold_contour(ax, bar, values, extent, threshold)


def _threshold_contour(
    ax: Axes,
    bar: Colorbar,
    values: np.ndarray,
    extent: tuple[float, float, float, float],
    threshold: float,
) -> None:
    """Mark ``threshold`` on the colour bar and outline where the change crosses it (cyan)."""
    bar.ax.axhline(threshold, color="cyan", linewidth=2)
    ny, nx = values.shape
    xs = np.linspace(extent[0], extent[1], nx + 1)[:-1] + (extent[1] - extent[0]) / nx / 2
    ys = np.linspace(extent[3], extent[2], ny + 1)[:-1] - (extent[3] - extent[2]) / ny / 2
    filled = np.where(np.isfinite(values), values, 0.0)
    if filled.min() < threshold < filled.max():
        ax.contour(xs, ys, filled, levels=[threshold], colors="cyan", linewidths=1.2)


def _change_title(change: xr.DataArray, year: Any, binary: bool) -> str:
    """The default title of :func:`plot_change`, naming the baseline and the threshold."""
    baseline = change.attrs.get("baseline")
    if not binary:
        since = f"{baseline} → " if baseline is not None else ""
        return f"Change {since}{year} (1 − cosine)"
    return f"Changed since {baseline}: {year}" + (
        f" (> {change.attrs['threshold']:g})" if "threshold" in change.attrs else ""
    )


def plot(
    cube_or_rgb: xr.Dataset | xr.DataArray,
    *,
    years: Iterable[int] | None = None,
    bands: Sequence[str] = DEFAULT_BANDS,
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
    stack = rgba_stack(cube_or_rgb, chosen, bands, vmin, vmax)
    geom = projected_boundary(boundary, stack.crs, stack.attrs)
    n = len(stack.years)
    ncols = min(col_wrap, n)
    nrows = math.ceil(n / ncols)
    ny, nx = stack.rgba.shape[1:3]
    aspect = ny / max(nx, 1)
    fig = new_figure((size * ncols, size * aspect * nrows + 0.45 * nrows + 0.5))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    # Enough pixels per panel for a crisp checkerboard under no-data pixels.
    factor = max(1, math.ceil(size * fig.dpi / max(ny, nx)))
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        picture = composite(stack.rgba[k], ny * factor, nx * factor)
        ax.imshow(picture, extent=stack.extent, interpolation="nearest")
        if geom is not None:
            draw_boundary(ax, geom, 2.0, fig.dpi)
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
