"""The ``.embed`` accessor: one-line wrappers over :mod:`xembed.ops`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

import xarray as xr

from xembed import export, maps, ops
from xembed import render as _render

__all__ = ["EmbedAccessor"]


def _wrap(module: ModuleType, name: str) -> Callable[..., Any]:
    """Expose ``module.name(obj, ...)`` as ``obj.embed.name(...)``, sharing its docstring."""
    func = getattr(module, name)

    @functools.wraps(func)
    def method(self: EmbedAccessor, *args: Any, **kwargs: Any) -> Any:
        return func(self._obj, *args, **kwargs)

    method.__doc__ = f"Accessor form of :func:`{module.__name__}.{name}`.\n\n{func.__doc__}"
    return method


@xr.register_dataset_accessor("embed")
@xr.register_dataarray_accessor("embed")
class EmbedAccessor:
    """Embedding analyses on a cube: ``ds.embed.similarity()`` etc.

    Every method is a public function of :mod:`xembed.ops` taking the
    object as its first argument.
    """

    def __init__(self, obj: xr.Dataset | xr.DataArray) -> None:
        self._obj = obj  # nothing else: errors here become opaque in xarray

    polygon_mean = _wrap(ops, "polygon_mean")
    zonal_mean = _wrap(ops, "zonal_mean")
    to_frame = _wrap(ops, "to_frame")
    check_coverage = _wrap(ops, "check_coverage")
    similarity_matrix = _wrap(ops, "similarity_matrix")
    similarity = _wrap(ops, "similarity")
    pairwise_similarity = _wrap(ops, "pairwise_similarity")
    change = _wrap(ops, "change")
    change_summary = _wrap(ops, "change_summary")
    search = _wrap(ops, "search")
    rgb = _wrap(ops, "rgb")
    pca_rgb = _wrap(ops, "pca_rgb")
    kmeans = _wrap(ops, "kmeans")
    sample = _wrap(ops, "sample")
    predict = _wrap(ops, "predict")
    classify = _wrap(ops, "classify")
    class_area = _wrap(ops, "class_area")
    to_zarr = _wrap(export, "to_zarr")
    to_netcdf = _wrap(export, "to_netcdf")
    to_geotiff = _wrap(export, "to_geotiff")
    render = _wrap(_render, "render")
    frames = _wrap(_render, "frames")
    plot = _wrap(_render, "plot")
    explore = _wrap(maps, "explore")
