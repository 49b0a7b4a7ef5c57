"""A local HTTP server for a mirror folder, with fault injection.

:func:`serve_mirror` serves a folder in the embedding mirror's layout
(``aef_index.parquet`` plus ``{year}/{zone}/*.tiff``) on ``127.0.0.1`` the way
a cloud bucket does: ``HEAD`` and ``GET`` with byte ranges (``206 Partial
Content`` with ``Content-Range``, several ranges as ``multipart/byteranges``),
which is all GDAL's ``/vsicurl/`` needs. So the HTTP path of the COG reader
(``open_embeddings(..., source="cog", root=server.url)``) runs offline.

Faults can be injected on chosen requests, to test what a reader does when
the network misbehaves:

- an HTTP error status (``{"status": 503}``);
- a slow answer (``{"delay": 2.0}``: seconds before the reply starts);
- a truncated body (``{"truncate": 100}``: the full ``Content-Length`` is
  announced, only 100 bytes are sent, then the connection closes);
- a connection reset (``{"reset": True}``: the connection is aborted with a
  TCP RST before any reply).

A distant server is imitated with ``latency=`` (seconds before every reply)
and ``rate=`` (bytes per second shared by all connections). Answers carry
``ETag`` and ``Last-Modified``; ``If-None-Match`` / ``If-Modified-Since`` get
``304 Not Modified``. The request log has start and end times: requests,
bytes, peak requests in flight and sequential rounds can be counted.

Rules choose requests by path, method, byte range and position, e.g.
``{"path_glob": "*.tiff", "nth": [1, 2], "status": 503}`` fails the first two
requests for any ``.tiff`` file. A callable taking a :class:`MirrorRequest`
and returning a :class:`Fault`, a rule-like mapping of fault fields, or
``None`` chooses freely.

The server binds ``127.0.0.1`` only, answers from daemon threads and stops
(closing open connections) when the ``with`` block ends. It is a test and
demonstration tool, not a production file server.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import fnmatch
import heapq
import http.server
import math
import os
import socket
import struct
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from xembed.errors import SourceError
from xembed.testing.faults import Fault, FaultRule, MirrorRequest, as_rules

__all__ = ["Fault", "FaultRule", "MirrorRequest", "MirrorServer", "serve_mirror"]

_CHUNK = 1 << 20  # bytes per socket write
_RATE_CHUNK = 1 << 16  # bytes per write on a throttled link: connections interleave finely
_IDLE_TIMEOUT = 30.0  # seconds an idle keep-alive connection stays open


def _parse_ranges(header: str | None, size: int) -> list[tuple[int, int]] | None:
    """``[(start, stop), ...]`` (stop exclusive) of a ``Range`` header.

    ``None``: no usable header (answer the whole file). ``[]``: none of the
    ranges overlaps the file (answer 416).
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    ranges = []
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        if not dash:
            return None
        try:
            if first == "":  # the last N bytes
                n = int(last)
                start, stop = max(size - n, 0), size
            else:
                start = int(first)
                stop = size if last == "" else min(int(last) + 1, size)
        except ValueError:
            return None
        if start < stop:
            ranges.append((start, stop))
    return ranges


def _not_modified(headers: Any, etag: str, mtime: float) -> bool:
    """Whether a conditional request gets ``304 Not Modified`` (RFC 9110, 13.2.2).

    >>> _not_modified({"If-None-Match": 'W/"a", "b"'}, '"a"', 0.0)
    True
    >>> _not_modified({"If-Modified-Since": "Thu, 01 Jan 1970 00:00:09 GMT"}, '"a"', 10.5)
    False
    """
    match, since = headers.get("If-None-Match"), headers.get("If-Modified-Since")
    if match is not None:  # takes precedence over the date
        return bool({t.strip().removeprefix("W/") for t in match.split(",")} & {"*", etag})
    try:
        date = email.utils.parsedate_to_datetime(since).replace(tzinfo=datetime.UTC)
    except (TypeError, ValueError):
        return False  # none, or an invalid date: ignored (RFC 9110)
    return int(mtime) <= date.timestamp()  # Last-Modified has whole seconds


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # listen backlog: the default 5 drops parallel connections
    mirror: MirrorServer


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients expect from object stores
    disable_nagle_algorithm = True  # headers and body are separate writes
    timeout = _IDLE_TIMEOUT  # bounded: an idle connection ends
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        mirror = self.server.mirror
        with mirror._lock:
            mirror._connections.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        mirror = self.server.mirror
        with mirror._lock:
            mirror._connections.discard(self.connection)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: read server.requests instead

    def _serve(self, method: str) -> None:
        mirror = self.server.mirror
        try:
            mirror._answer(self, method)
        except (BrokenPipeError, ConnectionError, TimeoutError):
            self.close_connection = True  # the client went away: nothing to tell it


class MirrorServer:
    """A running mirror server (use :func:`serve_mirror` to start one).

    Attributes
    ----------
    url : str
        The mirror's root URL, ``http://127.0.0.1:PORT/PREFIX``; pass it as
        ``root=`` to :func:`xembed.open_embeddings` with ``source="cog"``.
    root : pathlib.Path
        The folder served.
    requests : list of MirrorRequest
        Every request received since the last :meth:`reset`, in order.
    latency : float
        Seconds waited before every reply (on top of a fault's ``delay``).
    rate : float or None
        Body bytes per second shared by all connections; ``None``: unlimited.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        faults: FaultRule | Sequence[FaultRule] | None = None,
        *,
        prefix: str | None = None,
        latency: float = 0.0,
        rate: float | None = None,
    ) -> None:
        if not float(latency) >= 0 or not float(rate or 1) > 0:
            raise ValueError(f"latency must be >= 0 s, rate > 0 B/s: got {latency!r}, {rate!r}")
        self.latency, self.rate = float(latency), rate
        self._link_free = 0.0  # when the throttled link can take the next write
        self._generation = 0  # bumped by reset(): answers in flight then log nothing
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise SourceError(
                f"cannot serve {str(root)!r}: not a folder; pass a mirror folder such as "
                "xembed.sample_root()"
            )
        if prefix is None:
            # A fresh URL per server: GDAL's /vsicurl/ and xembed cache file
            # sizes, headers and indexes by URL for the life of the process.
            prefix = f"mirror-{uuid.uuid4().hex[:12]}"
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.requests: list[MirrorRequest] = []
        self._rules = as_rules(faults)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ faults, log

    @property
    def faults(self) -> list[FaultRule]:
        """The active fault rules; assign to replace them (their counts restart)."""
        return [r.spec for r in self._rules]

    @faults.setter
    def faults(self, faults: FaultRule | Sequence[FaultRule] | None) -> None:
        rules = as_rules(faults)
        with self._lock:
            self._rules = rules

    def reset(self) -> None:
        """Forget the requests seen so far; numbering and rule counts restart at 1."""
        with self._lock:
            self.requests.clear()
            self._generation += 1
            for rule in self._rules:
                rule.count = 0

    def count(
        self, path_glob: str = "*", *, method: str | None = None, faulted: bool | None = None
    ) -> int:
        """How many requests matched ``path_glob`` (and ``method``, and faulted or not).

        Examples
        --------
        >>> server = MirrorServer(".", prefix="")
        >>> server.requests.append(MirrorRequest(1, "GET", "a.tiff", fault=Fault(status=503)))
        >>> server.count("*.tiff"), server.count("*.tiff", faulted=False)
        (1, 0)
        """
        return sum(
            (method is None or r.method == method.upper())
            and (faulted is None or (r.fault is not None) == faulted)
            for r in self._matching(path_glob)
        )

    def bytes_sent(self, path_glob: str = "*") -> int:
        """Body bytes sent for requests matching ``path_glob``: what a reader downloaded.

        Examples
        --------
        >>> server = MirrorServer(".", prefix="")
        >>> server.requests.append(MirrorRequest(1, "GET", "a.tiff", "bytes=0-99", 206, sent=100))
        >>> server.bytes_sent("*.tiff"), server.bytes_sent("*.parquet")
        (100, 0)
        """
        return sum(r.sent for r in self._matching(path_glob))

    def _matching(self, path_glob: str) -> list[MirrorRequest]:
        with self._lock:
            requests = list(self.requests)
        return [r for r in requests if fnmatch.fnmatchcase(r.path, path_glob)]

    def peak_in_flight(self, path_glob: str = "*") -> int:
        """The most requests matching ``path_glob`` answered at the same time.

        A request counts from its arrival to the last write of its answer
        (see :meth:`rounds` for an example).
        """
        events = []
        for r in self._matching(path_glob):
            events.append((r.started, 1))
            if r.ended == r.ended:  # not nan: answered
                events.append((r.ended, -1))
        peak = now = 0
        for _, step in sorted(events):  # at equal times an end (-1) comes first
            now += step
            peak = max(peak, now)
        return peak

    def rounds(self, path_glob: str = "*") -> int:
        """Sequential rounds: the longest chain of requests matching ``path_glob``
        each of which arrived after the previous one was answered.

        With a ``latency`` of ``d`` seconds, the reading took at least
        ``rounds() * d``.

        Examples
        --------
        >>> server = MirrorServer(".", prefix="")
        >>> server.requests += [MirrorRequest(1, "GET", "a", started=0.0, ended=2.0),
        ...                     MirrorRequest(2, "GET", "b", started=1.0, ended=3.0),
        ...                     MirrorRequest(3, "GET", "a", started=3.0, ended=4.0)]
        >>> server.rounds(), server.rounds("b"), server.peak_in_flight(), server.peak_in_flight("a")
        (2, 1, 2, 1)
        """
        done: list[tuple[float, int]] = []  # (ended, chain length) of requests seen
        best = longest = 0
        for r in sorted(self._matching(path_glob), key=lambda r: r.started):
            while done and done[0][0] <= r.started:
                best = max(best, heapq.heappop(done)[1])
            ended = r.ended if r.ended == r.ended else float("inf")
            heapq.heappush(done, (ended, best + 1))
            longest = max(longest, best + 1)
        return longest

    def _begin(
        self, method: str, path: str, range_: str | None
    ) -> tuple[tuple[int, int], Fault | None]:
        with self._lock:
            number = len(self.requests) + 1
            request = MirrorRequest(number, method, path, range_, started=time.monotonic())
            fault = None
            for rule in self._rules:  # every rule counts the requests it matches
                found = rule(request)
                fault = fault or found
            self.requests.append(replace(request, fault=fault))
            return (self._generation, number - 1), fault

    def _finish(self, slot: tuple[int, int], *, unless_ended: bool = False, **changes: Any) -> None:
        """Log ``status``, ``sent`` or ``ended`` of a request (unless reset meanwhile)."""
        generation, i = slot
        with self._lock:
            if generation != self._generation or i >= len(self.requests):
                return
            if not (unless_ended and self.requests[i].ended == self.requests[i].ended):
                self.requests[i] = replace(self.requests[i], **changes)

    def _throttle(self, n: int) -> None:
        """Hold a write of ``n`` bytes until the shared link (``rate``) has carried it."""
        if self.rate is None:
            return
        with self._lock:
            start = max(time.monotonic(), self._link_free)
            self._link_free = done = start + n / float(self.rate)
        self._stopping.wait(max(0.0, done - time.monotonic()))

    # ------------------------------------------------------------------ HTTP

    def _file(self, url_path: str) -> tuple[str, Path | None]:
        """(path relative to the mirror, file or None) for a request path."""
        path = urllib.parse.unquote(urllib.parse.urlsplit(url_path).path)
        if self.prefix and not (path == self.prefix or path.startswith(self.prefix + "/")):
            return path.lstrip("/"), None
        relative = path[len(self.prefix) :].lstrip("/")
        target = (self.root / relative).resolve()
        if not relative or not target.is_relative_to(self.root) or not target.is_file():
            return relative, None
        return relative, target

    def _answer(self, handler: _Handler, method: str) -> None:
        relative, target = self._file(handler.path)
        slot, fault = self._begin(method, relative, handler.headers.get("Range"))
        try:
            self._reply(handler, slot, method, relative, target, fault or Fault())
        finally:  # if not logged on the way: the client went away
            self._finish(slot, ended=time.monotonic(), unless_ended=True)

    def _reply(
        self,
        handler: _Handler,
        slot: tuple[int, int],
        method: str,
        relative: str,
        target: Path | None,
        fault: Fault,
    ) -> None:
        wait = self.latency + fault.delay
        if wait and self._stopping.wait(wait):
            fault = Fault(reset=True)  # shutting down: do not answer
        if fault.reset:
            self._finish(slot, status=0, sent=0, ended=time.monotonic())
            self._abort(handler)
            return
        text = {"Content-Type": "text/plain"}
        if fault.status is not None:
            message = f"fault injected by xembed's mirror server: HTTP {fault.status}\n"
            self._send(handler, slot, method, fault.status, text, [message.encode()], None)
            return
        if target is None:
            message = f"{relative!r} is not in the mirror folder\n"
            self._send(handler, slot, method, 404, text, [message.encode()], None)
            return
        stat = target.stat()
        size = stat.st_size
        validators = {
            "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
            "ETag": f'"{size:x}-{stat.st_mtime_ns:x}"',
        }
        if _not_modified(handler.headers, validators["ETag"], stat.st_mtime):
            self._send(handler, slot, method, 304, validators, [], None)
            return
        headers = {
            "Accept-Ranges": "bytes",
            **validators,
            "Content-Type": "application/octet-stream",
        }
        ranges = _parse_ranges(handler.headers.get("Range"), size)
        segments: list[bytes | tuple[int, int]]
        if ranges is None:
            status, segments = 200, [(0, size)]
        elif not ranges:
            headers.update(text, **{"Content-Range": f"bytes */{size}"})
            status, segments = 416, [b"range not satisfiable\n"]
        elif len(ranges) == 1:
            (start, stop), status, segments = ranges[0], 206, list(ranges)
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        else:  # several ranges: one multipart/byteranges body
            boundary = uuid.uuid4().hex
            headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
            status, segments = 206, []
            for start, stop in ranges:
                part = (
                    f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Range: bytes {start}-{stop - 1}/{size}\r\n\r\n"
                )
                segments += [part.encode(), (start, stop)]
            segments.append(f"\r\n--{boundary}--\r\n".encode())
        with open(target, "rb") as file:
            self._send(handler, slot, method, status, headers, segments, fault.truncate, file)

    def _send(
        self,
        handler: _Handler,
        slot: tuple[int, int],
        method: str,
        status: int,
        headers: Mapping[str, str],
        segments: Sequence[bytes | tuple[int, int]],
        truncate: int | None,
        file: Any = None,
    ) -> None:
        """Answer with ``segments`` (bytes, or (start, stop) ranges of ``file``)."""
        length = sum(len(s) if isinstance(s, bytes) else s[1] - s[0] for s in segments)
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        if status != 304:  # a 304 has no body, and its length would be the file's
            handler.send_header("Content-Length", str(length))
        # The log is complete before the last write: a client holding the
        # answer (and sending its next request) finds its request logged.
        bodiless = method == "HEAD" or status == 304 or not length
        self._finish(slot, status=status, sent=0, ended=time.monotonic() if bodiless else math.nan)
        handler.end_headers()
        if bodiless:
            return
        limit = length if truncate is None else min(truncate, length)
        chunk = _CHUNK if self.rate is None else _RATE_CHUNK
        sent = 0

        def write(data: bytes) -> None:
            nonlocal sent
            if sent + len(data) >= limit:
                self._finish(slot, status=status, sent=limit, ended=time.monotonic())
            handler.wfile.write(data)
            sent += len(data)

        for segment in segments:
            if isinstance(segment, bytes):
                write(segment[: limit - sent])
                continue
            start, stop = segment
            file.seek(start)
            while sent < limit and start < stop and not self._stopping.is_set():
                data = file.read(min(chunk, stop - start, limit - sent))
                self._throttle(len(data))
                write(data)
                start += len(data)
        if sent < limit:  # stopped early (shutting down)
            self._finish(slot, status=status, sent=sent, ended=time.monotonic())
        if sent < length:  # cut short: close, so the client sees a truncated transfer
            handler.close_connection = True
            handler.wfile.flush()
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _abort(handler: _Handler) -> None:
        """Reset the connection: SO_LINGER 0 makes close() send a TCP RST."""
        handler.close_connection = True
        with contextlib.suppress(OSError):
            handler.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            handler.connection.close()

    # ------------------------------------------------------------------ life cycle

    def start(self) -> MirrorServer:
        """Start answering on ``127.0.0.1`` (an ephemeral port); returns ``self``."""
        server = _HTTPServer(("127.0.0.1", 0), _Handler)
        server.mirror = self
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="xembed-mirror-server",
            daemon=True,
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}{self.prefix}"
        return self

    def stop(self) -> None:
        """Stop the server and close every open connection (waits at most ~5 s)."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> MirrorServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self.url or "not started"
        return f"<MirrorServer {str(self.root)!r} at {state}, {len(self.requests)} requests>"


@contextlib.contextmanager
def serve_mirror(
    root: str | os.PathLike[str],
    *,
    faults: FaultRule | Sequence[FaultRule] | None = None,
    prefix: str | None = None,
    latency: float = 0.0,
    rate: float | None = None,
) -> Iterator[MirrorServer]:
    """Serve a mirror folder over HTTP on 127.0.0.1, optionally injecting faults.

    Parameters
    ----------
    root : str or path
        The folder to serve, e.g. :func:`xembed.sample_root`.
    faults : rule, list of rules, or None
        Which requests to disturb. A rule is a mapping of

        - filters: ``path_glob`` (shell pattern on the path relative to the
          mirror, default ``"*"``; ``*`` also matches ``/``), ``method``
          (``"GET"`` or ``"HEAD"``), ``ranged`` (``True``: only requests with
          a ``Range`` header, ``False``: only without), ``nth`` (an int or a
          list of ints: which of the requests the rule matches to disturb,
          1-based, counting retries; default: all of them);
        - actions (:class:`Fault` fields): ``status``, ``delay``,
          ``truncate``, ``reset``;

        or a callable taking a :class:`MirrorRequest` and returning a
        :class:`Fault`, a mapping of its fields, or ``None``. Every rule
        counts the requests it matches; the first rule that fires wins.
        Assign ``server.faults`` to change them while the server runs.
    prefix : str, optional
        URL path under which the folder is served. Default: a random
        ``mirror-<hex>``, so every server has fresh URLs (GDAL's ``/vsicurl/``
        caches file sizes and data by URL for the life of the process, and
        xembed caches indexes by URL). Pass ``""`` to serve at the root.
    latency : float, default 0
        Seconds to wait before every reply, like a round trip to a distant
        server (a fault's ``delay`` adds to it). Assign ``server.latency``
        to change it.
    rate : float, optional
        Throttle bodies to this many bytes per second, shared by all
        connections (a link: 100 Mbit/s is ``12.5e6``). Default: unlimited.

    Yields
    ------
    MirrorServer
        With ``.url``, ``.requests`` (every :class:`MirrorRequest`, with
        start and end times), ``.count(...)``, ``.bytes_sent(...)``,
        ``.peak_in_flight(...)``, ``.rounds(...)``, ``.faults`` and
        ``.reset()``.

    Notes
    -----
    The server binds 127.0.0.1 only. Idle keep-alive connections close after
    30 s; on exit the server stops and open connections are closed, which
    also cuts short injected delays. ``HEAD`` answers never get a truncated
    body (they have none). The listen backlog is 1024 and every connection
    has its own thread, so a reader may open many connections at once.
    Answers carry ``ETag`` and ``Last-Modified``; a conditional request
    (``If-None-Match``, else ``If-Modified-Since``) on an unchanged file is
    answered ``304 Not Modified`` without a body.

    Examples
    --------
    >>> import tempfile, urllib.request
    >>> folder = tempfile.mkdtemp()
    >>> _ = Path(folder, "a.tiff").write_bytes(bytes(range(10)))
    >>> with serve_mirror(folder, faults={"path_glob": "*.tiff", "nth": 1, "status": 503}) as srv:
    ...     try:
    ...         urllib.request.urlopen(srv.url + "/a.tiff", timeout=5)
    ...     except urllib.error.HTTPError as err:
    ...         print("first:", err.code)
    ...     request = urllib.request.Request(srv.url + "/a.tiff", headers={"Range": "bytes=2-4"})
    ...     with urllib.request.urlopen(request, timeout=5) as reply:
    ...         print("second:", reply.status, reply.headers["Content-Range"], reply.read())
    ...     print(srv.count("*.tiff"), srv.count("*.tiff", faulted=True))
    first: 503
    second: 206 bytes 2-4/10 b'\\x02\\x03\\x04'
    2 1
    """
    server = MirrorServer(root, faults, prefix=prefix, latency=latency, rate=rate)
    with server:
        yield server
