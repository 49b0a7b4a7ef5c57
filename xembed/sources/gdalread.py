"""The GDAL read path: files that do not fit the range reader's layout.

The mirror's files are read by byte ranges (:mod:`xembed.sources.tiff`);
a file with another layout (other compression, a predictor, pixel-interleaved
bands, strips, no EPSG code) is read here through GDAL (``/vsicurl/`` for
remote files), with the same results and the same retry budget.

xembed's loop is the only one that retries: GDAL's own HTTP retries are off
(``GDAL_HTTP_MAX_RETRY=0``), so the budget does not multiply, and the loop
also covers what GDAL does not retry. Each retry opens the file with
``CPL_VSIL_CURL_NON_CACHED`` set for it, because a failure can poison
``/vsicurl/``'s process-wide cache: a failed ``HEAD`` is remembered as "no
such file", and a body cut short is remembered as the end of the file, so
without this a retry would fail again without sending a request. A header
is checked (CRS present, 64 int8 bands) every time the file is opened.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from xembed.schema import BANDS
from xembed.sources.ranges import Invalid, Refused, Remote, retrying, transient_status
from xembed.sources.retry import RetryPolicy

__all__ = ["GDAL_ENV", "read_header", "read_window"]

_T = TypeVar("_T")

# GDAL settings for every read (timeouts come from the RetryPolicy):
# - no directory listings (one request per file header instead of many);
# - GDAL does not retry: xembed's loop does (one budget, and it also covers
#   truncated bodies, which GDAL takes for the end of the file);
# - parallel range requests, consecutive ranges merged;
# - a tile that cannot be read is an error, never a block of zeros (GDAL's
#   GTIFF_IGNORE_READ_ERRORS=YES would fill it with zeros: pin it off).
GDAL_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff",
    "GDAL_HTTP_MAX_RETRY": "0",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GTIFF_IGNORE_READ_ERRORS": "NO",
}


def _causes(err: BaseException) -> str:
    """GDAL's messages behind a rasterio error, outermost first (rasterio 1.4 chains them)."""
    messages: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if text and "See previous exception" not in text and text not in messages:
            messages.append(text)
        current = current.__cause__ or current.__context__
    return "; ".join(messages) or type(err).__name__


def _refused(cause: str) -> bool:
    """The server refused the file (HTTP 4xx but 408/429): retrying cannot help."""
    codes = [int(c) for c in re.findall(r"HTTP response code: (\d{3})", cause)]
    return any(400 <= c < 500 and not transient_status(c) for c in codes)


def _retrying(
    href: str, path: str, what: str, policy: RetryPolicy, action: Callable[[Mapping[str, str]], _T]
) -> _T:
    """Run ``action(gdal_env)`` on ``href`` (GDAL ``path``), retrying remote failures.

    Local files are tried once: their failures (truncated, corrupt) are permanent.
    """
    import rasterio
    from rasterio._err import CPLE_BaseError

    remote = path.startswith("/vsicurl/")

    def attempt(number: int) -> _T:
        env = {**GDAL_ENV, **policy.gdal_options()} if remote else dict(GDAL_ENV)
        if number > 1:
            # Bypass, and on close drop, what /vsicurl/ cached for this file.
            env["CPL_VSIL_CURL_NON_CACHED"] = path
        try:
            return action(env)
        except (rasterio.errors.RasterioError, CPLE_BaseError) as err:
            cause = _causes(err)
        if remote and "not recognized as being in a supported" in cause:
            cause += " (GDAL says so of a URL whose header it could not fetch)"
        # Raised outside the except block, so not chained: rasterio's exceptions do
        # not survive the pickling dask.distributed does to a task's error.
        raise Refused(cause) if remote and _refused(cause) else Invalid(cause)

    return retrying(Remote(href, path if remote else None), what, policy, attempt)


def read_header(href: str, path: str, policy: RetryPolicy) -> tuple[str, tuple, int, int]:
    """``(crs, geotransform, width, height)`` of a file, checked to be 64 int8 bands."""
    import rasterio

    def header(env: Mapping[str, str]) -> tuple[str, tuple, int, int]:
        with rasterio.Env(**env), rasterio.open(path) as src:
            if src.crs is None:
                raise Invalid("the header has no coordinate reference system (cut short?)")
            if src.count != len(BANDS) or src.dtypes[0] != "int8":
                raise Invalid(
                    f"{src.count} bands of {src.dtypes[0]}; expected {len(BANDS)} int8 bands "
                    "as in the embedding mirror"
                )
            t = src.transform
            return src.crs.to_string(), (t.a, t.b, t.c, t.d, t.e, t.f), src.width, src.height

    return _retrying(href, path, "header", policy, header)


def read_window(
    href: str, path: str, bands: Any, rows: tuple[int, int], cols: tuple[int, int], policy
) -> np.ndarray:
    """The int8 ``(bands, rows, cols)`` window of a file, through GDAL."""
    import rasterio
    from rasterio.windows import Window

    (r0, r1), (c0, c1) = rows, cols
    window = Window(c0, r0, c1 - c0, r1 - r0)
    indexes = [int(b) + 1 for b in bands]

    def read(env: Mapping[str, str]) -> np.ndarray:
        with rasterio.Env(**env), rasterio.open(path) as src:
            return src.read(indexes=indexes, window=window)

    what = f"window rows {r0}:{r1}, cols {c0}:{c1} ({len(indexes)} bands)"
    return _retrying(href, path, what, policy, read)
