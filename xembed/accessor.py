"""The ``.embed`` accessor: one-line wrappers over :mod:`xembed.ops`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import xarray as xr

from xembed import ops

__all__ = ["EmbedAccessor"]


def _wrap(func: Callable[..., Any]) -> Callable[..., Any]:
    """Expose ``func(obj, ...)`` as ``obj.embed.func(...)``, sharing its docstring."""

    @functools.wraps(func)
    def method(self: EmbedAccessor, *args: Any, **kwargs: Any) -> Any:
        return func(self._obj, *args, **kwargs)

    method.__doc__ = f"Accessor form of :func:`xembed.ops.{func.__name__}`.\n\n{func.__doc__}"
    return method


@xr.register_dataset_accessor("embed")
@xr.register_dataarray_accessor("embed")
class EmbedAccessor:
    """Embedding analyses on a cube: ``ds.embed.polygon_mean()`` etc."""

    def __init__(self, obj: xr.Dataset | xr.DataArray) -> None:
        self._obj = obj  # nothing else: errors here become opaque in xarray

    polygon_mean = _wrap(ops.polygon_mean)
    to_frame = _wrap(ops.to_frame)
