"""The fake's HTTP server, its ``ee`` transport and :func:`fake_earthengine`."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import http.server
import json
import os
import re
import threading
import time
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

from xembed.schema import BANDS, COLLECTION
from xembed.testing.earthengine.evaluator import Evaluator, as_image, encode, select
from xembed.testing.earthengine.model import (
    ApiError,
    Band,
    Collection,
    FakeRequest,
    FaultRule,
    File,
    Image,
    Source,
    Unsupported,
    as_fault_rule,
    functions_in,
)
from xembed.testing.earthengine.pixels import compute_pixels, parse_grid


def _year_millis(year: int) -> int:
    return int(_dt.datetime(year, 1, 1, tzinfo=_dt.UTC).timestamp() * 1000)


def _ee_test_file(name: str) -> Path:
    import ee

    path = Path(ee.__file__).parent / "tests" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: xembed's fake Earth Engine serves the discovery document and "
            "algorithm list that earthengine-api ships in ee/tests/; reinstall earthengine-api"
        )
    return path


@functools.lru_cache(maxsize=1)
def _discovery_document() -> bytes:
    text = _ee_test_file("cloud_api_discovery_document.json").read_text()
    # The shipped document describes v1alpha; the client asks for v1.
    return text.replace("v1alpha", "v1").encode()


@functools.lru_cache(maxsize=1)
def _algorithms() -> bytes:
    return _ee_test_file("algorithms.json").read_bytes()


class FakeEarthEngine:
    """A running fake Earth Engine server (see :func:`fake_earthengine`).

    Attributes
    ----------
    url : str
        ``http://127.0.0.1:PORT``.
    root : str
        The mirror folder the collection is served from.
    requests : list of FakeRequest
        Every request received, in order (retries included).
    unsupported : list of str
        Names of unsupported functions that requests asked for.
    max_concurrent : int
        The most requests the fake was answering at once (since the last
        :meth:`reset_counters`).
    """

    def __init__(self, root: str | os.PathLike[str], faults: Any = None) -> None:
        self.root = str(root)
        self.requests: list[FakeRequest] = []
        self.unsupported: list[str] = []
        self._fault_rule = as_fault_rule(faults)
        self._lock = threading.Lock()
        self._collection: Collection | None = None
        self._collection_lock = threading.Lock()
        self._mosaics: dict[Any, Image] = {}
        self._in_flight = 0
        self.max_concurrent = 0
        self._results: dict[Any, Any] = {}
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ----------------------------------------------------------------- counters

    @property
    def compute_pixels_count(self) -> int:
        """Number of ``image:computePixels`` requests received (retries included)."""
        return sum(r.kind == "computePixels" for r in self.requests)

    @property
    def value_compute_count(self) -> int:
        """Number of ``value:compute`` (``getInfo``) requests received."""
        return sum(r.kind == "value:compute" for r in self.requests)

    @property
    def functions_used(self) -> frozenset[str]:
        """Every Earth Engine function named by any request so far."""
        return frozenset(f for r in self.requests for f in r.functions)

    def reset_counters(self) -> None:
        """Forget the requests seen so far (numbering, and faults, restart at 1)."""
        with self._lock:
            self.requests.clear()
            self.unsupported.clear()
            self.max_concurrent = self._in_flight

    # ----------------------------------------------------------------- data

    def collection(self) -> Collection:
        """The fake ``GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL``: one image per mirror file."""
        with self._collection_lock:  # built once, by the first request that needs it
            if self._collection is None:
                self._collection = self._load_collection()
            return self._collection

    def _load_collection(self) -> Collection:
        from xembed.sources.cog import read_index

        # Sorted by path within a year: the order the COG reader mosaics in.
        index = read_index(self.root).sort_values(["year", "path"], kind="stable")
        images = []
        for row in index.itertuples():
            file = File(
                href=str(row.href),
                path=str(row.path),
                year=int(row.year),
                zone=str(row.utm_zone),
                crs=str(row.crs),
                footprint=row.footprint,
                utm_bounds=(row.utm_west, row.utm_south, row.utm_east, row.utm_north),
            )
            props = {
                "system:index": Path(file.path).stem,
                "system:time_start": _year_millis(file.year),
                "system:time_end": _year_millis(file.year + 1),
                "UTM_ZONE": file.zone,
            }
            west, south, east, north = file.utm_bounds
            native = (  # north-up, as Earth Engine describes the (bottom-up) files
                file.crs,
                (10.0, 0.0, float(west), 0.0, -10.0, float(north)),
                (round((east - west) / 10), round((north - south) / 10)),
            )
            bands = tuple(Band(name, Source((file,), i)) for i, name in enumerate(BANDS))
            images.append(Image(bands, props, native, file.footprint))
        return Collection(tuple(images), {}, ("load", COLLECTION))

    def cached(self, key: Any) -> Any:
        with self._lock:
            return self._results.get(key)

    def cache(self, key: Any, value: Any) -> None:
        with self._lock:
            if len(self._results) > 10_000:  # bounded: a long-lived fake in a notebook
                self._results.clear()
            self._results[key] = value

    def mosaic(self, files: tuple[File, ...], names: tuple[str, ...]) -> Image:
        """The mosaic image of ``files`` (bottom to top), built once per set of files."""
        key = (files, names)
        with self._lock:
            image = self._mosaics.get(key)
            if image is None:
                # Made once: a window's 64 band requests rebuild the same mosaics.
                bands = tuple(Band(n, Source(files, i)) for i, n in enumerate(names))
                image = self._mosaics[key] = Image(bands)
            return image

    # ----------------------------------------------------------------- HTTP

    def _begin(
        self, method: str, path: str, kind: str, functions: tuple[str, ...]
    ) -> tuple[FakeRequest, int | None]:
        with self._lock:
            number = len(self.requests) + 1
            kind_number = sum(r.kind == kind for r in self.requests) + 1
            request = FakeRequest(number, kind, kind_number, method, path, functions)
            self.requests.append(request)
            self._in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self._in_flight)
            return request, self._fault_rule(request)

    def _finish(
        self, request: FakeRequest, status: int, shape: tuple[int, int, int] | None
    ) -> None:
        with self._lock:
            self._in_flight -= 1
            for i in range(len(self.requests) - 1, -1, -1):
                if self.requests[i] is request:
                    self.requests[i] = dataclasses.replace(request, status=status, shape=shape)
                    break

    def handle(self, method: str, raw_path: str, body: bytes) -> tuple[int, str, bytes]:
        """Answer one request: (status, content type, body)."""
        path = raw_path.split("?", 1)[0]
        kind, payload = "other", None
        functions: tuple[str, ...] = ()
        if method == "GET" and path == "/$discovery/rest":
            kind = "discovery"
        elif method == "GET" and re.fullmatch(r"/v1/projects/[^/]+/algorithms", path):
            kind = "algorithms"
        elif method == "POST" and re.fullmatch(r"/v1/projects/[^/]+/value:compute", path):
            kind = "value:compute"
        elif method == "POST" and re.fullmatch(r"/v1/projects/[^/]+/image:computePixels", path):
            kind = "computePixels"
        if kind in ("value:compute", "computePixels"):
            try:
                payload = json.loads(body or b"{}")
                functions = functions_in(payload.get("expression", {}))
            except (ValueError, AttributeError):
                payload = None
        request, fault = self._begin(method, path, kind, functions)
        try:
            if fault is not None:
                raise ApiError(
                    int(fault),
                    "Too many concurrent aggregations (injected by the fake)"
                    if int(fault) == 429
                    else f"Internal error (HTTP {int(fault)} injected by the fake)",
                )
            status, ctype, data, shape = self._answer(kind, path, payload)
        except ApiError as err:
            if isinstance(err, Unsupported):
                with self._lock:
                    self.unsupported.append(err.function)
            status, ctype, data, shape = err.status, "application/json", err.body(), None
        except Exception as err:  # a bug in the fake: say so, and do not invite retries
            message = f"xembed's fake Earth Engine failed: {type(err).__name__}: {err}"
            status, ctype, data = 400, "application/json", ApiError(400, message).body()
            shape = None
        self._finish(request, status, shape)
        return status, ctype, data

    def _answer(
        self, kind: str, path: str, payload: Any
    ) -> tuple[int, str, bytes, tuple[int, int, int] | None]:
        if kind == "discovery":
            return 200, "application/json", _discovery_document(), None
        if kind == "algorithms":
            return 200, "application/json", _algorithms(), None
        if kind == "other":
            raise ApiError(
                404,
                f"xembed's fake Earth Engine does not serve {path!r}; it answers "
                "GET /$discovery/rest, GET /v1/projects/P/algorithms, "
                "POST /v1/projects/P/value:compute and POST /v1/projects/P/image:computePixels",
            )
        if not isinstance(payload, Mapping) or "expression" not in payload:
            raise ApiError(400, "request body must be JSON with an 'expression'")
        expression = payload["expression"]
        evaluator = Evaluator(self, expression.get("values", {}))
        result = evaluator.reference(expression["result"], {})
        if kind == "value:compute":
            return 200, "application/json", json.dumps({"result": encode(result)}).encode(), None
        if payload.get("fileFormat", "NPY") != "NPY":
            raise ApiError(
                400, f"the fake returns only fileFormat 'NPY', not {payload.get('fileFormat')!r}"
            )
        if payload.get("bandIds"):
            result = Image(tuple(select(as_image(result), payload["bandIds"])))
        if "grid" not in payload:
            raise ApiError(400, "computePixels needs a 'grid' (the fake has no native grid)")
        image, grid = as_image(result), parse_grid(payload["grid"])
        shape = (len(image.bands), grid.height, grid.width)
        return 200, "application/octet-stream", compute_pixels(image, grid), shape

    def start(self) -> FakeEarthEngine:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the client reuses connections
            # Headers and body go out as separate writes: without TCP_NODELAY,
            # Nagle's algorithm and the client's delayed ACK add ~40 ms to each.
            disable_nagle_algorithm = True

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, ctype, data = fake.handle(method, self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests read fake.requests instead

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="fake-earthengine", daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Transport:
    """An httplib2-like transport on a proxy-free ``requests`` session.

    ``ee`` sends requests through ``requests``, which would honour
    ``HTTP(S)_PROXY`` and route 127.0.0.1 through a proxy.
    """

    def __init__(self) -> None:
        import requests
        import requests.adapters

        self.session = requests.Session()
        self.session.trust_env = False
        # Room for every concurrent request: a full pool discards connections.
        self.session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=64))

    def request(
        self, uri: str, method: str = "GET", body: Any = None, headers: Any = None, **_: Any
    ) -> Any:
        import httplib2
        import requests

        try:
            response = self.session.request(method, uri, data=body, headers=headers, timeout=120)
        except requests.exceptions.ConnectionError as err:
            raise ConnectionError(err) from err
        info: dict[str, Any] = dict(response.headers)
        info["status"] = response.status_code
        return httplib2.Response(info), response.content


@contextlib.contextmanager
def fake_earthengine(
    root: str | os.PathLike[str] | None = None,
    *,
    faults: FaultRule | Mapping[int, int] | None = None,
    backoff_scale: float = 0.001,
) -> Iterator[FakeEarthEngine]:
    """Serve a fake Earth Engine on 127.0.0.1 and point ``ee`` at it.

    Inside the ``with`` block, ``ee`` is initialised against a local server
    that answers the Earth Engine REST API from a mirror-format folder:
    ``ee.ImageCollection("GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL")`` holds one
    image per mirror file (``system:time_start`` on 1 January of its year,
    ``UTM_ZONE``, the file's footprint), and ``getInfo``, ``computePixels``
    and Xee's ``xr.open_dataset(..., engine="ee")`` work offline, with the
    real ``earthengine-api`` client and the real Xee. Mosaics are composited
    as Earth Engine does (later images on top, masked pixels transparent)
    and resampled to the requested grid by nearest neighbour (the source
    pixel that contains each destination pixel centre), exactly as
    :mod:`xembed.sources.cog` does, so results can be compared bit for bit.

    Only the functions in :data:`SUPPORTED_FUNCTIONS` are evaluated; a
    request using any other gets HTTP 400 whose message names the function
    (``ee.EEException`` on the client), and the name is recorded in
    ``fake.unsupported``.

    Parameters
    ----------
    root : str or path, optional
        A mirror folder (``aef_index.parquet`` plus the ``.tiff`` files).
        Default: the bundled sample (:func:`xembed.sources.sample.sample_root`).
    faults : callable, mapping or None
        Failures to inject: a callable taking each :class:`FakeRequest` and
        returning an HTTP status to fail it with (or ``None``), e.g.
        :func:`first_requests_fail` ``(3, 429)`` or :func:`all_requests_fail`
        ``(500)``; or a mapping ``{n: status}`` failing the n-th (1-based)
        ``computePixels`` request, counting retries.
    backoff_scale : float, default 0.001
        While the fake runs, the ``ee`` client's retry sleeps (it retries
        HTTP 429 and 5xx up to 5 times, sleeping up to 2**n s) are multiplied
        by this, so fault tests run in milliseconds. Use 1.0 for real timing.

    Yields
    ------
    FakeEarthEngine
        The running server: ``.url``, ``.requests`` (every
        :class:`FakeRequest`), ``.compute_pixels_count``,
        ``.value_compute_count``, ``.functions_used``, ``.unsupported`` and
        ``.reset_counters()``.

    Notes
    -----
    ``ee`` is initialised with ``AnonymousCredentials`` and project
    ``"fake"``, and ``ee.deprecation._FetchDataCatalogStac`` (which would
    download the data catalogue) is stubbed. On exit the server stops and
    ``ee`` goes back to the state it had before: reset if it was not
    initialised, otherwise re-pointed at the previous server and credentials
    (the function list loaded from the fake, which is ``ee``'s own copy,
    stays). ``ee`` state is process-wide: do not run two fakes at once.

    Examples
    --------
    >>> import ee
    >>> from xembed.testing import fake_earthengine
    >>> with fake_earthengine() as fake:  # doctest: +SKIP
    ...     years = ee.ImageCollection("GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL").filterDate(
    ...         "2020-01-01", "2021-01-01")
    ...     print(years.size().getInfo() > 0, fake.value_compute_count)
    True 1

    Xee reads through it too; count the pixel requests a pipeline makes:

    >>> import xembed  # doctest: +SKIP
    >>> with fake_earthengine() as fake:  # doctest: +SKIP
    ...     site = xembed.demo_sites()[0]
    ...     ds = xembed.open_embeddings(site, range(2018, 2020), source="ee")
    ...     ds.embeddings.load()
    ...     print(fake.compute_pixels_count)
    64
    """
    import ee
    import googleapiclient.http
    from google.auth.credentials import AnonymousCredentials

    if root is None:
        from xembed.sources.sample import sample_root

        root = sample_root()
    fake = FakeEarthEngine(root, faults).start()
    previous = ee.data._get_state() if ee.data.is_initialized() else None
    fast_time = types.SimpleNamespace(
        **{k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
    )
    fast_time.sleep = lambda seconds: time.sleep(seconds * backoff_scale)
    with contextlib.ExitStack() as stack:
        stack.callback(fake.stop)
        # The catalogue of deprecated assets is fetched from the internet.
        stack.enter_context(mock.patch.object(ee.deprecation, "_FetchDataCatalogStac", lambda: {}))
        if backoff_scale != 1.0:
            stack.enter_context(mock.patch.object(googleapiclient.http, "time", fast_time))
        ee.Reset()
        stack.callback(_restore_ee, previous)
        ee.Initialize(
            credentials=AnonymousCredentials(),
            url=fake.url,
            project="fake",
            http_transport=_Transport(),
        )
        yield fake


def _restore_ee(previous: Any) -> None:
    import ee
    from ee import _state

    if previous is None:
        ee.Reset()
    else:
        _state._state = previous
