"""GeoTIFF export for GIS users: :func:`to_geotiff` writes Cloud-Optimized GeoTIFFs.

A cube becomes one float32 COG per year with 64 bands described ``A00`` ..
``A63``; an analysis result (change, similarity, search, classes, RGBA) one
COG per year with its own bands. Every file is north up, carries the CRS, a
nodata value and the cube's attributes as GDAL metadata, and opens in QGIS,
ArcGIS or any GDAL tool as it is.

How a file is made: the values are first written, chunk by chunk in one dask
compute for all years, to a tiled staging GeoTIFF per year; GDAL's COG driver
then copies each to its place (DEFLATE with a predictor, 256 x 256 tiles,
overviews by nearest neighbour, so no embedding is averaged). Like every
export, the file (or the folder of files) is written to a hidden temporary
sibling and renamed into place only once complete; a failure leaves nothing
behind.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from xembed.errors import SchemaError
from xembed.export._store import (
    FolderKind,
    PathLike,
    WriteMode,
    atomic_target,
    local_path,
    run_compute,
)

__all__ = ["COG_OPTIONS", "looks_like_geotiff_folder", "to_geotiff"]

#: Creation options of GDAL's COG driver used for every file.
COG_OPTIONS = {
    "COMPRESS": "DEFLATE",  # read by every GDAL and GIS; ZSTD is not in all builds
    "PREDICTOR": "YES",  # floating-point predictor for floats, horizontal for integers
    "BLOCKSIZE": "256",
    "OVERVIEWS": "AUTO",
    "RESAMPLING": "NEAREST",  # averaged embeddings or class codes mean nothing
    "BIGTIFF": "IF_SAFER",
}
_RGBA_NAMES = ("red", "green", "blue", "alpha")
_SUFFIXES = (".tif", ".tiff")


def looks_like_geotiff_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding only GeoTIFFs (what mode ``"w"`` may replace)."""
    return path.is_dir() and all(
        p.is_file() and p.suffix.lower() in _SUFFIXES for p in path.iterdir()
    )


_GEOTIFF_FOLDER: FolderKind = (looks_like_geotiff_folder, "a folder of GeoTIFFs")


@dataclass(frozen=True)
class _Layers:
    """What to write: ``(year, band, y, x)`` north up, and how to describe it."""

    data: xr.DataArray
    name: str
    descriptions: list[str]
    nodata: float | None
    rgba: bool
    tags: dict[str, str]
    has_year: bool


def _as_array(obj: Any) -> tuple[xr.DataArray, dict[Hashable, Any]]:
    """The array to write and the attributes to tag the files with."""
    if isinstance(obj, xr.Dataset):
        if "embeddings" not in obj:
            names = sorted(map(str, obj.data_vars))
            example = f"ds[{names[0]!r}]" if names else "ds['name']"
            raise TypeError(
                f"to_geotiff writes a cube (a Dataset with 'embeddings') or one DataArray; this "
                f"Dataset has {names}: pass one of them, e.g. {example}"
            )
        return obj["embeddings"], {**obj.attrs, **obj["embeddings"].attrs}
    if isinstance(obj, xr.DataArray):
        return obj, dict(obj.attrs)
    raise TypeError(
        f"to_geotiff expects a cube or a DataArray with y and x dims, got {type(obj).__name__}"
    )


def _band_dim(arr: xr.DataArray) -> tuple[xr.DataArray, bool]:
    """``arr`` as ``(year, band-like, y, x)``; whether the band dim was added (length 1)."""
    extra = [d for d in arr.dims if d not in ("year", "y", "x")]
    if len(extra) > 1:
        raise ValueError(
            f"a GeoTIFF has one band dimension, but the array has {extra} besides year, y and "
            f"x; select along all but one, e.g. arr.sel({extra[0]}=...)"
        )
    added = not extra
    if added:
        arr = arr.expand_dims("band", axis=0)
    if "year" not in arr.dims:
        arr = arr.expand_dims("year", axis=0)
    return arr.transpose("year", extra[0] if extra else "band", "y", "x"), added


def _north_up(arr: xr.DataArray) -> xr.DataArray:
    """Rows north to south and columns west to east, as GIS expect."""
    if arr.sizes["y"] > 1 and arr["y"].values[0] < arr["y"].values[-1]:
        arr = arr.isel(y=slice(None, None, -1))
    if arr.sizes["x"] > 1 and arr["x"].values[0] > arr["x"].values[-1]:
        arr = arr.isel(x=slice(None, None, -1))
    return arr


def _descriptions(arr: xr.DataArray, name: str, *, added: bool, rgba: bool) -> list[str]:
    """Band descriptions: the band coordinate (A00..A63), RGBA, or the array's name."""
    band = arr.dims[1]
    if rgba:
        return list(_RGBA_NAMES)
    if added:
        return [name]
    if band in arr.coords:
        return [str(v) for v in arr[band].values.tolist()]
    return [f"{band} {i}" for i in range(arr.sizes[band])]


def _nodata(arr: xr.DataArray, *, rgba: bool) -> float | None:
    """NaN for floats; for integers the array's own nodata, else -1 (xembed's class mask)."""
    if rgba:
        return None  # the alpha band says where there is no data
    if arr.dtype.kind == "f":
        return float("nan")
    own = arr.rio.nodata
    if own is not None:
        return float(own)
    return -1.0 if arr.dtype.kind == "i" else None


def _layers(obj: Any) -> _Layers:
    arr, attrs = _as_array(obj)
    if not {"y", "x"} <= set(arr.dims):
        raise ValueError(f"a GeoTIFF needs y and x dims; the array has {arr.dims}")
    name = str(arr.name) if arr.name is not None else "values"
    has_year = "year" in arr.dims
    arr, added = _band_dim(arr)
    arr = _north_up(arr)
    rgba = arr.dims[1] == "channel" and arr.dtype == np.uint8 and arr.sizes["channel"] == 4
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f" and arr.dtype.itemsize < 4:
        arr = arr.astype(np.float32)
    return _Layers(
        data=arr,
        name=name,
        descriptions=_descriptions(arr, name, added=added, rgba=rgba),
        nodata=_nodata(arr, rgba=rgba),
        rgba=rgba,
        tags={str(k): str(v) for k, v in attrs.items() if not str(k).startswith("_")},
        has_year=has_year,
    )


def _select_year(layers: _Layers, year: int | None) -> xr.DataArray:
    data = layers.data
    if year is None:
        return data
    if not layers.has_year:
        raise ValueError(f"year={year!r} given, but {layers.name!r} has no year dim; leave it out")
    years = [int(y) for y in data["year"].values.tolist()]
    if int(year) not in years:
        raise ValueError(f"year {year!r} is not in {layers.name!r}; its years are {years}")
    return data.sel(year=[int(year)])


class _StageWriter:
    """Takes the blocks of a ``(year, band, y, x)`` array; writes each year to its file.

    dask calls ``writer[region] = block`` from its threads: one lock serialises
    GDAL, and :meth:`close` turns blocks still running after another failed
    into no-ops rather than writes into closed files.
    """

    def __init__(self, files: Sequence[Any]) -> None:
        self._files = files
        self._lock = threading.Lock()
        self._closed = False

    def __setitem__(self, key: tuple[slice, ...], block: np.ndarray) -> None:
        from rasterio.windows import Window

        years, bands, rows, cols = key
        window = Window.from_slices(rows, cols)
        indexes = list(range(bands.start + 1, bands.stop + 1))
        with self._lock:
            if self._closed:
                return
            for k, i in enumerate(range(years.start, years.stop)):
                self._files[i].write(block[k], indexes=indexes, window=window)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for f in self._files:
                f.close()


def _profile(layers: _Layers, data: xr.DataArray) -> dict[str, Any]:
    """rasterio's profile of the tiled staging GeoTIFFs."""
    crs = data.rio.crs
    if crs is None:
        raise SchemaError(
            f"{layers.name!r} has no CRS (no 'spatial_ref' grid mapping); write one with "
            "arr.rio.write_crs('EPSG:327xx') (the site's UTM zone), or compute the result from "
            "a cube that has one"
        )
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": data.sizes["x"],
        "height": data.sizes["y"],
        "count": data.sizes[data.dims[1]],
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": data.rio.transform(recalc=True),
        "nodata": layers.nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "interleave": "band",
        "BIGTIFF": "IF_NEEDED",
    }
    if layers.rgba:
        profile.update(photometric="RGB", alpha="YES")
    return profile


def _stage(layers: _Layers, data: xr.DataArray, folder: Path, *, progress: bool) -> list[Path]:
    """Every year of ``data`` as a tiled GeoTIFF in ``folder``, in one dask compute."""
    import rasterio

    profile = _profile(layers, data)
    paths = [folder / f"{i}.tif" for i in range(data.sizes["year"])]
    files = [rasterio.open(p, "w", **profile) for p in paths]
    writer = _StageWriter(files)
    try:
        for f, year in zip(files, data["year"].values.tolist(), strict=True):
            for i, text in enumerate(layers.descriptions, start=1):
                f.set_band_description(i, text)
            f.update_tags(**layers.tags, **({"year": str(year)} if layers.has_year else {}))
        # any object with __setitem__ is a target; dask's stubs say arrays only
        store = da.store(da.asarray(data.data), writer, lock=False, compute=False)  # type: ignore[arg-type]
        run_compute(store, progress=progress)
    finally:
        writer.close()
    return paths


def _check_path(path: PathLike, layers: _Layers, *, folder: bool) -> None:
    """A file name ends in .tif; a folder (one file per year) does not."""
    is_tif = Path(path).suffix.lower() in _SUFFIXES
    if folder and is_tif:
        years = [int(y) for y in layers.data["year"].values.tolist()]
        raise ValueError(
            f"{str(path)!r} names a file, but {layers.name!r} has the years {years}: pass "
            "year= for one file, or a folder path (no .tif) for one file per year"
        )
    if not folder and not is_tif:
        raise ValueError(f"{str(path)!r} does not end in .tif; name the GeoTIFF file.tif")


def to_geotiff(
    obj: xr.Dataset | xr.DataArray,
    path: PathLike,
    *,
    year: int | None = None,
    mode: WriteMode = "w-",
    progress: bool = False,
) -> Path:
    """Write a cube or a result as Cloud-Optimized GeoTIFF(s) for GIS, atomically.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        A cube (its ``embeddings``: 64 float32 bands described ``A00`` ..
        ``A63``), or a result with ``y`` and ``x`` dims and at most one
        other besides ``year``: :func:`xembed.change`, ``similarity``,
        ``search`` (one band named after the array), ``kmeans`` classes,
        ``rgb`` / ``pca_rgb`` (RGBA bytes, the fourth band alpha),
        ``pairwise_similarity`` of one year (a band per ``year_2``).
    path : str or path
        A ``.tif`` file for one year (or a result without years); a folder
        for all years, filled with ``{name}_{year}.tif``, e.g.
        ``embeddings_2024.tif``.
    year : int, optional
        The year to write to the file ``path``. Default: every year, one
        file each in the folder ``path``.
    mode : {"w-", "w"}
        ``"w-"`` fails if ``path`` exists; ``"w"`` replaces a file, or a
        folder holding only GeoTIFFs, once the new one is complete.
    progress : bool
        Show a dask progress bar in the terminal.

    Returns
    -------
    pathlib.Path
        The absolute path of the file or folder.

    Raises
    ------
    ValueError
        If ``year`` is not in the data, or the path does not fit (a
        ``.tif`` name for many years, a folder name for one file).
    xembed.errors.SchemaError
        If the data have no CRS.
    FileExistsError
        If ``path`` exists and ``mode="w-"``, or is not ours to replace.

    Notes
    -----
    Values are written exactly (float32 stays float32); no data is NaN for
    floats, ``-1`` for signed integers (the mask of :func:`xembed.kmeans`)
    and the alpha band for RGBA. Files are north up with the CRS, 256 x 256
    tiles, DEFLATE, and overviews by nearest neighbour; the cube's
    attributes (site, source, attribution) and the year are GDAL metadata.
    Everything is computed in one pass (each dask chunk once, all years).

    Examples
    --------
    >>> import tempfile, os
    >>> import rasterio
    >>> from xembed.testing import make_cube
    >>> from xembed.export import to_geotiff
    >>> cube = make_cube(years=(2020, 2021), shape=(16, 16))
    >>> path = to_geotiff(cube, os.path.join(tempfile.mkdtemp(), "site_2021.tif"), year=2021)
    >>> with rasterio.open(path) as src:
    ...     print(src.count, src.dtypes[0], src.descriptions[:2], src.crs, src.nodata)
    64 float32 ('A00', 'A01') EPSG:32722 nan
    >>> folder = to_geotiff(cube.embed.change(), os.path.join(tempfile.mkdtemp(), "change"))
    >>> sorted(p.name for p in folder.iterdir())
    ['change_2020.tif', 'change_2021.tif']
    """
    try:
        import rasterio.shutil
    except ImportError as err:  # pragma: no cover - rasterio comes with rioxarray
        raise ImportError("writing GeoTIFFs needs rasterio: pip install rasterio") from err
    layers = _layers(obj)
    data = _select_year(layers, year)
    folder = layers.has_year and year is None
    _check_path(path, layers, folder=folder)
    with atomic_target(path, mode, directory=folder, folder=_GEOTIFF_FOLDER) as tmp:
        stage = tempfile.TemporaryDirectory(prefix=f"{tmp.name}.stage-", dir=tmp.parent)
        with stage as staging:
            staged = _stage(layers, data, Path(staging), progress=progress)
            targets = [tmp]
            if folder:
                tmp.mkdir()
                targets = [tmp / f"{layers.name}_{y}.tif" for y in data["year"].values.tolist()]
            for src, dst in zip(staged, targets, strict=True):
                rasterio.shutil.copy(src, dst, driver="COG", **COG_OPTIONS)
    return local_path(path)
