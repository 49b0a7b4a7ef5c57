"""Earth Engine through Xee: the same cube, computed by Google's servers.

For each requested year one image is built server-side, the mosaic of that
year's tiles around the site::

    ee.ImageCollection("GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL")
      .filterDate(f"{y}-01-01", f"{y + 1}-01-01").filterBounds(region)
      .mosaic().set("system:time_start", <1 January of y>)

and the images are opened with ``xr.open_dataset(..., engine="ee")`` on the
site's grid from :func:`xembed.grid.target_grid`, the very grid the COG
source reads, so both sources give the same ``x``/``y`` for the same site.
Xee's per-band ``(time, y, x)`` variables are then stacked into
``embeddings(year, band, y, x)`` and wrapped by :func:`xembed.sources.common.site_cube`.

Request planning (DESIGN.md section 5): Xee sends one ``computePixels``
request per band variable and per ``io_chunks`` block. :func:`io_chunks_for`
makes the block the cube's spatial chunk with *all* years, so a chunk of the
cube costs one request per band (not per band per year), each within Earth
Engine's 48 MiB limit; requests run on a shared pool of
:data:`MAX_CONCURRENT_REQUESTS` threads (Earth Engine allows about 40
concurrent requests per project).
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import math
import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from dask.base import tokenize

from xembed.errors import DataNotFoundError, EarthEngineError, SourceError
from xembed.grid import Grid
from xembed.schema import BANDS, COLLECTION
from xembed.sites import Site
from xembed.sources.common import CubeStack, SiteRequest, site_cube, site_request

__all__ = [
    "MAX_CONCURRENT_REQUESTS",
    "REQUEST_BYTE_LIMIT",
    "EarthEngineError",
    "build_collection",
    "count_requests",
    "io_chunks_for",
    "open_embeddings_ee",
]

#: Earth Engine's ``computePixels`` reply limit (48 MiB).
REQUEST_BYTE_LIMIT = 48 * 2**20
#: Bytes one pixel of one band of one year costs in a request. Xee unmasks
#: with the int32 sentinel 2147483647, which float32 cannot hold, so Earth
#: Engine may widen the float band to double: budget 8 bytes, plus the 1 mask
#: byte Earth Engine counts per pixel.
BYTES_PER_VALUE = 8 + 1
#: Requests in flight at once, process-wide (Earth Engine allows about 40
#: per project; the rest is headroom for the user's other work).
MAX_CONCURRENT_REQUESTS = 32
#: Collection property holding each year's number of tiles: Xee's one opening
#: request returns it in the dataset's attrs, so checking years costs nothing.
_COUNTS_PROPERTY = "xembed_tiles_per_year"

_pool_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _request_pool() -> concurrent.futures.ThreadPoolExecutor:
    # One pool for the process bounds concurrency across all dask tasks (and
    # all open cubes), whatever the dask scheduler's thread count.
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=MAX_CONCURRENT_REQUESTS, thread_name_prefix="xembed-ee"
            )
        return _pool


def _import_ee() -> Any:
    try:
        import ee
        import xee  # noqa: F401  (registers engine="ee" with xarray)
    except ImportError as err:
        raise ImportError(
            "source='ee' needs the Earth Engine client and Xee: pip install 'xembed[ee]' "
            "(earthengine-api and xee); or use source='cog', which reads the public mirror "
            "without an account"
        ) from err
    return ee


def _ensure_initialized(ee: Any, project: str | None) -> None:
    """Use the user's ``ee.Initialize(...)`` if there is one, else initialise.

    ``project`` (when given) becomes the project requests are billed to, as
    ``ee.Initialize(project=...)`` would make it.
    """
    if ee.data.is_initialized():
        if project is not None and ee.data._get_state().cloud_api_user_project != project:
            ee.data.setCloudApiUserProject(project)
        return
    try:
        ee.Initialize(project=project)
    except Exception as err:  # EEException, google.auth errors, OSError...
        hint = "" if project else " and pass project='your-cloud-project'"
        raise EarthEngineError(
            f"could not initialise Earth Engine ({type(err).__name__}: {err}). Run "
            f"`earthengine authenticate` once on this machine{hint} (or call "
            "ee.Initialize(project=...) yourself before opening), or use source='cog', "
            "which reads the public mirror of the same data without an account"
        ) from err


def _widen_connection_pool(ee: Any) -> None:
    """Let ``ee``'s HTTP session keep a connection per concurrent request.

    ``ee`` sends everything through one ``requests.Session`` whose default
    pool keeps 10 connections per host: with :data:`MAX_CONCURRENT_REQUESTS`
    in flight, the others would be opened and thrown away each time (a TLS
    handshake per request, and a urllib3 "pool is full" warning).
    """
    import requests.adapters

    session = ee.data._get_state().requests_session
    if session is None:
        return
    adapter = session.get_adapter("https://earthengine.googleapis.com/")
    size = MAX_CONCURRENT_REQUESTS
    # Only a default adapter is replaced: a user's own (retries, proxies) stays.
    if type(adapter) is requests.adapters.HTTPAdapter and adapter._pool_maxsize < size:
        session.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=size))


def io_chunks_for(
    n_years: int,
    height: int,
    width: int,
    *,
    limit: int = REQUEST_BYTE_LIMIT,
    bytes_per_value: int = BYTES_PER_VALUE,
) -> dict[str, int]:
    """Xee ``io_chunks`` for a cube chunk: all years of a window in one request.

    The window is the cube's spatial chunk (``height`` x ``width``), halved
    along its longer side until ``n_years`` years of one band fit Earth
    Engine's request limit. Halving keeps windows dividing the chunk, so a
    chunk is still read by whole requests.

    Parameters
    ----------
    n_years : int
        Years in one request (all the cube's years).
    height, width : int
        The cube's spatial chunk, in pixels.
    limit : int
        Bytes one request may return (Earth Engine: 48 MiB).
    bytes_per_value : int
        Bytes per pixel per band per year, including Earth Engine's mask
        byte (:data:`BYTES_PER_VALUE`).

    Returns
    -------
    dict
        ``{"index": years per request, "height": rows, "width": columns}``.

    Examples
    --------
    >>> io_chunks_for(8, 256, 256)  # 8 x 256 x 256 x 9 B = 4.7 MB: as is
    {'index': 8, 'height': 256, 'width': 256}
    >>> io_chunks_for(8, 2048, 2048)  # 302 MB: halved to 37.7 MB
    {'index': 8, 'height': 1024, 'width': 512}
    """
    if n_years < 1 or height < 1 or width < 1:
        raise ValueError(
            f"io_chunks_for needs positive sizes, got n_years={n_years}, "
            f"height={height}, width={width}"
        )
    if n_years * bytes_per_value > limit:
        raise ValueError(
            f"{n_years} years of one pixel ({n_years * bytes_per_value} B) exceed the "
            f"request limit of {limit} B"
        )
    while n_years * height * width * bytes_per_value > limit:
        if width >= height:
            width = math.ceil(width / 2)
        else:
            height = math.ceil(height / 2)
    return {"index": int(n_years), "height": int(height), "width": int(width)}


def count_requests(
    shape: tuple[int, int],
    chunks: tuple[int, int],
    io_chunks: Mapping[str, int],
    *,
    n_years: int,
    n_bands: int = len(BANDS),
) -> int:
    """``computePixels`` requests needed to read a whole cube.

    One request per band per ``io_chunks`` block: ``n_bands x
    ceil(n_years / index)`` per window, over every io block of every
    ``chunks`` tile (edge tiles are smaller, and Xee starts blocks at each
    tile's corner).

    Examples
    --------
    >>> count_requests((1000, 1000), (256, 256), io_chunks_for(8, 256, 256), n_years=8)
    1024
    """
    total_windows = 0
    for rows in _axis_chunks(shape[0], chunks[0]):
        for cols in _axis_chunks(shape[1], chunks[1]):
            total_windows += math.ceil(rows / io_chunks["height"]) * math.ceil(
                cols / io_chunks["width"]
            )
    return n_bands * math.ceil(n_years / io_chunks["index"]) * total_windows


def _axis_chunks(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


def _year_millis(year: int) -> int:
    return int(_dt.datetime(year, 1, 1, tzinfo=_dt.UTC).timestamp() * 1000)


def build_collection(grid: Grid, years: Iterable[int]) -> Any:
    """The server-side ``ee.ImageCollection`` of one mosaic per year over ``grid``.

    Each image is the mosaic (later tiles on top, masked pixels transparent)
    of the year's tiles that intersect the grid's lon/lat bounding box, with
    ``system:time_start`` set to 1 January. The collection's
    ``xembed_tiles_per_year`` property lists how many tiles each mosaic has,
    so a year without data is caught when opening (a mosaic of nothing has
    no bands, which would shift the stacked years).

    Parameters
    ----------
    grid : xembed.grid.Grid
        The target grid (its lon/lat bounds select the tiles).
    years : iterable of int

    Returns
    -------
    ee.ImageCollection
        Nothing is sent to the server.

    Examples
    --------
    >>> import ee  # doctest: +SKIP
    >>> grid = Grid("EPSG:32722", west=600000.0, north=7500000.0, width=10, height=10)
    >>> build_collection(grid, [2020, 2021])  # doctest: +SKIP
    <ee.imagecollection.ImageCollection object at ...>
    """
    ee = _import_ee()
    mosaics, counts = _yearly(ee, grid, years)
    return ee.ImageCollection(mosaics).set(_COUNTS_PROPERTY, ee.List(counts))


def _yearly(ee: Any, grid: Grid, years: Iterable[int]) -> tuple[list[Any], list[Any]]:
    """Per year: the mosaic over ``grid`` and the number of tiles in it."""
    west, south, east, north = grid.lonlat_bounds
    # Planar lon/lat edges: the same box the COG source matches footprints with.
    region = ee.Geometry.Rectangle([west, south, east, north], None, False)
    tiles = ee.ImageCollection(COLLECTION)
    mosaics, counts = [], []
    for year in years:
        yearly = tiles.filterDate(f"{year}-01-01", f"{year + 1}-01-01").filterBounds(region)
        mosaics.append(yearly.mosaic().set("system:time_start", _year_millis(year)))
        counts.append(yearly.size())
    return mosaics, counts


def _describe(site: Site, years: Iterable[int]) -> str:
    years = list(years)
    span = f"year {years[0]}" if len(years) == 1 else f"years {years}"
    return f"site {site.id!r}, {span}"


@dataclass(frozen=True, eq=False)
class _EarthEngineStack(CubeStack):
    """A lazily indexed ``(year, band, y, x)`` float32 array over Xee's variables.

    Indexing it sends one ``computePixels`` request per selected band (Xee
    splits bigger windows by ``io_chunks``), on the shared request pool, and
    turns a failure into :class:`EarthEngineError` naming the site and years.
    """

    dataset: xr.Dataset  # Xee's, lazily indexed (no dask), one variable per band
    years: tuple[int, ...]
    site: Site
    grid: Grid
    token: str
    server: str | None  # the Earth Engine API the cube was opened on (ee's base URL)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("xembed._EarthEngineStack", self.token)

    def __getitem__(self, key: Any) -> np.ndarray:
        key, squeeze = self.expand_key(key)
        if not all(isinstance(k, slice) for k in key):
            raise TypeError(f"only basic indexing is supported, got {key!r}")
        year_index = range(*key[0].indices(self.shape[0]))
        band_index = range(*key[1].indices(self.shape[1]))
        rows = range(*key[2].indices(self.shape[2]))
        cols = range(*key[3].indices(self.shape[3]))
        out = np.empty((len(year_index), len(band_index), len(rows), len(cols)), np.float32)
        if out.size:
            years = [self.years[i] for i in year_index]
            self._check_session(years)
            # Xee 0.1 ignores slice steps: read the span, then step client-side.
            spans = tuple(slice(r[0], r[-1] + 1) for r in (year_index, rows, cols))
            steps = tuple(slice(None, None, r.step) for r in (year_index, rows, cols))

            def read(band: int) -> np.ndarray:
                variable = self.dataset[BANDS[band]].variable
                return np.asarray(variable[spans].values, dtype=np.float32)[steps]

            futures = {_request_pool().submit(read, b): i for i, b in enumerate(band_index)}
            try:
                for future in concurrent.futures.as_completed(futures):
                    out[:, futures[future]] = future.result()
            except Exception as err:
                for future in futures:
                    future.cancel()
                if isinstance(err, (_import_ee().EEException, OSError)):
                    raise self._error(err, years, rows, cols) from err
                raise
        return out.squeeze(axis=squeeze) if squeeze else out

    def _check_session(self, years: list[int]) -> None:
        """Refuse to read once ``ee`` no longer talks to the server the cube was opened on.

        Xee would send the requests anyway: without a session they fail like
        an overloaded server ("retry later"), and another server (another
        fake) might answer with other data. Re-initialising ``ee`` on the same
        server (``ee.Reset(); ee.Initialize(...)``) is fine.
        """
        state = _import_ee().data._get_state()
        if state.initialized and state.cloud_api_base_url == self.server:
            return
        why = (
            f"ee now talks to {state.cloud_api_base_url}, not {self.server}"
            if state.initialized
            else "ee was reset (ee.Reset()) or is not initialised in this process"
        )
        raise EarthEngineError(
            f"the Earth Engine session the cube of {_describe(self.site, years)} was opened "
            f"with has ended ({why}): compute the cube inside the block or session it was "
            "opened in (e.g. ds.load() inside the `with fake_earthengine():` block), or open "
            "it again in the current session"
        )

    def _error(self, err: Exception, years: list[int], rows: range, cols: range) -> Exception:
        return EarthEngineError(
            f"Earth Engine failed to compute the embeddings of {_describe(self.site, years)} "
            f"(rows {rows.start}:{rows.stop}, columns {cols.start}:{cols.stop} of the "
            f"{self.grid.height} x {self.grid.width} grid) after retrying: {err}. "
            "Too many requests (HTTP 429) or a server error: retry later; a failing "
            "computation: check the project's access to the collection, or use source='cog'"
        )


def open_embeddings_ee(
    where: Site | Any,
    years: int | Iterable[int],
    *,
    project: str | None = None,
    buffer: float = 0.0,
    clip: bool = True,
    chunks: Mapping[str, int] | int | None = None,
    id_field: str | None = None,
) -> xr.Dataset:
    """Open a site's embeddings from Earth Engine, through Xee, as a lazy cube.

    The cube has the schema, grid, coordinates and ``coverage`` of the COG
    source for the same site; values agree with the COG mirror up to its
    int8 quantisation (against :func:`xembed.testing.fake_earthengine`, which
    serves a mirror, they are identical). Opening sends one ``value:compute``
    request (Xee's metadata query) and no pixel request; pixels are computed
    chunk by chunk, one request per band per chunk, when the cube is.

    Parameters
    ----------
    where : Site, shapely geometry, GeoJSON-like mapping, GeoDataFrame or path
        The site, in EPSG:4326 (lon/lat), or a site file or frame holding
        one site (see :func:`xembed.sites.as_site`).
    years : int or iterable of int
        Years to open (the collection starts in 2017).
    project : str, optional
        Google Cloud project to use. Default: the one ``ee`` was initialised
        with (``ee.Initialize(project=...)`` called before this), or, when
        ``ee`` is not initialised yet, ``ee.Initialize`` is called with the
        stored credentials (``earthengine authenticate``). Given while ``ee``
        is initialised with another project, ``ee`` is switched to it
        (``ee.data.setCloudApiUserProject``).
    buffer : float
        Metres of context around the site's bounds.
    clip : bool
        Mask (NaN) pixels with no part inside the polygon (grown by
        ``buffer`` metres, so the context stays); ``coverage`` is the site's.
    chunks : mapping or int, optional
        Dask chunks, as for :func:`xembed.open_embeddings`. Each spatial chunk
        is requested as one ``computePixels`` per band carrying all years
        (split further only past the 48 MiB limit, see :func:`io_chunks_for`);
        bigger chunks mean fewer, larger requests.
    id_field : str, optional
        Column holding the site id, when ``where`` is a site file or frame.

    Returns
    -------
    xarray.Dataset
        ``embeddings(year, band, y, x)`` float32 (dask), ``coverage(y, x)``,
        the site's UTM CRS, attrs with ``source="ee"``. Xee's
        ``encoding["scale_factor"]`` (the pixel size, which would divide
        written values by 10) is not carried over.

    Raises
    ------
    ImportError
        If ``earthengine-api`` or ``xee`` is missing (``pip install 'xembed[ee]'``).
    EarthEngineError
        If Earth Engine cannot be initialised (no credentials: run
        ``earthengine authenticate``, or use ``source="cog"``), or a request
        still fails after the client's retries (HTTP 429/5xx are retried 5
        times with exponential back-off); the message names the site and
        the years. Failures are never turned into NaN or zeros. Computing
        the cube after the ``ee`` session it was opened in has ended (the
        ``fake_earthengine()`` block is over, ``ee.Reset()``) says so,
        before any request.
    DataNotFoundError
        If some year has no tile over the site.
    ValueError
        For bad years, buffer or chunks.

    Examples
    --------
    >>> import xembed
    >>> from xembed.testing import fake_earthengine
    >>> with fake_earthengine():  # doctest: +SKIP
    ...     ds = open_embeddings_ee(xembed.demo_sites()[0], range(2018, 2021))
    ...     ds.embeddings.dims, ds.sizes["year"]
    (('year', 'band', 'y', 'x'), 3)
    """
    request = site_request(where, years, buffer=buffer, chunks=chunks, id_field=id_field)
    ee = _import_ee()
    _ensure_initialized(ee, project)
    _widen_connection_pool(ee)
    stack = _open_stack(ee, request)
    attrs = {"source": "ee", "source_root": f"ee://{COLLECTION}"}
    return site_cube(
        request, stack, clip=clip, attrs=attrs, token=stack.token, prefix="embeddings-ee-"
    )


def _open_stack(ee: Any, request: SiteRequest) -> _EarthEngineStack:
    """Open Xee's dataset of the request's yearly mosaics (one metadata request)."""
    site, years, grid = request.site, request.years, request.grid
    io_chunks = io_chunks_for(request.chunks[0], request.chunks[2], request.chunks[3])
    collection = build_collection(grid, years)
    t = grid.transform
    try:
        with warnings.catch_warnings():
            # Mosaics have no system:id, so Xee's time query comes back empty
            # and it warns before labelling 0..n-1: xembed labels years itself.
            warnings.filterwarnings("ignore", message="Unable to retrieve", category=UserWarning)
            xee_ds = xr.open_dataset(
                collection,
                engine="ee",
                crs=grid.crs.to_string(),
                crs_transform=(t.a, t.b, t.c, t.d, t.e, t.f),
                shape_2d=(grid.width, grid.height),
                chunks=None,  # xembed builds the dask graph (errors, concurrency)
                cache=False,
                io_chunks=io_chunks,
                # One request at a time per band read: the shared pool sets concurrency.
                executor_kwargs={"max_workers": 1},
                # ee's HTTP layer already retries 429/5xx with back-off; Xee's
                # extra retries would also repeat hopeless 400s, many times over.
                getitem_kwargs={"max_retries": 0},
            )
    except Exception as err:
        # A first year without tiles gives a mosaic without bands, on which
        # Xee fails obscurely: find out which years are empty (one request).
        _raise_if_years_empty(ee, grid, years, site)
        if isinstance(err, (ee.EEException, OSError)):
            raise EarthEngineError(
                f"Earth Engine could not open the embeddings of {_describe(site, years)}: "
                f"{err}. Check the project and your access to {COLLECTION!r}, or use "
                "source='cog'"
            ) from err
        raise
    _check_opened(xee_ds, grid, years, site)
    server = ee.data._get_state().cloud_api_base_url
    token = tokenize("ee", server, site.id, site.geometry.wkb, grid, years)
    return _EarthEngineStack(xee_ds, years, site, grid, token, server)


def _raise_if_years_empty(ee: Any, grid: Grid, years: tuple[int, ...], site: Site) -> None:
    try:
        counts = ee.List(_yearly(ee, grid, years)[1]).getInfo()
    except ee.EEException:
        return  # the service itself is failing: report the original error
    _raise_for_counts(counts, years, site)


def _raise_for_counts(counts: Any, years: tuple[int, ...], site: Site) -> None:
    empty = [y for y, n in zip(years, counts, strict=True) if not n]
    if empty:
        raise DataNotFoundError(
            f"Earth Engine's {COLLECTION} has no tiles over {_describe(site, empty)}; the "
            "collection starts in 2017 and the latest year may not be published yet"
        )


def _check_opened(xee_ds: xr.Dataset, grid: Grid, years: tuple[int, ...], site: Site) -> None:
    """Fail loudly if Xee's dataset is not the stack of mosaics xembed asked for."""
    counts = xee_ds.attrs.get(_COUNTS_PROPERTY)
    if counts is None or len(counts) != len(years):
        raise SourceError(
            f"Earth Engine did not return the tile counts xembed asked for ({_COUNTS_PROPERTY}="
            f"{counts!r}); an Xee or ee upgrade may have changed what open_dataset returns"
        )
    _raise_for_counts(counts, years, site)
    names = [str(v) for v in xee_ds.data_vars]
    if names != list(BANDS):
        raise SourceError(
            f"Earth Engine returned bands {names[:5]}... ({len(names)}), expected A00..A63"
        )
    sizes = dict(xee_ds.sizes)
    expected = {"time": len(years), "y": grid.height, "x": grid.width}
    if sizes != expected:
        raise SourceError(f"Xee opened a dataset of sizes {sizes}, expected {expected}")
