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
    GDAL_CRS_ATTR,
    ORIGINAL_LONG_NAME,
    QUANTIZED_ATTR,
    QUANTIZED_LONG_NAME,
    QUANTIZED_NAME,
    SPATIAL_CHUNK,
    PathLike,
    WriteMode,
    ZarrFormat,
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
    if QUANTIZED_NAME in ds:
        raise SchemaError(
            f"{QUANTIZED_NAME!r} holds the int8 codes of a quantised export, not embeddings; "
            "open the store with xembed.open_cube(path) to de-quantise it first"
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
        Store ``embeddings`` as int8 codes named ``embeddings_int8`` (so that
        no plain reader takes them for values), with the official
        quantisation, ``_FillValue = -128``, ``xembed_quantized = 1`` and the
        decoding formula in its attrs.

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
    >>> out.embeddings_int8.dtype, out.embeddings_int8.attrs["xembed_quantized"]
    (dtype('int8'), 1)
    >>> out.embeddings_int8.encoding
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
        if "long_name" in emb.attrs:  # kept for open_cube to restore
            emb.attrs[ORIGINAL_LONG_NAME] = emb.attrs["long_name"]
        emb.attrs.update(
            {
                "long_name": QUANTIZED_LONG_NAME,
                QUANTIZED_ATTR: 1,
                DEQUANTIZE_ATTR: DEQUANTIZE_TEXT,
            }
        )
        ds = ds.assign(embeddings=emb).rename_vars(embeddings=QUANTIZED_NAME)
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
        ds[QUANTIZED_NAME].encoding["_FillValue"] = schema.NODATA
    return ds


def _grid_mapping_name(ds: xr.Dataset) -> str | None:
    """The name of the CRS variable, or None for a dataset without a CRS."""
    try:
        name = ds.rio.grid_mapping
        crs = ds.rio.crs
    except Exception:  # rioxarray raises several kinds for datasets without a grid
        name, crs = None, None
    if crs is None or name not in ds.variables:
        if "embeddings" in ds or QUANTIZED_NAME in ds:
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


def check_zarr_format(zarr_format: Any) -> ZarrFormat:
    """``zarr_format`` if it is 2 or 3, else a ValueError saying what each is for."""
    if zarr_format not in (2, 3):
        raise ValueError(
            f"zarr_format must be 3 (the default) or 2 (for older GDAL, e.g. 3.6, and the "
            f"QGIS versions built on it), got {zarr_format!r}"
        )
    return zarr_format


def _gdal_crs_attrs(ds: xr.Dataset) -> xr.Dataset:
    """Add GDAL's own ``_CRS`` attribute to every variable on the ``(y, x)`` grid.

    GDAL reads CF grid mappings in Zarr only from 3.9 on; from 3.4 on it reads
    ``_CRS`` (``{"wkt": ...}``). :func:`xembed.export.open_cube` drops it again.
    """
    try:
        crs = ds.rio.crs
    except Exception:  # rioxarray raises several kinds for datasets without a grid
        crs = None
    if crs is None:
        return ds
    value = {"wkt": crs.to_wkt()}
    ds = ds.copy()
    for name, var in ds.data_vars.items():
        if {"y", "x"} <= set(var.dims):
            ds.variables[name].attrs = {**var.attrs, GDAL_CRS_ATTR: value}
    return ds


def prepare_zarr(ds: xr.Dataset, *, quantize: bool, zarr_format: ZarrFormat = 3) -> xr.Dataset:
    """:func:`prepare_export`, then what the Zarr format needs.

    Format 3: variable-length strings (fixed-width ones have no stable v3 data
    type), the default Zstd codec. Format 2, for older GDAL: fixed-width
    strings, Zstd (which every GDAL that reads the mirror's ZSTD COGs has;
    Blosc, zarr's v2 default, is an optional GDAL dependency), and ``_CRS``.
    Either way a quantised store gets Zarr's own fill value too, so a chunk
    never written reads as no data.
    """
    ds = prepare_export(ds, quantize=quantize)
    if zarr_format == 3:
        ds = _string_coords_to_object(ds)
    else:
        import numcodecs

        ds = _gdal_crs_attrs(ds)
        codec = {"compressors": (numcodecs.Zstd(level=0),)}  # level 0: zstd's default
        ds = _with_encoding(ds, {str(name): codec for name in ds.variables})
    if quantize:
        ds = _with_encoding(ds, {QUANTIZED_NAME: {"fill_value": schema.NODATA}})
    return ds


def write_zarr(
    prepared: xr.Dataset | xr.DataTree,
    path: PathLike,
    *,
    mode: WriteMode,
    consolidated: bool,
    progress: bool,
    zarr_format: ZarrFormat = 3,
) -> Path:
    """Write what :func:`prepare_zarr` made (a dataset or a tree of them), atomically."""
    write = functools.partial(
        prepared.to_zarr,
        mode="w-",
        consolidated=consolidated,
        zarr_format=zarr_format,
        compute=False,
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
    zarr_format: ZarrFormat = 3,
) -> Path:
    """Write a cube to a Zarr store, atomically, chunk by chunk.

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
        Store ``embeddings`` as int8 codes named ``embeddings_int8``
        (official quantisation, -128 = no data): about 4x smaller, values
        within half a quantisation step, and exact for data read from the
        int8 COG mirror or the sample (re-quantising de-quantised values
        gives the same codes). See the module documentation for how plain
        readers decode it.
    consolidated : bool
        Write consolidated metadata (faster opens, especially remote).
    progress : bool
        Show a dask progress bar in the terminal.
    zarr_format : {3, 2}
        Zarr format 3 (default), or 2 for older GDAL and the QGIS versions
        built on it (GDAL 3.6 cannot read format 3). Format 2 also
        stores the CRS as GDAL's ``_CRS`` attribute (GDAL reads CF grid
        mappings only from 3.9 on): open it in GDAL as
        ``ZARR:"cube.zarr":/embeddings`` (one band per year and band).

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
    >>> for_gdal = to_zarr(cube, path, mode="w", zarr_format=2)
    >>> sorted(p.name for p in for_gdal.iterdir())[:3]
    ['.zattrs', '.zgroup', '.zmetadata']
    """
    require_zarr()
    zarr_format = check_zarr_format(zarr_format)
    return write_zarr(
        prepare_zarr(ds, quantize=quantize, zarr_format=zarr_format),
        path,
        mode=mode,
        consolidated=consolidated,
        progress=progress,
        zarr_format=zarr_format,
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
