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
import email.utils
import fnmatch
import http.server
import os
import socket
import struct
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from xembed.errors import SourceError

__all__ = ["Fault", "FaultRule", "MirrorRequest", "MirrorServer", "serve_mirror"]

_CHUNK = 1 << 20  # bytes per socket write
_IDLE_TIMEOUT = 30.0  # seconds an idle keep-alive connection stays open


@dataclass(frozen=True)
class Fault:
    """What to do to one request instead of (or on top of) answering it.

    Attributes
    ----------
    status : int or None
        Answer with this HTTP status (e.g. 500, 503, 429, 404) and a short
        text body, instead of the file.
    delay : float
        Seconds to wait before answering (a slow server; combine with
        another field to be slow *and* fail).
    truncate : int or None
        Announce the full ``Content-Length`` but send only this many body
        bytes, then close the connection (a body cut short in transit).
    reset : bool
        Abort the connection with a TCP reset before sending anything.

    Examples
    --------
    >>> Fault(status=503)
    Fault(status=503, delay=0.0, truncate=None, reset=False)
    >>> Fault(truncate=-1)
    Traceback (most recent call last):
    ...
    ValueError: Fault.truncate must be a byte count >= 0 or None, not -1
    """

    status: int | None = None
    delay: float = 0.0
    truncate: int | None = None
    reset: bool = False

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= int(self.status) <= 599:
            raise ValueError(f"Fault.status must be an HTTP status 100..599, not {self.status!r}")
        if not float(self.delay) >= 0:
            raise ValueError(f"Fault.delay must be seconds >= 0, not {self.delay!r}")
        if self.truncate is not None and int(self.truncate) < 0:
            raise ValueError(
                f"Fault.truncate must be a byte count >= 0 or None, not {self.truncate!r}"
            )


@dataclass(frozen=True)
class MirrorRequest:
    """One request the server received (retries are separate requests).

    Attributes
    ----------
    number : int
        1-based serial number among all requests since the last reset.
    method : str
        ``"GET"`` or ``"HEAD"``.
    path : str
        The requested file relative to the mirror folder, e.g.
        ``"2019/22S/x-0000000000-0000000000.tiff"`` (no URL prefix).
    range : str or None
        The ``Range`` header as sent, e.g. ``"bytes=0-16383"``.
    status : int
        The HTTP status answered (0 for a reset, or while being answered).
    fault : Fault or None
        The fault injected into this request, if any.
    sent : int
        Body bytes sent.
    """

    number: int
    method: str
    path: str
    range: str | None = None
    status: int = 0
    fault: Fault | None = None
    sent: int = 0


#: A fault rule: a mapping (see :func:`serve_mirror`) or a callable.
FaultRule = Mapping[str, Any] | Callable[[MirrorRequest], "Fault | Mapping[str, Any] | None"]

_FAULT_KEYS = frozenset(f.name for f in fields(Fault))
_FILTER_KEYS = frozenset({"path_glob", "method", "ranged", "nth"})


def _as_fault(value: Fault | Mapping[str, Any] | None) -> Fault | None:
    if value is None or isinstance(value, Fault):
        return value
    if isinstance(value, Mapping):
        return Fault(**{k: v for k, v in value.items() if k in _FAULT_KEYS})
    raise TypeError(
        f"a fault rule returned {type(value).__name__}; expected a Fault, a mapping of "
        f"{sorted(_FAULT_KEYS)} or None"
    )


class _Rule:
    """One fault rule with its own count of the requests it matched."""

    def __init__(self, rule: FaultRule) -> None:
        self.spec = rule
        self.count = 0
        self.callable: Callable[[MirrorRequest], Any] | None = None
        if callable(rule):
            self.callable = rule
            return
        if not isinstance(rule, Mapping):
            raise TypeError(
                f"a fault rule must be a mapping or a callable, not {type(rule).__name__}"
            )
        unknown = sorted(set(rule) - _FAULT_KEYS - _FILTER_KEYS)
        if unknown:
            raise ValueError(
                f"unknown fault rule keys {unknown}; filters are {sorted(_FILTER_KEYS)} and "
                f"actions are {sorted(_FAULT_KEYS)}"
            )
        self.fault = _as_fault(rule)
        if self.fault == Fault():
            raise ValueError(
                f"fault rule {dict(rule)!r} does nothing; give one of {sorted(_FAULT_KEYS)}"
            )
        self.glob = str(rule.get("path_glob", "*"))
        method = rule.get("method")
        self.method = None if method is None else str(method).upper()
        self.ranged = rule.get("ranged")
        nth = rule.get("nth")
        self.nth = None if nth is None else frozenset([nth] if isinstance(nth, int) else nth)
        if self.nth is not None and not all(isinstance(n, int) and n >= 1 for n in self.nth):
            raise ValueError(
                f"fault rule 'nth' must be an int >= 1 or a list of them (1 = the first "
                f"request the rule matches), not {nth!r}"
            )

    def __call__(self, request: MirrorRequest) -> Fault | None:
        if self.callable is not None:
            return _as_fault(self.callable(request))
        if not fnmatch.fnmatchcase(request.path, self.glob):
            return None
        if self.method is not None and request.method != self.method:
            return None
        if self.ranged is not None and bool(self.ranged) != (request.range is not None):
            return None
        self.count += 1
        if self.nth is not None and self.count not in self.nth:
            return None
        return self.fault


def _as_rules(faults: FaultRule | Sequence[FaultRule] | None) -> list[_Rule]:
    if faults is None:
        return []
    if isinstance(faults, Mapping) or callable(faults):
        return [_Rule(faults)]
    return [_Rule(rule) for rule in faults]


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


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
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
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        faults: FaultRule | Sequence[FaultRule] | None = None,
        *,
        prefix: str | None = None,
    ) -> None:
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
        self._rules = _as_rules(faults)
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
        rules = _as_rules(faults)
        with self._lock:
            self._rules = rules

    def reset(self) -> None:
        """Forget the requests seen so far; numbering and rule counts restart at 1."""
        with self._lock:
            self.requests.clear()
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
        with self._lock:
            requests = list(self.requests)
        return sum(
            fnmatch.fnmatchcase(r.path, path_glob)
            and (method is None or r.method == method.upper())
            and (faulted is None or (r.fault is not None) == faulted)
            for r in requests
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
        with self._lock:
            requests = list(self.requests)
        return sum(r.sent for r in requests if fnmatch.fnmatchcase(r.path, path_glob))

    def _begin(self, method: str, path: str, range_: str | None) -> tuple[int, Fault | None]:
        with self._lock:
            number = len(self.requests) + 1
            request = MirrorRequest(number, method, path, range_)
            fault = None
            for rule in self._rules:  # every rule counts the requests it matches
                found = rule(request)
                fault = fault or found
            self.requests.append(replace(request, fault=fault))
            return number - 1, fault

    def _finish(self, slot: int, status: int, sent: int) -> None:
        with self._lock:
            if slot < len(self.requests):
                self.requests[slot] = replace(self.requests[slot], status=status, sent=sent)

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
        range_header = handler.headers.get("Range")
        slot, fault = self._begin(method, relative, range_header)
        fault = fault or Fault()
        if fault.delay and self._stopping.wait(fault.delay):
            fault = Fault(reset=True)  # shutting down: do not answer
        if fault.reset:
            self._finish(slot, 0, 0)
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
        headers = {
            "Accept-Ranges": "bytes",
            "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
            "ETag": f'"{size:x}-{stat.st_mtime_ns:x}"',
            "Content-Type": "application/octet-stream",
        }
        ranges = _parse_ranges(range_header, size)
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
        slot: int,
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
        handler.send_header("Content-Length", str(length))
        self._finish(slot, status, 0)
        handler.end_headers()
        if method == "HEAD":
            return
        limit = length if truncate is None else min(truncate, length)
        sent = 0
        for segment in segments:
            if isinstance(segment, bytes):
                data = segment[: limit - sent]
                handler.wfile.write(data)
                sent += len(data)
                continue
            start, stop = segment
            file.seek(start)
            while sent < limit and start < stop and not self._stopping.is_set():
                data = file.read(min(_CHUNK, stop - start, limit - sent))
                handler.wfile.write(data)
                sent += len(data)
                start += len(data)
        self._finish(slot, status, sent)
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

    Yields
    ------
    MirrorServer
        With ``.url``, ``.requests`` (every :class:`MirrorRequest`),
        ``.count(...)``, ``.bytes_sent(...)``, ``.faults`` and ``.reset()``.

    Notes
    -----
    The server binds 127.0.0.1 only. Idle keep-alive connections close after
    30 s; on exit the server stops and open connections are closed, which
    also cuts short injected delays. ``HEAD`` answers never get a truncated
    body (they have none).

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
    server = MirrorServer(root, faults, prefix=prefix)
    with server:
        yield server
