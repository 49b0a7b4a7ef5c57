"""Pure analysis functions on the cube: dask-friendly, lazy unless they
return numbers. The ``.embed`` accessor wraps each one."""

from __future__ import annotations

import pandas as pd
import xarray as xr

from xembed.schema import validate_cube

__all__ = ["polygon_mean", "to_frame"]


def _embeddings_and_weights(obj: xr.Dataset | xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """The embeddings and the per-pixel weights (coverage; 1 where absent)."""
    if isinstance(obj, xr.Dataset):
        validate_cube(obj)
        emb = obj["embeddings"]
        weights = obj["coverage"] if "coverage" in obj else None
    else:
        emb = obj
        weights = obj.coords["coverage"] if "coverage" in obj.coords else None
    if weights is None:
        weights = xr.ones_like(emb.isel(year=0, band=0, drop=True), dtype="float32")
    return emb, weights.fillna(0)


def polygon_mean(obj: xr.Dataset | xr.DataArray) -> xr.DataArray:
    """Coverage-weighted mean embedding of the site, per year and band.

    Each pixel counts with the fraction of its area inside the polygon
    (``coverage``), and pixels without data (NaN) are left out of both the
    sum and the weights: the same definition as exactextract's ``mean``.
    A year without any valid pixel gives NaN.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        A cube (``embeddings`` and ``coverage``), or an embeddings array
        (weighted by a ``coverage`` coordinate if it has one, else equally).

    Returns
    -------
    xarray.DataArray
        ``(year, band)``, lazy if the cube is.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> cube = make_cube(years=(2020, 2021), shape=(8, 8))
    >>> mean = polygon_mean(cube)
    >>> mean.dims, mean.shape
    (('year', 'band'), (2, 64))
    """
    emb, weights = _embeddings_and_weights(obj)
    mean = emb.weighted(weights).mean(("y", "x"))
    mean.name = "polygon_mean"
    mean.attrs = {"long_name": "coverage-weighted polygon mean embedding", "units": "1"}
    return mean


def to_frame(obj: xr.Dataset | xr.DataArray) -> pd.DataFrame:
    """The original notebook's table: one row per year, ``site_id, year, A00..A63``.

    Computes the polygon means (its job is to return numbers).

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> df = to_frame(make_cube(years=(2020, 2021), shape=(8, 8)))
    >>> df.shape, list(df.columns[:3])
    ((2, 66), ['site_id', 'year', 'A00'])
    """
    mean = polygon_mean(obj).compute()
    table = pd.DataFrame(
        mean.to_numpy(), columns=[str(b) for b in mean["band"].values]
    ).astype("float64")
    site_id = obj.attrs.get("site_id", "")
    table.insert(0, "year", mean["year"].to_numpy().astype(int))
    table.insert(0, "site_id", _parse_id(site_id))
    return table


def _parse_id(site_id: object) -> object:
    """Ids are kept as text in attrs (NetCDF-safe); integer-looking ones come back as int."""
    text = str(site_id)
    return int(text) if text.lstrip("-").isdigit() else text
