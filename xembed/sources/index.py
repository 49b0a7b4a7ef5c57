"""A mirror's index: the kept copy of a remote index, and the checks of its columns.

The mirror's ``aef_index.parquet`` grows when a year is published. A copy of
a remote index is kept under ``cache_dir() / "index"`` (so a new process
opens sites without downloading it) together with the server's validators
(``ETag``, ``Last-Modified``) and the time it was last checked. It is
revalidated with a conditional request (``If-None-Match`` /
``If-Modified-Since``; ``304 Not Modified`` keeps it) once it is older than
:data:`MAX_AGE` (a day), or at once when a caller needs a year the copy lacks
(unless it was checked within :data:`MIN_AGE`). The reader of the mirror
(:mod:`xembed.sources.cog`) owns the retry policy and the URL forms; this
module takes them as arguments.

:func:`check_table` turns the table read into the one the reader uses, and
refuses, naming the index, the column and a row, what a hand-edited or
damaged index can hold: text where numbers belong, years that are not whole
numbers, footprints that are not geometries.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import io
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely

from xembed._util import atomic_write, cache_dir
from xembed.errors import ReadError, SourceError
from xembed.sources.common import INDEX_COLUMNS
from xembed.sources.ranges import (
    LOOPBACK_HOSTS,
    gave_up_message,
    transient_status,
    wait_before_retry,
)
from xembed.sources.retry import RetryPolicy

__all__ = [
    "MAX_AGE",
    "MIN_AGE",
    "IndexCopy",
    "Reply",
    "check_table",
    "current",
    "http_get",
    "is_fresh",
    "kept_folder",
    "now",
    "parse",
    "read_copy",
    "remote_table",
    "write_copy",
]

logger = logging.getLogger(__name__)

#: Seconds a kept copy of a remote index is used without asking the server.
MAX_AGE = 86_400.0
#: Seconds within which a copy just checked is not checked again for a missing year.
MIN_AGE = 60.0

_MAGIC = b"XIDX1\n"
_BOUNDS = [c for c in INDEX_COLUMNS if c.startswith(("utm_", "wgs84_")) and c != "utm_zone"]
_FIX = "use the mirror's aef_index.parquet unchanged (copy it again from the mirror)"


def now() -> float:
    """The clock of revalidation (seconds since the epoch); tests replace it."""
    return time.time()


def kept_folder() -> Path:
    """Where copies of remote indexes are kept: ``cache_dir() / "index"``."""
    return cache_dir() / "index"


def is_fresh(checked: float, max_age: float = MAX_AGE) -> bool:
    """Whether a copy checked at ``checked`` may be used without asking the server.

    A check time in the future (the clock was set back) counts as stale.

    Examples
    --------
    >>> is_fresh(now() - 3600), is_fresh(now() - 2 * MAX_AGE), is_fresh(now() + 3600)
    (True, False, False)
    """
    return 0.0 <= now() - checked < max_age


@dataclass(frozen=True)
class IndexCopy:
    """The bytes of a remote index, its validators and when the server last vouched for them."""

    data: bytes
    etag: str | None
    last_modified: str | None
    checked: float

    @functools.cached_property
    def digest(self) -> str:
        """BLAKE2b of ``data``: the copy's checksum, and its identity for the parsed table."""
        return hashlib.blake2b(self.data, digest_size=16).hexdigest()


def write_copy(path: Path, copy: IndexCopy) -> None:
    """Keep ``copy`` at ``path`` atomically: a header line (JSON) then the bytes."""
    meta = {
        "etag": copy.etag,
        "last_modified": copy.last_modified,
        "checked": copy.checked,
        "length": len(copy.data),
        "digest": copy.digest,
    }
    head = _MAGIC + json.dumps(meta).encode() + b"\n"
    atomic_write(path, lambda tmp: tmp.write_bytes(head + copy.data))


def read_copy(path: Path) -> IndexCopy | None:
    """The copy kept at ``path``; None if there is none, and for a damaged one (deleted)."""
    try:
        blob = path.read_bytes()
    except OSError:  # none (most often), or unreadable: fetch it
        return None
    try:
        if not blob.startswith(_MAGIC):
            raise ValueError("not a kept index")
        line, _, data = blob[len(_MAGIC) :].partition(b"\n")
        meta = json.loads(line)
        copy = IndexCopy(data, meta["etag"], meta["last_modified"], float(meta["checked"]))
        if len(data) != meta["length"] or copy.digest != meta["digest"]:
            raise ValueError("cut short or corrupt")
    except (ValueError, KeyError, TypeError) as err:  # json errors are ValueErrors
        logger.info("the kept index %s is unusable (%s); fetching it afresh", path, err)
        path.unlink(missing_ok=True)
        return None
    return copy


@dataclass(frozen=True)
class Reply:
    """What a GET answered: status (200 or 304), body and validators."""

    status: int
    data: bytes
    etag: str | None
    last_modified: str | None


def _attempt(opener: Any, request: urllib.request.Request, policy: RetryPolicy) -> Reply:
    """One GET; raises HTTPError (304 too), OSError or HTTPException on failure."""
    with opener.open(request, timeout=policy.timeout) as response:
        data = response.read()  # http.client.IncompleteRead if cut short
        expected = response.headers.get("Content-Length")
        if expected is not None and len(data) != int(expected):
            raise http.client.IncompleteRead(data, int(expected) - len(data))
        headers = response.headers
        return Reply(200, bytes(data), headers.get("ETag"), headers.get("Last-Modified"))


def http_get(
    url: str, target: str, policy: RetryPolicy, headers: Mapping[str, str] | None = None
) -> Reply:
    """GET ``target`` (the HTTPS form of ``url``), retrying transient failures per ``policy``.

    A ``304 Not Modified`` (to conditional ``headers``) is a :class:`Reply`
    with status 304 and no body.

    Raises
    ------
    SourceError
        If the server refuses the URL (HTTP 4xx other than 408 and 429).
    ReadError
        If the download kept failing (5xx, 429, timeouts, resets, short bodies).
    """
    # A local server is reached directly, never through a proxy set in the environment.
    local = urllib.parse.urlsplit(target).hostname in LOOPBACK_HOSTS
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if local else []))
    request = urllib.request.Request(target, headers=dict(headers or {}))
    started = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        status = None
        try:
            return _attempt(opener, request, policy)
        except urllib.error.HTTPError as err:
            err.close()
            status, cause = err.code, f"HTTP {err.code} {err.reason}"
            if status == 304:
                return Reply(304, b"", err.headers.get("ETag"), err.headers.get("Last-Modified"))
        except (OSError, http.client.HTTPException) as err:  # timeouts, resets, short bodies
            cause = f"{type(err).__name__}: {err}"
        if status is not None and not transient_status(status):
            raise SourceError(
                f"could not read {url!r}: {cause}; check that root= is the mirror's top "
                "folder (the one holding aef_index.parquet) and that it is public"
            )
        if attempt < policy.attempts:
            wait_before_retry(policy, attempt, f"the file {url}", cause, logger)
    message = gave_up_message(f"the file {url!r}", cause, policy.attempts, started)
    raise ReadError(message, href=url, attempts=policy.attempts)


def current(
    url: str, target: str, path: Path, policy: RetryPolicy, *, max_age: float = MAX_AGE
) -> IndexCopy:
    """The index at ``url``: the copy kept at ``path`` if checked within ``max_age``.

    Otherwise the server is asked, conditionally when there is a copy: a 304
    keeps it (with a new check time), a 200 replaces it. The copy is written
    back either way, so other processes sharing the folder see the check.
    """
    copy = read_copy(path)
    if copy is not None and is_fresh(copy.checked, max_age):
        return copy
    conditions = {}
    if copy is not None and copy.etag:
        conditions["If-None-Match"] = copy.etag
    if copy is not None and copy.last_modified:
        conditions["If-Modified-Since"] = copy.last_modified
    reply = http_get(url, target, policy, conditions)
    if reply.status == 304 and copy is not None:
        logger.info("the mirror index %s is unchanged (HTTP 304); keeping the copy", url)
        copy = replace(copy, checked=now())
    else:
        copy = IndexCopy(reply.data, reply.etag, reply.last_modified, now())
    try:
        write_copy(path, copy)
    except OSError as err:  # a full disk or a read-only folder: this process goes on
        logger.warning("could not keep the mirror index in %s (%s)", path, err)
    return copy


# Remote indexes read by this process: location -> (digest of the bytes, check time, table).
_TABLES: dict[str, tuple[str, float, pd.DataFrame]] = {}
_TABLES_LOCK = threading.Lock()
_TABLES_KEPT = 8  # the most recently read ones, as functools.lru_cache(8) did


def remote_table(
    url: str, target: str, path: Path, policy: RetryPolicy, max_age: float = MAX_AGE
) -> pd.DataFrame:
    """The checked index at ``url`` (see :func:`current`), parsed once per version."""
    known = _TABLES.get(url)
    if known is not None and is_fresh(known[1], max_age):
        return known[2]
    with _TABLES_LOCK:  # one check at a time: threads that waited find it done
        known = _TABLES.get(url)
        if known is not None and is_fresh(known[1], max_age):
            return known[2]
        copy = current(url, target, path, policy, max_age=max_age)
        if known is not None and known[0] == copy.digest:
            table = known[2]  # 304, or the same bytes: the parsed table stands
        else:
            try:
                table = parse(url, "parquet", io.BytesIO(copy.data))
            except SourceError:
                path.unlink(missing_ok=True)  # the next attempt downloads it again
                raise
        _TABLES.pop(url, None)
        _TABLES[url] = (copy.digest, copy.checked, table)
        while len(_TABLES) > _TABLES_KEPT:
            _TABLES.pop(next(iter(_TABLES)))
    return table


# ---------------------------------------------------------------------- checks


def parse(location: str, fmt: str, source: str | io.BytesIO) -> pd.DataFrame:
    """Read an index (``fmt`` "parquet" or "csv") and :func:`check_table` it."""
    try:
        table = pd.read_parquet(source) if fmt == "parquet" else pd.read_csv(source)
    except Exception as err:
        raise SourceError(f"could not read the mirror index {location!r}: {err}; {_FIX}") from err
    return check_table(table, location, fmt)


def _shown(value: Any) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse(location: str, column: str, raw: pd.Series, bad: np.ndarray, expected: str) -> None:
    rows = np.flatnonzero(bad)
    if rows.size:
        first = int(rows[0])
        value = raw.iloc[first]
        others = f" (and {rows.size - 1} more rows)" if rows.size > 1 else ""
        kind = " (text)" if isinstance(value, str) and column != "geometry" else ""
        raise SourceError(
            f"mirror index {location!r}: column {column!r} holds {_shown(value)}{kind} in "
            f"row {first}{others}, not {expected}; {_FIX}"
        )


def _as_float(value: Any) -> float:
    if isinstance(value, bool | bytes | str):  # not numbers, whatever float() makes of them
        return np.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def _numbers(table: pd.DataFrame, column: str, location: str, *, whole: bool) -> np.ndarray:
    """The column as finite numbers (whole numbers for ``whole``), or a SourceError."""
    raw = table[column]
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        values = raw.to_numpy(dtype=float)
    else:  # text, mixed or objects: element by element, so nothing raises on the way
        values = np.array([_as_float(v) for v in raw], dtype=float)
    bad = ~np.isfinite(values)
    expected = "a number"
    if whole:
        bad |= np.where(bad, False, values != np.round(values))
        expected = "a whole number (years are integers such as 2024)"
    _refuse(location, column, raw, bad, expected)
    return values.astype(np.int64) if whole else values


def _footprints(table: pd.DataFrame, location: str, fmt: str) -> np.ndarray:
    """WGS84 footprints: the ``geometry`` column, else (or where empty) the bounds' box."""
    boxes = shapely.box(
        table["wgs84_west"], table["wgs84_south"], table["wgs84_east"], table["wgs84_north"]
    )
    if "geometry" not in table.columns:
        return np.asarray(boxes)
    raw = table["geometry"]
    parse = shapely.from_wkb if fmt == "parquet" else shapely.from_wkt
    values = raw.to_numpy(dtype=object)
    empty = pd.isna(raw).to_numpy()
    if fmt != "parquet":
        values = np.where(empty, None, values.astype(str))
    try:
        shapes = parse(values)
    except (shapely.errors.ShapelyError, TypeError, ValueError):
        bad = np.zeros(len(values), dtype=bool)
        for i, value in enumerate(values):
            try:
                parse(value)
            except (shapely.errors.ShapelyError, TypeError, ValueError):
                bad[i] = True
        kind = "WKB" if fmt == "parquet" else "WKT"
        _refuse(location, "geometry", raw, bad, f"a {kind} footprint polygon")
        raise  # pragma: no cover  (the whole column failed, so some row did)
    return np.where(shapely.is_missing(shapes), boxes, shapes)


def check_table(table: pd.DataFrame, location: str, fmt: str) -> pd.DataFrame:
    """The index as the reader uses it: checked columns, whole years, ``footprint``.

    Raises
    ------
    SourceError
        Naming ``location`` and the column, for missing columns, text or NaN
        in the bounds, years that are not whole numbers, and ``geometry``
        values that are not footprints.

    Examples
    --------
    >>> from xembed.sources.common import INDEX_COLUMNS
    >>> row = dict.fromkeys(INDEX_COLUMNS, 0.0) | {"path": "a.tiff", "crs": "EPSG:32722"}
    >>> table = pd.DataFrame([row | {"year": 2020.0, "utm_zone": "22S"}])
    >>> check_table(table, "i.csv", "csv")["year"].tolist()
    [2020]
    >>> check_table(table.assign(year=2020.7), "i.csv", "csv")
    Traceback (most recent call last):
    ...
    xembed.errors.SourceError: mirror index 'i.csv': column 'year' holds 2020.7 in row 0, ...
    """
    missing = [c for c in INDEX_COLUMNS if c not in table.columns]
    if missing:
        raise SourceError(
            f"mirror index {location!r} lacks the columns {missing}; expected "
            f"{list(INDEX_COLUMNS)} (use the mirror's aef_index.parquet unchanged)"
        )
    table = table.copy()
    table["year"] = _numbers(table, "year", location, whole=True)
    for column in _BOUNDS:
        table[column] = _numbers(table, column, location, whole=False)
    footprint = _footprints(table, location, fmt)
    return table.drop(columns=["geometry"], errors="ignore").assign(footprint=footprint)
