"""Byte ranges of mirror files, fetched concurrently, checked, and retried.

One code path reads local files (``os.pread``) and remote ones (HTTP range
requests with ``urllib3``), so local reads test the remote path's logic.

- Every response is checked against what it declared: the status (206 for a
  range), ``Content-Range`` (the range asked for, and the file size seen when
  the header was read) and the body length. A short or inconsistent answer is
  a failure, never data.
- Remote failures (HTTP 5xx, 408, 429, timeouts, resets, short bodies, bytes
  that do not decode) are retried per the :class:`~xembed.sources.retry.RetryPolicy`
  the caller passes, each request with its own budget; then :class:`ReadError`
  names the file. Other 4xx answers fail at once. Local failures are not
  retried (a truncated file stays truncated).
- Requests run on one process-wide thread pool, which bounds the requests in
  flight (:func:`set_max_requests`; default 64, environment variable
  ``XEMBED_MAX_REQUESTS``), so a batch on many threads cannot open
  thousands of connections.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

from xembed.errors import ReadError
from xembed.sources.retry import RetryPolicy, env_number

__all__ = [
    "DEFAULT_MAX_REQUESTS",
    "LOOPBACK_HOSTS",
    "Invalid",
    "Job",
    "NeedMore",
    "Refused",
    "Remote",
    "fetch_jobs",
    "fetch_prefixes",
    "gave_up_message",
    "max_requests",
    "merge_ranges",
    "retrying",
    "set_max_requests",
    "transient_status",
    "wait_before_retry",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Requests in flight per process unless ``XEMBED_MAX_REQUESTS`` or
#: :func:`set_max_requests` says otherwise.
DEFAULT_MAX_REQUESTS = 64
#: Hosts reached directly, never through a proxy the environment sets.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Invalid(Exception):
    """Bytes arrived whole but are unusable (a header that does not parse, a tile that
    does not decode): retried like a failed request for remote files."""


class NeedMore(Invalid):
    """A header parser needs the bytes up to ``stop`` (exclusive) to finish."""

    def __init__(self, stop: int) -> None:
        super().__init__(f"the header needs bytes up to {stop}")
        self.stop = stop


class Refused(Exception):
    """The server refused the request (HTTP 4xx but 408/429): retrying cannot help."""


@dataclass(frozen=True)
class Remote:
    """Where a file's bytes come from: ``url`` for HTTP, else the local file ``href``.

    ``size`` and ``validator`` (the ETag or Last-Modified) are those the
    header response declared: every later response must agree on the size.
    """

    href: str
    url: str | None = None
    size: int | None = None
    validator: str | None = None


@dataclass(frozen=True)
class Job:
    """One range to fetch: ``consume(data)`` receives exactly ``length`` bytes.

    ``consume`` may raise :class:`Invalid` (e.g. a tile that does not decode):
    the range is then fetched again, within the budget.
    """

    source: Remote
    start: int
    length: int
    consume: Callable[[bytes], None]
    what: str


# ----------------------------------------------------------------------------- the bound

_lock = threading.Lock()
_setting: int | None = None
_executor: ThreadPoolExecutor | None = None
_pools: dict[str | None, Any] = {}  # proxy URL (None: direct) -> urllib3 manager


def max_requests() -> int:
    """Requests in flight allowed per process (:func:`set_max_requests`, else
    ``XEMBED_MAX_REQUESTS``, else 64).

    Examples
    --------
    >>> max_requests()
    64
    """
    if _setting is not None:
        return _setting
    value = env_number("XEMBED_MAX_REQUESTS", DEFAULT_MAX_REQUESTS, int)
    if value < 1:
        raise ValueError(
            f"environment variable XEMBED_MAX_REQUESTS={value} must be a whole number >= 1, "
            f"e.g. {DEFAULT_MAX_REQUESTS}"
        )
    return int(value)


def set_max_requests(n: int | None) -> None:
    """Bound the requests to the mirror in flight at once in this process.

    Parameters
    ----------
    n : int or None
        At most this many requests run at once, over all cubes, threads and
        files (default 64); ``None`` goes back to ``XEMBED_MAX_REQUESTS`` or
        the default. Reads already running finish under the old bound.

    Examples
    --------
    >>> from xembed.sources.cog import set_max_requests
    >>> set_max_requests(16)
    >>> max_requests()
    16
    >>> set_max_requests(None)
    """
    global _setting, _executor
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"max requests must be a whole number >= 1 (or None), not {n!r}")
    with _lock:
        _setting = n
        old, _executor = _executor, None
    if old is not None:
        old.shutdown(wait=False)


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_requests(), thread_name_prefix="xembed-fetch")
        return _executor


def _http(url: str) -> Any:
    """The connection pools for ``url``: direct, or through the proxy the environment sets."""
    import urllib3

    parts = urllib.parse.urlsplit(url)
    proxy = None
    if parts.hostname not in LOOPBACK_HOSTS and not urllib.request.proxy_bypass(
        parts.hostname or ""
    ):
        proxy = urllib.request.getproxies().get(parts.scheme)
    with _lock:
        if proxy not in _pools:
            # Retries are xembed's (one budget); connections kept per host up to the bound.
            options: dict[str, Any] = {"maxsize": max_requests(), "retries": False, "block": False}
            _pools[proxy] = (
                urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
            )
        return _pools[proxy]


def _forget_after_fork() -> None:
    global _executor, _pools, _lock
    _lock, _executor, _pools = threading.Lock(), None, {}  # threads do not survive a fork


os.register_at_fork(after_in_child=_forget_after_fork)


# ----------------------------------------------------------------------------- retries


def transient_status(status: int) -> bool:
    """Worth retrying: server errors, "too many requests", request timeouts.

    >>> transient_status(503), transient_status(429), transient_status(404)
    (True, True, False)
    """
    return status >= 500 or status in (408, 429)


def wait_before_retry(
    policy: RetryPolicy, failures: int, subject: str, cause: str, log: logging.Logger = logger
) -> None:
    """Sleep the policy's backoff after the ``failures``-th failure to read ``subject``
    (e.g. ``"the header of x.tiff"``), saying so in ``log``."""
    delay = policy.delay(failures) * random.uniform(0.5, 1.0)
    log.info(
        "reading %s failed (attempt %d of %d: %s); retrying in %.2f s",
        *(subject, failures, policy.attempts, cause, delay),
    )
    time.sleep(delay)


def gave_up_message(subject: str, cause: str, attempts: int, started: float) -> str:
    """Why reading ``subject`` (e.g. ``"the header of 'x.tiff'"``) failed for good."""
    return (
        f"could not read {subject}: {cause} (gave up after {attempts} attempts "
        f"in {time.monotonic() - started:.1f} s). The server kept failing: try again later, "
        "or allow more attempts (XEMBED_RETRY_ATTEMPTS, or xembed.sources.cog.RETRY)"
    )


def _local_error(what: str, href: str, cause: str) -> ReadError:
    return ReadError(
        f"could not read the {what} of {href!r}: {cause}. The file is unreadable, truncated "
        "or corrupt: copy it again from the mirror (its size must match the mirror's)",
        href=href,
    )


def retrying(source: Remote, what: str, policy: RetryPolicy, action: Callable[[int], _T]) -> _T:
    """``action(attempt)`` retried per ``policy`` for remote files, once for local ones.

    Failures are :class:`Invalid`, :class:`OSError` and HTTP errors;
    :class:`Refused` fails at once. The :class:`ReadError` raised at the end
    names ``what`` and the file, the last cause and the first if it differs.
    """
    attempts = policy.attempts if source.url else 1
    started = time.monotonic()
    first = ""
    for attempt in range(1, attempts + 1):
        try:
            return action(attempt)
        except Refused as err:
            raise ReadError(
                f"could not read the {what} of {source.href!r}: {err} (not retried: the server "
                "refuses it). Check that the mirror at root= holds this file and that the "
                "index matches the mirror",
                href=source.href,
                attempts=attempt,
            ) from None
        except (Invalid, OSError, http.client.HTTPException, _http_errors()) as err:
            cause = f"{type(err).__name__}: {err}" if not isinstance(err, Invalid) else str(err)
        if not source.url:
            raise _local_error(what, source.href, cause)
        first = first or cause
        if attempt == attempts:
            if cause != first:
                cause = f"{cause} (first failure: {first})"
            message = gave_up_message(f"the {what} of {source.href!r}", cause, attempt, started)
            raise ReadError(message, href=source.href, attempts=attempt)
        wait_before_retry(policy, attempt, f"the {what} of {source.href}", cause)
    raise AssertionError("unreachable")  # pragma: no cover


def _http_errors() -> type[Exception]:
    import urllib3

    return urllib3.exceptions.HTTPError


# ----------------------------------------------------------------------------- one request


def _get(source: Remote, start: int, stop: int, policy: RetryPolicy) -> tuple[bytes, int, str]:
    """Bytes ``start:stop`` of ``source`` (fewer only where the file ends), its size
    and validator; raises on anything the response does not vouch for."""
    if source.url is None:
        return _pread(source.href, start, stop, source.size)
    import urllib3

    http = _http(source.url)
    timeout = urllib3.Timeout(connect=policy.timeout, read=policy.timeout)
    reply = http.request(
        "GET",
        source.url,
        headers={"Range": f"bytes={start}-{stop - 1}"},
        timeout=timeout,
        retries=False,
        redirect=True,
        preload_content=True,  # a body shorter than Content-Length raises here
        decode_content=False,
    )
    if reply.status not in (200, 206):
        cause = f"HTTP {reply.status} {reply.reason}"
        if transient_status(reply.status):
            raise urllib3.exceptions.HTTPError(cause)
        raise Refused(cause)
    body = reply.data
    declared = reply.headers.get("Content-Length")
    if declared is None or int(declared) != len(body):
        raise Invalid(f"the body has {len(body)} bytes but Content-Length says {declared}")
    validator = reply.headers.get("ETag") or reply.headers.get("Last-Modified") or ""
    if reply.status == 200:  # the server ignored Range: the whole file came
        size, first = len(body), 0
    else:
        match = _CONTENT_RANGE.fullmatch(reply.headers.get("Content-Range", "").strip())
        if match is None or match.group(3) == "*":
            raise Invalid(f"unusable Content-Range {reply.headers.get('Content-Range')!r}")
        first, last, size = int(match.group(1)), int(match.group(2)), int(match.group(3))
        if first != start or last != min(stop, size) - 1 or len(body) != last - first + 1:
            raise Invalid(
                f"asked for bytes {start}-{stop - 1}, got {first}-{last} of {size} "
                f"in {len(body)} bytes"
            )
    if source.size is not None and size != source.size:
        raise Invalid(f"the file is {size} bytes now, {source.size} when its header was read")
    return bytes(body[start - first : stop - first]), size, validator


def _pread(path: str, start: int, stop: int, size: int | None) -> tuple[bytes, int, str]:
    with open(path, "rb") as file:
        actual = os.fstat(file.fileno()).st_size
        if size is not None and actual != size:
            raise Invalid(f"the file is {actual} bytes now, {size} when its header was read")
        data = os.pread(file.fileno(), stop - start, start)
    if len(data) != min(stop, actual) - start:
        raise Invalid(f"bytes {start}-{stop - 1} are past the end of the file ({actual} bytes)")
    return data, actual, ""


# ----------------------------------------------------------------------------- public reads


def fetch_prefixes(
    sources: Sequence[Remote],
    first: int | Callable[[Remote], int],
    parse: Callable[[Remote, bytes, int], _T],
    policy: RetryPolicy,
) -> list[tuple[_T, bytes, int, str]]:
    """``parse(source, prefix, size)`` of each file's first bytes, all files at once.

    Per file one request for ``first`` bytes (or ``first(source)``); if ``parse`` raises
    :class:`NeedMore`, one more for the rest up to its ``stop``. A header
    cut short, or one ``parse`` rejects (:class:`Invalid`), is fetched again
    within the budget. Returns ``(parsed, prefix, size, validator)`` per
    file; the first failure (in ``sources`` order) is raised.
    """

    def read(source: Remote) -> tuple[_T, bytes, int, str]:
        data, size, validator = _get(source, 0, first(source) if callable(first) else first, policy)
        for _ in range(4):
            try:
                return parse(source, data, size), data, size, validator
            except NeedMore as more:
                if more.stop <= len(data) or more.stop > size:
                    raise Invalid(f"the header points past the file's {size} bytes") from None
                known = Remote(source.href, source.url, size)
                rest, _, _ = _get(known, len(data), more.stop, policy)
                data += rest
        raise Invalid("the header's tag values are scattered beyond reason")

    def job(source: Remote) -> tuple[_T, bytes, int, str]:
        return retrying(source, "header", policy, lambda _: read(source))

    return _gather([_pool().submit(job, source) for source in sources])


def _gather(futures: list[Future[_T]]) -> list[_T]:
    """The futures' results; on a failure the others not yet started are cancelled,
    and the earliest failure in list order is raised (deterministic)."""
    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    if pending and any(f.exception() is not None for f in done):
        for future in pending:
            future.cancel()
    wait(futures)
    for future in futures:
        if not future.cancelled() and future.exception() is not None:
            raise future.exception()  # type: ignore[misc]
    return [future.result() for future in futures]


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int, list[int]]]:
    """Adjacent ``(start, length)`` ranges merged: ``[(start, length, members)]``.

    Only ranges that touch are merged (nothing between them is fetched);
    equal ranges are fetched once. ``members`` are indices into ``ranges``.

    Examples
    --------
    >>> merge_ranges([(100, 10), (0, 50), (50, 50), (120, 5), (0, 50)])
    [(0, 110, [1, 4, 2, 0]), (120, 5, [3])]
    """
    order = sorted(range(len(ranges)), key=lambda i: ranges[i])
    merged: list[tuple[int, int, list[int]]] = []
    for i in order:
        start, length = ranges[i]
        if merged:
            m_start, m_length, members = merged[-1]
            end = m_start + m_length
            if start == end or (start, length) == ranges[members[-1]]:
                merged[-1] = (m_start, max(end, start + length) - m_start, [*members, i])
                continue
        merged.append((start, length, [i]))
    return merged


def _run(job: Job, policy: RetryPolicy) -> None:
    def attempt(number: int) -> None:
        data = _get(job.source, job.start, job.start + job.length, policy)[0]
        if len(data) != job.length:
            raise Invalid(f"bytes {job.start}-{job.start + job.length - 1} are past the file end")
        job.consume(data)

    retrying(job.source, job.what, policy, attempt)


def fetch_jobs(jobs: Sequence[Job], policy: RetryPolicy) -> None:
    """Run every job concurrently on the request pool; the first failure is raised."""
    if jobs:
        pool = _pool()
        _gather([pool.submit(_run, job, policy) for job in jobs])
