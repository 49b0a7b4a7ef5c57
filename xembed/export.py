"""Export cubes to Zarr and NetCDF, atomically, and open them back.

- :func:`to_zarr` / :func:`to_netcdf` write one cube with its CRS, coordinates,
  attrs and float32 values intact; ``quantize=True`` stores the embeddings as
  int8 with the official quantisation (4x smaller) instead.
- :func:`to_datatree` / :func:`write_sites_zarr` / :func:`open_sites` hold many
  sites (each on its own grid, even in different UTM zones) as one
  :class:`xarray.DataTree` with one group per site, ``site_{id}``.
- :func:`open_cube` opens an export back as a lazy cube, de-quantising int8
  stores and checking the schema.

How a store is laid out (so that plain ``xr.open_zarr`` / ``xr.open_dataset``
users, GDAL and other CF readers understand it):

- Encodings of the input are dropped first. A source's stale encoding (Xee
  sets ``scale_factor`` to the pixel size) would otherwise rescale the values
  on disk.
- The CRS is the CF grid mapping variable ``spatial_ref`` (what rioxarray
  writes); ``embeddings`` and ``coverage`` name it in their ``grid_mapping``
  and ``coordinates`` attributes, so ``ds.rio.crs`` works after a plain open.
  Open with ``decode_coords="all"`` to get the cube back *identical*; with the
  default ``decode_coords=True`` the only difference is a ``grid_mapping``
  attribute on the two variables.
- Zarr: format 3, the default Zstd codec, chunks of the cube's dask chunks
  (all years and bands, 256 x 256 pixels by default), the band names as
  variable-length strings, consolidated metadata.
- NetCDF-4 (h5netcdf): zlib level 1 with shuffle, HDF5 chunks of one year of
  the dask chunks (so each task writes whole HDF5 chunks).
- ``quantize=True``: ``embeddings`` is int8 ``q = round(sign(v) * sqrt(|v|) *
  127.5)`` with ``_FillValue = -128`` (no data), and the attributes
  ``xembed_quantized = 1`` and ``xembed_dequantize`` (the formula). A plain
  open masks -128 to NaN and returns ``q`` as float32; decode it with
  ``v = sign(q) * (q / 127.5) ** 2`` (:func:`xembed.dequantize`), or use
  :func:`open_cube`, which does.

Writes are atomic: the store is written to a hidden sibling
``.{name}.tmp-XXXXXXXX`` and renamed into place only once complete; on any
error (or Ctrl-C) the temporary is removed and ``path`` is untouched. A process
killed outright can leave such a hidden temporary behind, never a store at
``path``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import dask
import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from xembed import schema
from xembed.errors import SchemaError

__all__ = [
    "QUANTIZED_ATTR",
    "is_cube_store",
    "open_cube",
    "open_sites",
    "prepare_export",
    "to_datatree",
    "to_netcdf",
    "to_zarr",
    "write_sites_zarr",
]

PathLike = str | os.PathLike[str]
WriteMode = Literal["w-", "w"]

#: Attribute marking int8-quantised embeddings (value 1).
QUANTIZED_ATTR = "xembed_quantized"
#: Attribute telling plain readers how to decode quantised embeddings.
DEQUANTIZE_ATTR = "xembed_dequantize"
DEQUANTIZE_TEXT = (
    "v = sign(q) * (q / 127.5) ** 2, where q is the stored int8 value and -128 "
    "(the _FillValue) means no data; xembed.open_cube(path) or xembed.dequantize(q) "
    "does this"
)
#: On-disk tile of the spatial dims when the input has no (regular) dask chunks.
SPATIAL_CHUNK = 256
#: CF packing attributes that, left in ``attrs``, would rescale values on read.
_PACKING_ATTRS = ("scale_factor", "add_offset", "_FillValue", "missing_value", "_Unsigned")
_GROUP_PREFIX = "site_"
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zmetadata")


# --- preparing a dataset for writing -------------------------------------------


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


def _zarr_ready(ds: xr.Dataset, *, quantize: bool) -> xr.Dataset:
    ds = _string_coords_to_object(ds)
    if quantize:  # Zarr's own fill value too: a missing chunk reads as no data
        ds = _with_encoding(ds, {"embeddings": {"fill_value": schema.NODATA}})
    return ds


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


def _require_zarr() -> None:
    try:
        import zarr
    except ImportError as err:
        raise ImportError(
            "writing or reading Zarr needs zarr>=3; install it with pip install 'xembed[io]' "
            "(or: pip install 'zarr>=3')"
        ) from err
    if int(zarr.__version__.split(".")[0]) < 3:
        raise ImportError(
            f"xembed writes Zarr format 3, which needs zarr>=3 (found {zarr.__version__}); "
            "upgrade with pip install -U 'zarr>=3'"
        )


def _netcdf_engine() -> str:
    for engine, module in (("h5netcdf", "h5netcdf"), ("netcdf4", "netCDF4")):
        try:
            __import__(module)
        except ImportError:
            continue
        return engine
    raise ImportError(
        "writing or reading NetCDF needs h5netcdf (or netCDF4); install it with "
        "pip install 'xembed[io]' (or: pip install h5netcdf h5py)"
    )


# --- atomic writes --------------------------------------------------------------


def _local_path(path: PathLike) -> Path:
    text = os.fspath(path)
    if "://" in text:
        raise ValueError(
            f"{text!r} is not a local path; atomic export needs a local folder. For object "
            "stores write the prepared dataset directly: "
            "xembed.export.prepare_export(ds).to_zarr(url)"
        )
    return Path(text).expanduser().absolute()


def _looks_like_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in _ZARR_MARKERS)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _check_target(path: Path, mode: str, *, directory: bool) -> None:
    if mode not in ("w-", "w"):
        raise ValueError(
            f"mode must be 'w-' (create, fail if it exists) or 'w' (replace), got {mode!r}; "
            "appending to an export is not supported, write a new one"
        )
    if not os.path.lexists(path):
        return
    if mode == "w-":
        raise FileExistsError(
            f"{path} already exists; pass mode='w' to replace it, or choose another path"
        )
    if directory and not _looks_like_zarr(path):
        raise FileExistsError(
            f"refusing to replace {path}: it is not a Zarr store; remove it yourself or "
            "choose another path"
        )
    if not directory and path.is_dir():
        raise FileExistsError(
            f"refusing to replace the folder {path} with a NetCDF file; choose another path"
        )


def _commit(tmp: Path, path: Path, mode: str, *, directory: bool) -> None:
    """Move the finished temporary into place (replacing ``path`` for mode 'w')."""
    if not os.path.lexists(path):
        # A directory rename fails if `path` appeared (non-empty) meanwhile.
        os.rename(tmp, path)
        return
    _check_target(path, mode, directory=directory)  # raises for 'w-'
    if not directory and not path.is_dir():
        os.replace(tmp, path)  # atomic for files
        return
    aside = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
    os.rename(path, aside)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(aside, path)
        raise
    _remove(aside)


@contextlib.contextmanager
def _atomic_target(path: PathLike, mode: str, *, directory: bool) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``path``; move it into place on success.

    On any exception (including KeyboardInterrupt) the temporary is removed and
    ``path`` is left as it was.
    """
    target = _local_path(path)
    _check_target(target, mode, directory=directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
    try:
        yield tmp
        _commit(tmp, target, mode, directory=directory)
    except BaseException:
        _remove(tmp)
        raise


def _compute(delayed: Any, *, progress: bool) -> None:
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            dask.compute(delayed)
    else:
        dask.compute(delayed)


@contextlib.contextmanager
def _quiet_zarr() -> Iterator[None]:
    # Zarr 3 warns that consolidated metadata is not (yet) in the v3 spec; xarray
    # and zarr-python read it, and other readers fall back to the plain metadata.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        yield


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
    _require_zarr()
    prepared = _zarr_ready(prepare_export(ds, quantize=quantize), quantize=quantize)
    with _atomic_target(path, mode, directory=True) as tmp, _quiet_zarr():
        delayed = prepared.to_zarr(
            tmp,
            mode="w-",
            consolidated=consolidated,
            zarr_format=3,
            compute=False,
        )
        _compute(delayed, progress=progress)
    return _local_path(path)


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
    engine = _netcdf_engine()
    prepared = _netcdf_ready(prepare_export(ds, quantize=quantize))
    with _atomic_target(path, mode, directory=False) as tmp:
        delayed = prepared.to_netcdf(
            tmp,
            engine=engine,  # type: ignore[call-overload]
            format="NETCDF4",
            compute=False,
        )
        _compute(delayed, progress=progress)
    return _local_path(path)


# --- opening --------------------------------------------------------------------


def _zarr_consolidated(path: Path) -> bool | None:
    """Whether a local Zarr store has consolidated metadata (None: unknown)."""
    if not path.is_dir():
        return None
    if (path / ".zmetadata").exists():
        return True
    meta = path / "zarr.json"
    if meta.exists():
        with meta.open() as f:
            return json.load(f).get("consolidated_metadata") is not None
    return False


def _kind(path: PathLike) -> tuple[str, Path | str]:
    """('zarr' | 'netcdf', path) for an export, or FileNotFoundError."""
    text = os.fspath(path)
    if "://" in text:
        return ("netcdf" if text.endswith((".nc", ".nc4", ".h5")) else "zarr"), text
    local = Path(text).expanduser()
    if local.is_dir():
        if not _looks_like_zarr(local):
            raise FileNotFoundError(
                f"{local} is a folder but not a Zarr store (no zarr.json or .zgroup); "
                "was the export interrupted? Export again with xembed.export.to_zarr"
            )
        return "zarr", local
    if local.is_file():
        return "netcdf", local
    raise FileNotFoundError(
        f"no exported cube at {local}; write one with xembed.export.to_zarr(ds, path) "
        "or to_netcdf(ds, path)"
    )


def is_cube_store(path: Any) -> bool:
    """Whether ``path`` names an existing Zarr store or NetCDF file (not a site file).

    Lets ``open_embeddings(path)`` tell an export from a GeoJSON of sites.

    Examples
    --------
    >>> from xembed.export import is_cube_store
    >>> is_cube_store("no/such/place.zarr"), is_cube_store({"type": "Polygon"})
    (False, False)
    """
    if not isinstance(path, (str, os.PathLike)):
        return False
    local = Path(os.fspath(path)).expanduser()
    if _looks_like_zarr(local):
        return True
    if local.is_file():
        with local.open("rb") as f:
            magic = f.read(8)
        return magic.startswith((b"\x89HDF\r\n\x1a\n", b"CDF\x01", b"CDF\x02"))
    return False


def _open_raw(
    kind: str, path: Path | str, *, group: str | None, chunks: Any, engine: str | None
) -> xr.Dataset:
    if kind == "zarr":
        consolidated = _zarr_consolidated(path) if isinstance(path, Path) else None
        return xr.open_dataset(
            path,
            engine="zarr",
            group=group,
            chunks=chunks,
            consolidated=consolidated,
            decode_coords="all",
        )
    return xr.open_dataset(path, engine=engine, group=group, chunks=chunks, decode_coords="all")


def _dask_chunks(ds: xr.Dataset, chunks: Mapping[str, int] | int | None) -> dict[str, int]:
    """Default: all years and bands, a multiple of the stored tile near 256 px."""
    preferred = dict(ds["embeddings"].encoding.get("preferred_chunks", {}))
    out: dict[str, int] = {"year": -1, "band": -1}
    for dim in ("y", "x"):
        stored = int(preferred.get(dim, SPATIAL_CHUNK))
        out[dim] = stored * max(1, SPATIAL_CHUNK // stored)
    if chunks is None:
        return out
    if isinstance(chunks, (int, np.integer)):
        out.update(y=int(chunks), x=int(chunks))
        return out
    unknown = sorted(set(chunks) - set(out))
    if unknown:
        raise ValueError(f"chunks has unknown dimensions {unknown}; expected some of {list(out)}")
    out.update({str(k): int(v) for k, v in chunks.items()})
    return out


def _plain(value: Any) -> Any:
    """NetCDF attributes come back as numpy scalars; make them Python values."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(ds: xr.Dataset, where: str) -> xr.Dataset:
    """An opened export -> a cube: de-quantise, restore dtypes and attrs, validate."""
    if "embeddings" not in ds:
        raise SchemaError(
            f"{where} has no 'embeddings' variable (variables: {sorted(map(str, ds.data_vars))}); "
            "it is not an xembed cube"
        )
    ds.attrs = {k: _plain(v) for k, v in ds.attrs.items()}
    for var in ds.variables.values():
        var.attrs = {k: _plain(v) for k, v in var.attrs.items()}
    emb = ds["embeddings"]
    if emb.attrs.get(QUANTIZED_ATTR):
        grid_mapping = emb.encoding.get("grid_mapping")
        # The CF decoding already masked -128 to NaN and made q float32;
        # dequantize gives the same values for float q and keeps NaN.
        decoded = xr.apply_ufunc(
            schema.dequantize,
            emb,
            dask="parallelized",
            output_dtypes=[np.float32],
            keep_attrs=True,
        )
        decoded.attrs.pop(QUANTIZED_ATTR, None)
        decoded.attrs.pop(DEQUANTIZE_ATTR, None)
        decoded.encoding = {"grid_mapping": grid_mapping} if grid_mapping else {}
        ds["embeddings"] = decoded
    if "band" in ds.coords and ds["band"].dtype.kind != "U":
        # Zarr's variable-length strings come back as object or StringDType.
        names = np.array([str(b) for b in ds["band"].values.tolist()])
        ds = ds.assign_coords(band=("band", names, ds["band"].attrs))
    if ds.rio.crs is None:
        raise SchemaError(
            f"{where} has no readable CRS (no 'spatial_ref' grid mapping); it was not written "
            "by xembed.export; add one with ds.rio.write_crs('EPSG:327xx')"
        )
    return schema.validate_cube(ds)


def open_cube(
    path: PathLike,
    *,
    chunks: Mapping[str, int] | int | None = None,
    group: str | None = None,
) -> xr.Dataset:
    """Open an exported cube (Zarr or NetCDF) back as a lazy cube.

    int8 exports are de-quantised (lazily, per chunk) to float32; the schema
    is checked and the CRS is available as ``ds.rio.crs``. Also opens stores
    written by plain ``ds.to_zarr`` / ``ds.to_netcdf`` of a cube.

    Parameters
    ----------
    path : str or path
        A Zarr store (folder or URL) or a NetCDF file.
    chunks : mapping or int, optional
        Dask chunks per dimension (an int sets ``y`` and ``x``). Default: all
        years and bands, spatial tiles of about 256 pixels aligned to the
        stored chunks.
    group : str, optional
        The group of one site in a multi-site store, e.g. ``"site_3101"``.

    Returns
    -------
    xarray.Dataset
        The cube, dask-backed: ``embeddings(year, band, y, x)`` float32,
        ``coverage(y, x)``, CRS and attrs as written.

    Raises
    ------
    FileNotFoundError
        If nothing complete is at ``path``.
    xembed.errors.SchemaError
        If the store is not a cube (for a multi-site store, the message names
        its groups).

    Examples
    --------
    >>> import tempfile, os
    >>> from xembed.testing import make_cube
    >>> from xembed.export import open_cube, to_zarr
    >>> path = to_zarr(make_cube(shape=(16, 16)), os.path.join(tempfile.mkdtemp(), "c.zarr"))
    >>> cube = open_cube(path)
    >>> cube.embeddings.dims, cube.embeddings.dtype, cube.rio.crs.to_epsg()
    (('year', 'band', 'y', 'x'), dtype('float32'), 32722)
    """
    kind, where = _kind(path)
    if kind == "zarr":
        _require_zarr()
    engine = None if kind == "zarr" else _netcdf_engine()
    probe = _open_raw(kind, where, group=group, chunks=None, engine=engine)
    try:
        if "embeddings" not in probe:
            groups = _site_groups(where) if kind == "zarr" and group is None else []
            hint = (
                f"; it holds the site groups {groups}: open them with "
                f"xembed.export.open_sites(path) or open_cube(path, group={groups[0]!r})"
                if groups
                else ""
            )
            raise SchemaError(
                f"{where}{'/' + group if group else ''} has no 'embeddings' variable "
                f"(variables: {sorted(map(str, probe.data_vars))}){hint}"
            )
        dask_chunks = _dask_chunks(probe, chunks)
    finally:
        probe.close()
    ds = _open_raw(kind, where, group=group, chunks=dask_chunks, engine=engine)
    return _decode(ds, f"{where}{'/' + group if group else ''}")


# --- many sites -----------------------------------------------------------------


def _group_name(site_id: Any) -> str:
    text = str(site_id)
    if not text:
        raise SchemaError("a site id is empty; give every cube a site_id")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text)
    return name if name.startswith(_GROUP_PREFIX) else _GROUP_PREFIX + name


def _named_cubes(
    cubes: Mapping[Any, xr.Dataset] | Sequence[xr.Dataset] | xr.DataTree,
) -> dict[str, tuple[str, xr.Dataset]]:
    """{group name: (site id, cube)} from a mapping (keys are site ids), a list or a tree."""
    if isinstance(cubes, xr.DataTree):
        found = {
            node.path.strip("/"): (str(node.attrs.get("site_id", node.name)), node.to_dataset())
            for node in cubes.subtree
            if "embeddings" in node.data_vars
        }
        if not found:
            raise SchemaError("the DataTree has no group with an 'embeddings' variable")
        return found
    if isinstance(cubes, xr.Dataset):
        raise TypeError(
            "expected several cubes (a mapping {site_id: cube} or a list); "
            "for one cube use xembed.export.to_zarr"
        )
    items: list[tuple[Any, xr.Dataset]]
    if isinstance(cubes, Mapping):
        items = []
        for key, cube in cubes.items():
            if not isinstance(cube, xr.Dataset):
                raise TypeError(f"cubes[{key!r}] is a {type(cube).__name__}, not a cube Dataset")
            items.append((key, cube))
    else:
        items = []
        for i, cube in enumerate(cubes):
            if not isinstance(cube, xr.Dataset) or "site_id" not in cube.attrs:
                raise SchemaError(
                    f"cube {i} has no 'site_id' attribute to name its group; pass a mapping "
                    "{site_id: cube} instead"
                )
            items.append((cube.attrs["site_id"], cube))
    if not items:
        raise ValueError("no cubes given; pass at least one")
    out: dict[str, tuple[str, xr.Dataset]] = {}
    for site_id, cube in items:
        name = _group_name(site_id)
        if name in out:
            raise SchemaError(
                f"two cubes map to the group {name!r} (site id {site_id!r}); site ids must "
                "be unique"
            )
        schema.validate_cube(cube)
        out[name] = (str(site_id), cube)
    return out


def _root_attrs(named: Mapping[str, tuple[str, xr.Dataset]]) -> dict[str, Any]:
    return {
        "title": "AlphaEarth Foundations satellite embeddings, one group per site",
        "site_ids": [site_id for site_id, _ in named.values()],
    }


def to_datatree(
    cubes: Mapping[Any, xr.Dataset] | Sequence[xr.Dataset],
) -> xr.DataTree:
    """Many sites' cubes as one :class:`xarray.DataTree`, one group per site.

    Sites have their own grids (even their own UTM zones), so each cube is a
    group ``site_{id}`` rather than a slice of one array. Nothing is computed.

    Parameters
    ----------
    cubes : mapping or sequence of xarray.Dataset
        ``{site_id: cube}``, or cubes whose ``site_id`` attribute names them.

    Returns
    -------
    xarray.DataTree
        Root attrs: ``title`` and ``site_ids`` (in group order).

    Raises
    ------
    xembed.errors.SchemaError
        If a cube is not a cube, lacks a ``site_id`` or two share one.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> from xembed.export import to_datatree
    >>> a = make_cube(shape=(8, 8)).assign_attrs(site_id="a")
    >>> b = make_cube(shape=(6, 4), crs="EPSG:32723").assign_attrs(site_id="b")
    >>> tree = to_datatree([a, b])
    >>> sorted(tree.children), tree["site_b"].to_dataset().rio.crs.to_epsg()
    (['site_a', 'site_b'], 32723)
    """
    named = _named_cubes(cubes)
    root = xr.Dataset(attrs=_root_attrs(named))
    return xr.DataTree.from_dict({"/": root, **{name: cube for name, (_, cube) in named.items()}})


def write_sites_zarr(
    cubes: Mapping[Any, xr.Dataset] | Sequence[xr.Dataset] | xr.DataTree,
    path: PathLike,
    *,
    mode: WriteMode = "w-",
    quantize: bool = False,
    consolidated: bool = True,
    progress: bool = False,
) -> Path:
    """Write many sites' cubes to one Zarr store, one group per site, atomically.

    Parameters
    ----------
    cubes : mapping, sequence or xarray.DataTree
        As for :func:`to_datatree`, or a tree it made.
    path, mode, quantize, consolidated, progress
        As for :func:`to_zarr`. All groups are written in one dask compute
        (one progress bar).

    Returns
    -------
    pathlib.Path
        The absolute path of the store; open it with :func:`open_sites`.

    Examples
    --------
    >>> import tempfile, os
    >>> from xembed.testing import make_cube
    >>> from xembed.export import open_sites, write_sites_zarr
    >>> cubes = {"a": make_cube(shape=(8, 8)), "b": make_cube(shape=(6, 4), crs="EPSG:32723")}
    >>> path = write_sites_zarr(cubes, os.path.join(tempfile.mkdtemp(), "sites.zarr"))
    >>> tree = open_sites(path)
    >>> {name: node.to_dataset().rio.crs.to_epsg() for name, node in tree.children.items()}
    {'site_a': 32722, 'site_b': 32723}
    """
    _require_zarr()
    named = _named_cubes(cubes)
    root_attrs = dict(cubes.attrs) if isinstance(cubes, xr.DataTree) else _root_attrs(named)
    prepared = {
        name: _zarr_ready(prepare_export(cube, quantize=quantize), quantize=quantize)
        for name, (_, cube) in named.items()
    }
    tree = xr.DataTree.from_dict({"/": xr.Dataset(attrs=root_attrs), **prepared})
    with _atomic_target(path, mode, directory=True) as tmp, _quiet_zarr():
        delayed = tree.to_zarr(
            tmp,
            mode="w-",
            consolidated=consolidated,
            zarr_format=3,
            compute=False,
        )
        _compute(delayed, progress=progress)
    return _local_path(path)


def _site_groups(path: Path | str) -> list[str]:
    """Names of the child groups of a Zarr store that hold an 'embeddings' array."""
    import zarr

    root = zarr.open_group(os.fspath(path), mode="r")
    return sorted(name for name, group in root.groups() if "embeddings" in group.array_keys())


def open_sites(path: PathLike, *, chunks: Mapping[str, int] | int | None = None) -> xr.DataTree:
    """Open a store written by :func:`write_sites_zarr` as a DataTree of cubes.

    Each group is opened with :func:`open_cube` (lazy, de-quantised,
    validated, CRS restored).

    Parameters
    ----------
    path : str or path
        The Zarr store.
    chunks : mapping or int, optional
        As for :func:`open_cube`.

    Returns
    -------
    xarray.DataTree
        One child per site, ``site_{id}``, and the root attrs as written.

    Raises
    ------
    FileNotFoundError
        If no complete store is at ``path``.
    xembed.errors.SchemaError
        If the store holds no site groups.
    """
    import zarr

    kind, where = _kind(path)
    if kind != "zarr":
        raise SchemaError(
            f"{where} is not a Zarr store; multi-site exports are Zarr "
            "(write one with xembed.export.write_sites_zarr); for one cube use open_cube"
        )
    groups = _site_groups(where)
    if not groups:
        raise SchemaError(
            f"{where} holds no site groups (groups with an 'embeddings' array); for a "
            "single-cube store use xembed.export.open_cube(path)"
        )
    attrs = {k: _plain(v) for k, v in zarr.open_group(os.fspath(where), mode="r").attrs.items()}
    cubes = {name: open_cube(where, chunks=chunks, group=name) for name in groups}
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs=attrs), **cubes})
