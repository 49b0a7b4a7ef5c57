"""Writing one cube: :func:`prepare_export`, :func:`to_zarr` and :func:`to_netcdf`.

How the store is laid out is described in :mod:`xembed.export`.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from xembed import schema
from xembed.errors import SchemaError
from xembed.export._store import (
    DEQUANTIZE_ATTR,
    DEQUANTIZE_TEXT,
    QUANTIZED_ATTR,
    SPATIAL_CHUNK,
    PathLike,
    WriteMode,
    netcdf_engine,
    quiet_zarr,
    require_zarr,
    write_atomically,
)

__all__ = ["prepare_export", "to_netcdf", "to_zarr"]

#: CF packing attributes that, left in ``attrs``, would rescale values on read.
_PACKING_ATTRS = ("scale_factor", "add_offset", "_FillValue", "missing_value", "_Unsigned")


def _is_regular(chunks: tuple[int, ...]) -> bool:
    """Zarr can store dask chunks that are equal except for a smaller last one."""
    return all(c == chunks[0] for c in chunks[:-1]) and chunks[-1] <= chunks[0]


def _storage_chunks(ds: xr.Dataset) -> dict[Hashable, int]:
    """One chunk size per dimension, taken from the dask chunks of the data.

    ``embeddings`` decides first, then the other dask-backed variables; a
    dimension that no variable chunks regularly gets the default: the whole
    dimension, or :data:`SPATIAL_CHUNK` pixels for ``y`` and ``x``.
    """
    order = sorted(ds.data_vars.values(), key=lambda v: v.name != "embeddings")
    out: dict[Hashable, int] = {}
    for var in order:
        if var.chunks is None:
            continue
        for dim, chunks in zip(var.dims, var.chunks, strict=True):
            if dim not in out and _is_regular(tuple(chunks)):
                out[dim] = chunks[0]
    for dim, size in ds.sizes.items():
        out.setdefault(dim, min(size, SPATIAL_CHUNK) if dim in ("y", "x") else size)
    return out


def _check_input(ds: Any, *, quantize: bool) -> xr.Dataset:
    if isinstance(ds, xr.DataArray):
        raise TypeError(
            "expected an xarray.Dataset (a cube), got a DataArray; "
            f"use .to_dataset(name={ds.name or 'data'!r}) first"
        )
    if not isinstance(ds, xr.Dataset):
        raise TypeError(
            f"expected an xarray.Dataset (a cube), got {type(ds).__name__}; "
            "open one with xembed.open_embeddings(...)"
        )
    if "embeddings" in ds:
        schema.validate_cube(ds)
        emb = ds["embeddings"]
        if emb.attrs.get(QUANTIZED_ATTR):
            raise SchemaError(
                f"'embeddings' hold raw int8 codes ({QUANTIZED_ATTR}=1 in its attrs), not "
                "embeddings; open the store with xembed.open_cube(path) to de-quantise it first"
            )
        if not np.issubdtype(emb.dtype, np.floating):
            raise SchemaError(
                f"'embeddings' has dtype {emb.dtype}, expected float32; de-quantise int8 data "
                "with xembed.dequantize first"
            )
    elif quantize:
        raise SchemaError(
            "quantize=True needs an 'embeddings' variable "
            f"(variables: {sorted(map(str, ds.data_vars))})"
        )
    for name, var in ds.variables.items():
        packing = sorted(set(var.attrs) & set(_PACKING_ATTRS))
        if packing:
            raise SchemaError(
                f"variable {name!r} has the CF packing attributes {packing} in its attrs; written "
                "out they would rescale or mask its values on read. Decode the dataset first "
                "(xr.decode_cf(ds)) or drop them: ds[name].attrs.pop(...)"
            )
    return ds


def prepare_export(ds: xr.Dataset, *, quantize: bool = False) -> xr.Dataset:
    """The dataset exactly as :func:`to_zarr` and :func:`to_netcdf` write it.

    Drops every encoding (stale ones from a source must never rescale values),
    chunks regularly, declares the CRS variable to CF readers and, with
    ``quantize=True``, turns ``embeddings`` into lazy int8 codes. Nothing is
    computed. Use it to write somewhere the atomic writers cannot, e.g.
    ``prepare_export(ds).to_zarr("s3://bucket/cube.zarr")``.

    Parameters
    ----------
    ds : xarray.Dataset
        A cube (or any dataset; ``quantize`` needs ``embeddings``).
    quantize : bool
        Store ``embeddings`` as int8 with the official quantisation and
        ``_FillValue = -128``, marked with ``xembed_quantized = 1``.

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    TypeError
        If ``ds`` is not a Dataset.
    xembed.errors.SchemaError
        If it is a cube that breaks the schema, holds already quantised
        codes, or carries CF packing attributes (``scale_factor``...) in attrs.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> from xembed.export import prepare_export
    >>> cube = make_cube(shape=(8, 8))
    >>> cube["embeddings"].encoding["scale_factor"] = 10.0  # stale, as Xee leaves it
    >>> out = prepare_export(cube, quantize=True)
    >>> out.embeddings.dtype, out.embeddings.attrs["xembed_quantized"]
    (dtype('int8'), 1)
    >>> out.embeddings.encoding
    {'grid_mapping': 'spatial_ref', 'coordinates': 'spatial_ref', '_FillValue': -128}
    """
    ds = _check_input(ds, quantize=quantize)
    ds = ds.drop_encoding()
    ds = ds.chunk(_storage_chunks(ds))
    if quantize:
        emb = xr.apply_ufunc(
            schema.quantize,
            ds["embeddings"],
            dask="parallelized",
            output_dtypes=[np.int8],
            keep_attrs=True,
        )
        emb.attrs.update({QUANTIZED_ATTR: 1, DEQUANTIZE_ATTR: DEQUANTIZE_TEXT})
        ds["embeddings"] = emb
    grid_mapping = _grid_mapping_name(ds)
    for name in ds.data_vars:
        var = ds.variables[name]
        attrs = dict(var.attrs)
        gm = attrs.pop("grid_mapping", None)
        coords_attr = attrs.pop("coordinates", None)
        var.attrs = attrs
        if grid_mapping is not None and name != grid_mapping and {"y", "x"} <= set(var.dims):
            gm = grid_mapping
        if gm is not None:
            var.encoding["grid_mapping"] = gm
            # List the grid mapping as a coordinate too: xarray leaves grid
            # mappings out of `coordinates`, and a plain open then turns
            # `spatial_ref` into a data variable that rioxarray cannot find.
            aux = {
                str(c)
                for c, cv in ds.coords.items()
                if c not in ds.dims and set(cv.dims) <= set(var.dims)
            }
            aux.update(str(coords_attr).split() if coords_attr else ())
            var.encoding["coordinates"] = " ".join(sorted(aux | {gm}))
        elif coords_attr is not None:
            var.encoding["coordinates"] = coords_attr
    if quantize:
        ds["embeddings"].encoding["_FillValue"] = schema.NODATA
    return ds


def _grid_mapping_name(ds: xr.Dataset) -> str | None:
    """The name of the CRS variable, or None for a dataset without a CRS."""
    try:
        name = ds.rio.grid_mapping
        crs = ds.rio.crs
    except Exception:  # rioxarray raises several kinds for datasets without a grid
        name, crs = None, None
    if crs is None or name not in ds.variables:
        if "embeddings" in ds:
            raise SchemaError(
                "the cube has no CRS (no 'spatial_ref' grid mapping); write one with "
                "ds = ds.rio.write_crs('EPSG:327xx') (the site's UTM zone)"
            )
        return None
    return str(name)


def _string_coords_to_object(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width unicode has no stable Zarr v3 data type; variable-length does."""
    fixes = {name: var.astype(object) for name, var in ds.coords.items() if var.dtype.kind == "U"}
    return ds.assign_coords(fixes) if fixes else ds


def _with_encoding(ds: xr.Dataset, extra: Mapping[str, Mapping[str, Any]]) -> xr.Dataset:
    """``ds`` with ``extra`` merged into its variables' encodings.

    (``to_zarr(encoding=...)`` would *replace* them, losing ``grid_mapping``.)
    """
    ds = ds.copy()
    for name, enc in extra.items():
        ds.variables[name].encoding = {**ds.variables[name].encoding, **enc}
    return ds


def prepare_zarr(ds: xr.Dataset, *, quantize: bool) -> xr.Dataset:
    """:func:`prepare_export`, then what Zarr v3 needs: variable-length strings, a fill value."""
    ds = _string_coords_to_object(prepare_export(ds, quantize=quantize))
    if quantize:  # Zarr's own fill value too: a missing chunk reads as no data
        ds = _with_encoding(ds, {"embeddings": {"fill_value": schema.NODATA}})
    return ds


def write_zarr(
    prepared: xr.Dataset | xr.DataTree,
    path: PathLike,
    *,
    mode: WriteMode,
    consolidated: bool,
    progress: bool,
) -> Path:
    """Write what :func:`prepare_zarr` made (a dataset or a tree of them), atomically."""
    write = functools.partial(
        prepared.to_zarr, mode="w-", consolidated=consolidated, zarr_format=3, compute=False
    )
    with quiet_zarr():
        return write_atomically(path, mode, write, directory=True, progress=progress)


def _netcdf_ready(ds: xr.Dataset) -> xr.Dataset:
    """Compression and HDF5 chunks; 0/1 for booleans.

    HDF5 chunks are one year of the dask chunks (all bands, 256 x 256 px by
    default): every dask task then writes whole HDF5 chunks. A chunk written
    in parts is rewritten, and HDF5 never reclaims the space of the old copy.
    """
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        if var.ndim == 0 or var.dtype.kind not in "biuf":
            continue
        dask_chunks = var.chunks or tuple((n,) for n in var.shape)
        chunks = [
            1 if dim == "year" else c[0] for dim, c in zip(var.dims, dask_chunks, strict=True)
        ]
        encoding[str(name)] = {
            "zlib": True,
            "complevel": 1,
            "shuffle": True,
            "chunksizes": tuple(chunks),
        }
    return _netcdf_safe_attrs(_with_encoding(ds, encoding))


def _netcdf_safe_attrs(ds: xr.Dataset) -> xr.Dataset:
    """NetCDF has no booleans: store them as 0/1."""

    def fix(attrs: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return {k: int(v) if isinstance(v, (bool, np.bool_)) else v for k, v in attrs.items()}

    ds = ds.copy()
    ds.attrs = fix(ds.attrs)
    for var in ds.variables.values():
        var.attrs = fix(var.attrs)
    return ds


# --- one cube -------------------------------------------------------------------


def to_zarr(
    ds: xr.Dataset,
    path: PathLike,
    *,
    mode: WriteMode = "w-",
    quantize: bool = False,
    consolidated: bool = True,
    progress: bool = False,
) -> Path:
    """Write a cube to a Zarr (v3) store, atomically, chunk by chunk.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube (lazy or in memory). Its encodings are ignored.
    path : str or path
        Local folder of the store, e.g. ``"site.zarr"``. Parent folders are
        created.
    mode : {"w-", "w"}
        ``"w-"`` fails if ``path`` exists; ``"w"`` replaces an existing Zarr
        store (only once the new one is complete).
    quantize : bool
        Store ``embeddings`` as int8 (official quantisation, -128 = no data):
        about 4x smaller, values within half a quantisation step, and exact
        for data read from the int8 COG mirror or the sample (re-quantising
        de-quantised values gives the same codes). See the module
        documentation for how plain readers decode it.
    consolidated : bool
        Write consolidated metadata (faster opens, especially remote).
    progress : bool
        Show a dask progress bar in the terminal.

    Returns
    -------
    pathlib.Path
        The absolute path of the store.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``mode="w-"``, or is not a Zarr store.
    xembed.errors.SchemaError
        If ``ds`` is not a valid cube (see :func:`prepare_export`).

    Examples
    --------
    >>> import tempfile, os
    >>> import xarray as xr
    >>> from xembed.testing import make_cube
    >>> from xembed.export import open_cube, to_zarr
    >>> cube = make_cube(shape=(16, 16))
    >>> path = to_zarr(cube, os.path.join(tempfile.mkdtemp(), "cube.zarr"))
    >>> back = xr.open_zarr(path, decode_coords="all")
    >>> xr.testing.assert_identical(back, cube)
    >>> back.rio.crs.to_epsg(), back.embeddings.dtype
    (32722, dtype('float32'))
    >>> small = to_zarr(cube, path, mode="w", quantize=True)
    >>> open_cube(small).embeddings.dtype
    dtype('float32')
    """
    require_zarr()
    return write_zarr(
        prepare_zarr(ds, quantize=quantize),
        path,
        mode=mode,
        consolidated=consolidated,
        progress=progress,
    )


def to_netcdf(
    ds: xr.Dataset,
    path: PathLike,
    *,
    mode: WriteMode = "w-",
    quantize: bool = False,
    progress: bool = False,
) -> Path:
    """Write a cube to a NetCDF-4 file, atomically, chunk by chunk.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube (lazy or in memory). Its encodings are ignored; boolean
        attributes are stored as 0/1 (NetCDF has no booleans).
    path : str or path
        The file, e.g. ``"site.nc"``. Parent folders are created.
    mode : {"w-", "w"}
        ``"w-"`` fails if ``path`` exists; ``"w"`` replaces a file (only once
        the new one is complete).
    quantize : bool
        Store ``embeddings`` as int8 (see :func:`to_zarr`).
    progress : bool
        Show a dask progress bar in the terminal.

    Returns
    -------
    pathlib.Path
        The absolute path of the file.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``mode="w-"``, or is a folder.
    ImportError
        If neither h5netcdf nor netCDF4 is installed.

    Examples
    --------
    >>> import tempfile, os
    >>> import xarray as xr
    >>> from xembed.testing import make_cube
    >>> from xembed.export import to_netcdf
    >>> cube = make_cube(shape=(16, 16))
    >>> path = to_netcdf(cube, os.path.join(tempfile.mkdtemp(), "cube.nc"))
    >>> with xr.open_dataset(path, decode_coords="all") as back:
    ...     xr.testing.assert_identical(back, cube)
    ...     print(back.rio.crs)
    EPSG:32722
    """
    engine = netcdf_engine()
    prepared = _netcdf_ready(prepare_export(ds, quantize=quantize))
    write = functools.partial(prepared.to_netcdf, engine=engine, format="NETCDF4", compute=False)
    return write_atomically(path, mode, write, directory=False, progress=progress)
