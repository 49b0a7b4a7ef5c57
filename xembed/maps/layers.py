"""Which pictures a map shows: layer names and DataArrays to coloured yearly stacks.

A layer is asked for by name (``"rgb"``, ``"pca_rgb"``, ``"change"``,
``"similarity"``, ``"clusters"``, ``"classes"``, or a data variable of the
cube) or given as a DataArray on the cube's grid. Each is kept lazy until
:func:`compute_layers` computes them all at once (one read of the cube),
then :func:`colourise` turns the numbers into RGBA pictures and a legend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from xembed import ops
from xembed.maps.page import colour_bar, swatches
from xembed.maps.raster import hex_colours
from xembed.render.frame import north_up

__all__ = ["NAMES", "Layer", "colourise", "compute_layers", "resolve_layers", "year_labels"]

#: The layers :func:`xembed.explore` computes itself, by name.
NAMES = ("rgb", "pca_rgb", "change", "similarity", "clusters", "classes")


@dataclass
class Layer:
    """One group of the layer control: a picture per year, coloured one way.

    ``style`` is ``"rgba"`` (already a picture), ``"continuous"`` (a colour
    map from ``vmin`` to ``vmax``) or ``"categorical"`` (a colour per value
    of ``values``, named by ``names``).
    """

    title: str
    data: xr.DataArray
    style: str
    cmap: str = "viridis"
    vmin: float | None = None
    vmax: float | None = None
    label: str = ""
    values: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def _categories(da: xr.DataArray, title: str) -> Layer:
    attrs = da.attrs
    if da.dtype == bool:
        names = str(attrs.get("flag_meanings", "no yes")).split()
        return Layer(title, da.astype(np.int16), "categorical", values=[0, 1], names=names)
    if "flag_meanings" in attrs:
        names = str(attrs["flag_meanings"]).split()
        values = [int(v) for v in np.atleast_1d(attrs.get("flag_values", range(len(names))))]
        if len(values) != len(names):
            raise ValueError(
                f"layer {title!r}: {len(values)} flag_values but {len(names)} flag_meanings; "
                "give one space-separated name per value"
            )
        return Layer(title, da, "categorical", values=values, names=names)
    k = int(attrs.get("k", 0)) or None
    if k is None:
        raise ValueError(
            f"layer {title!r} holds integers but names no classes: give it attrs "
            "'flag_values' and 'flag_meanings' (space-separated names), or 'k' for clusters 0..k-1"
        )
    return Layer(
        title, da, "categorical", values=list(range(k)), names=[f"cluster {i}" for i in range(k)]
    )


def _from_array(da: xr.DataArray, title: str | None = None) -> Layer:
    name = title or str(da.attrs.get("long_name") or da.name or "layer")
    if "channel" in da.dims:
        return Layer(name, da, "rgba")
    if da.dtype == bool or np.issubdtype(da.dtype, np.integer):
        return _categories(da, name)
    vmin, vmax = da.attrs.get("valid_min"), da.attrs.get("valid_max")
    return Layer(
        name,
        da,
        "continuous",
        vmin=None if vmin is None else float(vmin),
        vmax=None if vmax is None else float(vmax),
        label=str(da.attrs.get("units", "")),
    )


def _classes_of(ds: xr.Dataset | xr.DataArray) -> xr.DataArray:
    if isinstance(ds, xr.Dataset):
        for name, var in ds.data_vars.items():
            if "flag_meanings" in var.attrs:
                return var.rename(str(name))
    raise ValueError(
        "layers=['classes'] needs a data variable with 'flag_meanings' (a land-cover map) in the "
        "cube; pass the class DataArray itself in layers=[...], or ask for 'clusters' (k-means)"
    )


def _named(ds: xr.Dataset | xr.DataArray, name: str) -> Layer:
    if name == "rgb":
        return Layer("RGB (A01, A16, A09)", ops.rgb(ds), "rgba")
    if name == "pca_rgb":
        return Layer("PCA RGB", ops.pca_rgb(ds), "rgba")
    if name == "change":
        d = ops.change(ds)
        base = d.attrs["baseline"]
        label = f"1 − cosine similarity with {base}"
        return Layer(f"Change since {base}", d, "continuous", cmap="magma", vmin=0.0, label=label)
    if name == "similarity":
        s = ops.similarity(ds, reference="previous")
        return Layer("Similarity with previous year", s, "continuous", vmax=1.0, label="cosine")
    if name == "clusters":
        return _categories(ops.kmeans(ds), "Clusters (k-means)")
    if name == "classes":
        return _from_array(_classes_of(ds), "Classes")
    if isinstance(ds, xr.Dataset) and name in ds.data_vars and name not in ("embeddings",):
        return _from_array(ds[name])
    raise ValueError(
        f"unknown layer {name!r}: use one of {list(NAMES)}, a data variable of the cube, "
        "or pass a DataArray on the cube's grid"
    )


def resolve_layers(
    ds: xr.Dataset | xr.DataArray, layers: Sequence[Any] | None, years: Sequence[int] | None
) -> list[Layer]:
    """The asked layers, lazy, restricted to ``years`` (default: the RGB layer)."""
    if layers is None:
        layers = ["rgb"]
    elif isinstance(layers, (str, xr.DataArray)):
        layers = [layers]
    out = []
    for item in layers:
        if isinstance(item, xr.DataArray):
            layer = _from_array(item)
        elif isinstance(item, str):
            layer = _named(ds, item)
        else:
            raise TypeError(
                f"layers holds names ({list(NAMES)}) or DataArrays; got {type(item).__name__}"
            )
        layer.data = layer.data.transpose("year", "y", "x", ..., missing_dims="ignore")
        if years is not None and "year" in layer.data.dims:
            keep = [y for y in layer.data["year"].values if int(y) in {int(v) for v in years}]
            layer.data = layer.data.sel(year=keep)
        out.append(layer)
    return out


def compute_layers(layers: Sequence[Layer]) -> list[np.ndarray]:
    """Compute every layer's data in one pass (one read of the cube for all)."""
    import dask

    return [np.asarray(v) for v in dask.compute(*[layer.data.data for layer in layers])]


def _normalise(layer: Layer, values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    vmin, vmax = layer.vmin, layer.vmax
    if vmin is None:  # round the 1st percentile down to 0.05, as the similarity figures do
        low = float(np.percentile(finite, 1)) if finite.size else 0.0
        vmin = min(math.floor(low / 0.05) * 0.05, (vmax if vmax is not None else 1.0) - 0.05)
    if vmax is None:  # round the 99th percentile up to 0.05: one scale for every year
        high = float(np.percentile(finite, 99)) if finite.size else vmin + 1.0
        vmax = max(math.ceil(high / 0.05) * 0.05, vmin + 0.05)
    layer.vmin, layer.vmax = float(vmin), float(vmax)
    return (values - vmin) / (vmax - vmin)


def _continuous(layer: Layer, values: np.ndarray) -> tuple[np.ndarray, Any]:
    from matplotlib import colormaps

    cmap = colormaps[layer.cmap]
    scaled = _normalise(layer, values.astype(np.float64))
    rgba = (cmap(np.clip(np.nan_to_num(scaled), 0, 1)) * 255).round().astype(np.uint8)
    rgba[..., 3] = np.where(np.isfinite(scaled), 255, 0)
    bar = hex_colours(cmap(np.linspace(0, 1, 11)))
    assert layer.vmin is not None and layer.vmax is not None
    return rgba, colour_bar(layer.title, bar, layer.vmin, layer.vmax, label=layer.label)


def _categorical(layer: Layer, values: np.ndarray) -> tuple[np.ndarray, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(layer.values) <= 10 else "tab20"]
    colours = palette(np.arange(len(layer.values)) % palette.N)
    rgba = np.zeros((*values.shape, 4), dtype=np.uint8)
    for value, colour in zip(layer.values, colours, strict=True):
        rgba[values == value] = (colour * 255).round().astype(np.uint8)
    return rgba, swatches(layer.title, layer.names, hex_colours(colours))


def colourise(layer: Layer, values: np.ndarray) -> tuple[np.ndarray, tuple[float, ...], Any]:
    """A layer's computed values as north-up RGBA ``(n, y, x, 4)``, their extent, and a legend."""
    da = layer.data
    if "year" not in da.dims:
        values = values[None]
    if layer.style == "rgba":
        rgba, legend = values.astype(np.uint8), None
    elif layer.style == "categorical":
        rgba, legend = _categorical(layer, values)
    else:
        rgba, legend = _continuous(layer, values)
    x = np.asarray(da["x"].values, dtype=float)
    y = np.asarray(da["y"].values, dtype=float)
    rgba, extent = north_up(rgba, x, y, y_axis=1)
    return np.ascontiguousarray(rgba), tuple(float(e) for e in extent), legend


def year_labels(layer: Layer) -> list[str]:
    """The radio buttons' names: the years, or the layer's title when it has none."""
    if "year" in layer.data.dims:
        return [str(int(y)) for y in layer.data["year"].values]
    return [layer.title]
