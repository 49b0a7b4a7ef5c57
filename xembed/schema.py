"""The one cube schema: band names, constants, validation and (de)quantisation.

Every source returns an :class:`xarray.Dataset` with

- ``embeddings(year, band, y, x)`` float32, lazy (dask) until asked for;
- ``coverage(y, x)`` float32, the fraction of each pixel inside the site;
- coords ``year`` (int), ``band`` (``"A00"``..``"A63"``), ``y`` (descending)
  and ``x`` pixel centres in metres of the site's UTM zone, and the CRS as a
  CF ``spatial_ref`` grid mapping (``ds.rio.crs`` works).
"""

from __future__ import annotations

import datetime as _dt

import numpy as np
import xarray as xr

from xembed.errors import SchemaError

__all__ = [
    "ATTRIBUTION",
    "BANDS",
    "COLLECTION",
    "FIRST_YEAR",
    "LICENSE",
    "NODATA",
    "PIXEL_SIZE",
    "dequantize",
    "quantize",
    "validate_cube",
]

#: The 64 embedding band names, ``A00`` .. ``A63``.
BANDS: tuple[str, ...] = tuple(f"A{i:02d}" for i in range(64))
#: int8 value that marks a pixel without data, in all bands at once.
NODATA = -128
#: First year of the annual collection.
FIRST_YEAR = 2017
#: Native pixel size in metres.
PIXEL_SIZE = 10.0
COLLECTION = "GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL"
LICENSE = "CC-BY-4.0"
ATTRIBUTION = (
    "The AlphaEarth Foundations Satellite Embedding dataset is produced by "
    "Google and Google DeepMind."
)


def last_possible_year() -> int:
    """The latest year that could exist: the current calendar year."""
    return _dt.date.today().year


def dequantize(q: np.ndarray) -> np.ndarray:
    """Turn the mirror's int8 values into float32 embeddings.

    The official formula ``v = sign(q) * (q / 127.5) ** 2``, after masking the
    nodata value ``-128`` to NaN (unmasked it would become -1.0079).

    Examples
    --------
    >>> dequantize(np.array([-128, -127, 0, 64, 127], dtype=np.int8))
    array([        nan, -0.99217224,  0.        ,  0.25196466,  0.99217224],
          dtype=float32)
    """
    q = np.asarray(q)
    if q.dtype == np.int8:
        # A 256-entry table indexed by the byte: the formula's own float32 values
        # (bit for bit), ~4x faster than evaluating it per pixel.
        return np.asarray(DEQUANTIZE_TABLE.take(q.view(np.uint8)))
    return _dequantize_formula(q)


def _dequantize_formula(q: np.ndarray) -> np.ndarray:
    f = q.astype(np.float32) / np.float32(127.5)
    v = np.sign(f) * f * f
    return np.where(q == NODATA, np.float32(np.nan), v).astype(np.float32, copy=False)


#: dequantize() of every int8 value, indexed by its byte (``q.view(np.uint8)``);
#: read-only. The one table the reader and the sample writer both use.
DEQUANTIZE_TABLE = _dequantize_formula(np.arange(256, dtype=np.uint8).view(np.int8))
DEQUANTIZE_TABLE.flags.writeable = False


def quantize(v: np.ndarray) -> np.ndarray:
    """Inverse of :func:`dequantize`: float embeddings to int8, NaN to -128.

    ``q = round(sign(v) * sqrt(|v|) * 127.5)``, clipped to -127..127.

    Examples
    --------
    >>> quantize(np.array([np.nan, -1.0, 0.0, 0.25, 1.0]))
    array([-128, -127,    0,   64,  127], dtype=int8)
    >>> bool((quantize(dequantize(np.arange(-127, 128))) == np.arange(-127, 128)).all())
    True
    """
    v = np.asarray(v, dtype=np.float64)
    q = np.clip(np.round(np.sign(v) * np.sqrt(np.abs(v)) * 127.5), -127, 127)
    return np.where(np.isnan(v), NODATA, q).astype(np.int8)


def validate_cube(ds: xr.Dataset) -> xr.Dataset:
    """Check that ``ds`` follows the cube schema; return it unchanged.

    Raises
    ------
    SchemaError
        Naming the first thing that is missing or wrong.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> validate_cube(make_cube()) is not None
    True
    """
    if not isinstance(ds, xr.Dataset):
        raise SchemaError(
            f"expected an xarray.Dataset with an 'embeddings' variable, got "
            f"{type(ds).__name__}; open one with xembed.open_embeddings(...)"
        )
    if "embeddings" not in ds:
        raise SchemaError(
            f"dataset has no 'embeddings' variable (variables: {sorted(map(str, ds.data_vars))}); "
            "open one with xembed.open_embeddings(...)"
        )
    dims = ds["embeddings"].dims
    if dims != ("year", "band", "y", "x"):
        raise SchemaError(
            f"'embeddings' has dims {dims}, expected ('year', 'band', 'y', 'x'); "
            "use .transpose('year', 'band', 'y', 'x')"
        )
    unknown = sorted(set(map(str, ds["band"].values)) - set(BANDS))
    if unknown:
        raise SchemaError(
            f"unknown band names {unknown} in the 'band' coordinate; expected names from "
            "A00..A63 (xembed.BANDS): select known bands with ds.sel(band=[...]), or relabel "
            "a full 64-band cube with ds.assign_coords(band=list(xembed.BANDS))"
        )
    if "coverage" in ds and ds["coverage"].dims != ("y", "x"):
        raise SchemaError(f"'coverage' has dims {ds['coverage'].dims}, expected ('y', 'x')")
    return ds
