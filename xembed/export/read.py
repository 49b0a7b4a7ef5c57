"""Reading exports back: :func:`is_cube_store` and :func:`open_cube`.

:func:`open_cube` opens a Zarr store or NetCDF file lazily, de-quantises int8
embeddings and checks the cube schema.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from xembed import schema
from xembed.errors import SchemaError
from xembed.export._store import (
    DEQUANTIZE_ATTR,
    GDAL_CRS_ATTR,
    ORIGINAL_LONG_NAME,
    QUANTIZED_ATTR,
    QUANTIZED_NAME,
    SPATIAL_CHUNK,
    PathLike,
    looks_like_zarr,
    netcdf_engine,
    require_zarr,
)
from xembed.sources.common import normalize_chunks

__all__ = ["is_cube_store", "open_cube"]


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


def store_kind(path: PathLike) -> tuple[str, Path | str]:
    """('zarr' | 'netcdf', path) for an export, or FileNotFoundError."""
    text = os.fspath(path)
    if "://" in text:
        return ("netcdf" if text.endswith((".nc", ".nc4", ".h5")) else "zarr"), text
    local = Path(text).expanduser()
    if local.is_dir():
        if not looks_like_zarr(local):
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
    if looks_like_zarr(local):
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
    name = QUANTIZED_NAME if QUANTIZED_NAME in ds else "embeddings"
    preferred = dict(ds[name].encoding.get("preferred_chunks", {}))
    default: dict[str, int] = {"year": -1, "band": -1}
    for dim in ("y", "x"):
        stored = int(preferred.get(dim, SPATIAL_CHUNK))
        default[dim] = stored * max(1, SPATIAL_CHUNK // stored)
    return normalize_chunks(chunks, default=default)


def plain(value: Any) -> Any:
    """NetCDF attributes come back as numpy scalars; make them Python values."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(ds: xr.Dataset, where: str) -> xr.Dataset:
    """An opened export -> a cube: de-quantise, restore dtypes and attrs, validate."""
    if QUANTIZED_NAME in ds:
        ds = ds.rename_vars({QUANTIZED_NAME: "embeddings"})
    if "embeddings" not in ds:
        raise SchemaError(
            f"{where} has no 'embeddings' variable (variables: {sorted(map(str, ds.data_vars))}); "
            "it is not an xembed cube"
        )
    ds.attrs = {k: plain(v) for k, v in ds.attrs.items()}
    for var in ds.variables.values():
        var.attrs = {k: plain(v) for k, v in var.attrs.items() if k != GDAL_CRS_ATTR}
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
        for attr in (QUANTIZED_ATTR, DEQUANTIZE_ATTR, "long_name"):
            decoded.attrs.pop(attr, None)
        if ORIGINAL_LONG_NAME in decoded.attrs:
            decoded.attrs["long_name"] = decoded.attrs.pop(ORIGINAL_LONG_NAME)
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


def site_groups(path: Path | str) -> list[str]:
    """Names of the child groups of a Zarr store that hold an 'embeddings' array."""
    import zarr

    root = zarr.open_group(os.fspath(path), mode="r")
    return sorted(
        name
        for name, group in root.groups()
        if {"embeddings", QUANTIZED_NAME} & set(group.array_keys())
    )


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
    kind, where = store_kind(path)
    if kind == "zarr":
        require_zarr()
    engine = None if kind == "zarr" else netcdf_engine()
    probe = _open_raw(kind, where, group=group, chunks=None, engine=engine)
    try:
        if "embeddings" not in probe and QUANTIZED_NAME not in probe:
            groups = site_groups(where) if kind == "zarr" and group is None else []
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
