"""The notebook's sites, extraction and image calls on xembed's core."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import shapely
import xarray as xr

from xembed import render as _render
from xembed import sites as _sites
from xembed.compat.geometry import EEGeometry, to_shapely, unwrap
from xembed.compat.source import STATE, open_with_source
from xembed.schema import BANDS, COLLECTION, FIRST_YEAR

#: The collection the notebook's calls read (the Earth Engine collection id).
ALPHA_EMBEDDINGS: str = COLLECTION


#: The 64 band names, ``["A00", ..., "A63"]``.
EMBEDDING_BANDS: list[str] = list(BANDS)


#: The notebook's default visualisation: bands A01/A16/A09 stretched from -0.3 to 0.3.
EMBEDDING_VIS_DEFAULT: dict[str, Any] = {"min": -0.3, "max": 0.3, "bands": ["A01", "A16", "A09"]}


_FREQUENCIES = ("yearly",)


_VIS_KEYS = ("min", "max", "bands")


class Site(_sites.Site):
    """An :class:`xembed.Site` whose ``geometry`` is an :class:`EEGeometry`.

    What :func:`load_sites` returns: it is an ``xembed.Site`` (everything
    in xembed takes it), with the notebook's method
    :meth:`extract_continuous` and metre-based ``geometry.buffer``.

    Examples
    --------
    >>> from shapely.geometry import box
    >>> site = Site(3107, 2016, box(-48.0, -22.6, -47.99, -22.59))
    >>> site, type(site.geometry).__name__
    (Site(id=3107, start_year=2016), 'EEGeometry')
    """

    def __post_init__(self) -> None:
        # The core validates a plain shapely polygon; the wrapper goes on afterwards.
        object.__setattr__(self, "geometry", unwrap(self.geometry))
        super().__post_init__()
        object.__setattr__(self, "geometry", EEGeometry(self.geometry))

    def extract_continuous(
        self,
        collection: str,
        start_date: Any,
        end_date: Any,
        reducer: str = "mean",
        frequency: str = "yearly",
    ) -> Any:
        """The original notebook's call; see :func:`xembed.compat.extract_continuous`."""
        return extract_continuous(
            self, collection, start_date, end_date, reducer=reducer, frequency=frequency
        )


def _compat_site(site: _sites.Site) -> Site:
    return Site(site.id, site.start_year, unwrap(site.geometry), site.properties)


def load_sites(source: Any, **kwargs: Any) -> list[Site]:
    """Load site polygons, as :func:`xembed.load_sites` does, as notebook-style sites.

    Parameters
    ----------
    source : str, path, GeoDataFrame or GeoJSON mapping
        As for :func:`xembed.load_sites`.
    **kwargs
        ``id_field``, ``start_year_field``, ``layer``, as for
        :func:`xembed.load_sites`.

    Returns
    -------
    list of Site
        :class:`xembed.Site` objects with :meth:`Site.extract_continuous`
        and an :class:`EEGeometry` ``geometry``.

    Examples
    --------
    >>> import xembed
    >>> sites = load_sites(xembed.sources.sample.demo_sites_path())
    >>> site = sites[6]
    >>> print(site)
    Site(id=3107, start_year=2016)
    """
    return [_compat_site(s) for s in _sites.load_sites(source, **kwargs)]


def _timestamp(value: Any, name: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}={value!r} is not a date; give e.g. {name}='2020-01-01'") from err
    if stamp is pd.NaT:
        raise ValueError(f"{name} is missing; give e.g. {name}='2020-01-01'")
    return stamp.tz_localize(None) if stamp.tzinfo is not None else stamp


def _years_between(start_date: Any, end_date: Any) -> list[int]:
    """The years whose annual image (dated 1 January) falls in ``[start_date, end_date)``."""
    start = _timestamp(start_date, "start_date")
    end = _timestamp(end_date, "end_date")
    if end <= start:
        raise ValueError(
            f"end_date {end.date()} is not after start_date {start.date()}; the range is "
            "[start_date, end_date), as in Earth Engine's filterDate"
        )
    years = [y for y in range(start.year, end.year + 1) if start <= pd.Timestamp(y, 1, 1) < end]
    if not years:
        raise ValueError(
            f"no annual image between {start.date()} and {end.date()}: each year's image is "
            f"dated 1 January (as in Earth Engine), so include one, e.g. "
            f"start_date='{start.year + 1}-01-01'"
        )
    early = [y for y in years if y < FIRST_YEAR]
    if early:
        raise ValueError(
            f"start_date {start.date()} is before the collection, which starts in "
            f"{FIRST_YEAR} (no images for {early[0]}-{early[-1]}); "
            f"use start_date='{FIRST_YEAR}-01-01' or later"
        )
    return years


def _check_collection(collection: Any) -> None:
    if isinstance(collection, str) and collection == ALPHA_EMBEDDINGS:
        return
    raise ValueError(
        f"collection {collection!r} is not supported: xembed reads only the AlphaEarth "
        f"embeddings, ALPHA_EMBEDDINGS ({ALPHA_EMBEDDINGS!r}); for other Earth Engine "
        "datasets use the ee API directly"
    )


def extract_continuous(
    site: Any,
    collection: str,
    start_date: Any,
    end_date: Any,
    reducer: str = "mean",
    frequency: str = "yearly",
) -> pd.DataFrame:
    """A site's polygon statistic per year, as the notebook's table.

    Parameters
    ----------
    site : Site, xembed.Site or geometry
        The site (a geometry in EPSG:4326 gets site id 0).
    collection : str
        Must be :data:`ALPHA_EMBEDDINGS`.
    start_date, end_date : str, date or datetime
        The range ``[start_date, end_date)``, as Earth Engine's
        ``filterDate``: a year is included if its image, dated 1 January,
        falls in it (``'2020-01-01'`` to ``'2023-12-31'`` gives 2020-2023).
    reducer : {"mean", "median", "std", "min", "max", "count"}, default "mean"
        The statistic of the pixels in the polygon, weighted by the
        fraction of each pixel inside it (:func:`xembed.polygon_mean`).
    frequency : {"yearly"}
        The collection has one image per year; nothing else is possible.

    Returns
    -------
    pandas.DataFrame
        Columns ``site_id, year, valid_fraction, valid_ha, A00..A63``, one row per year.

    Raises
    ------
    ValueError
        For another collection or frequency, an unknown reducer, dates
        that are not dates, a range with no 1 January in it or one that
        starts before 2017 (the collection's first year), or years the
        source does not have.

    Examples
    --------
    >>> import xembed
    >>> site = load_sites(xembed.sources.sample.demo_sites_path())[6]
    >>> df = site.extract_continuous(
    ...     ALPHA_EMBEDDINGS, start_date="2020-01-01", end_date="2023-12-31"
    ... )
    >>> df.shape, df["year"].tolist()
    ((4, 68), [2020, 2021, 2022, 2023])
    """
    from xembed.ops import REDUCERS, to_frame

    _check_collection(collection)
    if frequency not in _FREQUENCIES:
        raise ValueError(
            f"frequency={frequency!r} is not supported: the collection has one image per year; "
            "use frequency='yearly'"
        )
    if not isinstance(reducer, str) or reducer not in REDUCERS:
        raise ValueError(
            f"reducer {reducer!r} is not supported; use one of {list(REDUCERS)} (by name)"
        )
    years = _years_between(start_date, end_date)
    where = site if isinstance(site, _sites.Site) else to_shapely(site)
    cube = open_with_source(where, years, clip=True)
    return to_frame(cube, reducer=reducer)  # type: ignore[arg-type]


def _check_year(year: Any) -> int:
    if isinstance(year, bool) or not isinstance(year, (int, np.integer)):
        raise TypeError(f"year must be an int (e.g. 2023), got {year!r}")
    if year < FIRST_YEAR:
        raise ValueError(f"year {year} is before the collection, which starts in {FIRST_YEAR}")
    return int(year)


def _band_list(bands: Any, what: str) -> list[str]:
    if isinstance(bands, str):
        bands = [b.strip() for b in bands.split(",")]
    out = [str(b) for b in bands]
    unknown = [b for b in out if b not in BANDS]
    if unknown or not out:
        raise ValueError(f"{what} {out!r} has unknown band names {unknown}; use names A00..A63")
    return out


def get_embedding_image(geometry: Any, year: int, bands: Sequence[str] | None = None) -> xr.Dataset:
    """The embeddings of one year around a geometry, as a lazy cube.

    Parameters
    ----------
    geometry : EEGeometry, shapely geometry, Site or GeoJSON-like
        Region of interest, in EPSG:4326 (e.g. ``site.geometry``).
    year : int
        Year (2017 onwards, as far as the source goes).
    bands : list of str, optional
        Bands to keep (default all 64).

    Returns
    -------
    xarray.Dataset
        A cube (:func:`xembed.open_embeddings`) with one year, covering
        the geometry's bounds, **not** clipped to it (an Earth Engine image
        is not clipped either). Nothing is read until computed; pass it to
        :func:`render_image`, which reads a wider window if its ``region``
        asks for one.

    Examples
    --------
    >>> import xembed
    >>> site = load_sites(xembed.sources.sample.demo_sites_path())[6]
    >>> img = get_embedding_image(site.geometry, 2023, bands=["A01", "A16", "A09"])
    >>> img.embeddings.dims, img.sizes["year"], img.sizes["band"]
    (('year', 'band', 'y', 'x'), 1, 3)
    """
    year = _check_year(year)
    chosen = None if bands is None else _band_list(bands, "bands")
    where = geometry if isinstance(geometry, _sites.Site) else to_shapely(geometry)
    cube = open_with_source(where, [year], clip=False)
    if chosen is not None:
        cube = cube.sel(band=chosen)
    return cube


def _vis(vis_params: Mapping[str, Any] | None) -> tuple[list[str], Any, Any]:
    params = dict(EMBEDDING_VIS_DEFAULT)
    if vis_params is not None:
        if not isinstance(vis_params, Mapping):
            raise TypeError(
                f"vis_params must be a dict like EMBEDDING_VIS_DEFAULT, got {vis_params!r}"
            )
        unknown = sorted(set(vis_params) - set(_VIS_KEYS))
        if unknown:
            raise ValueError(
                f"vis_params keys {unknown} are not supported; render_image takes "
                f"{list(_VIS_KEYS)} (a linear stretch of three bands), e.g. {EMBEDDING_VIS_DEFAULT}"
            )
        params.update(vis_params)
    bands = _band_list(params["bands"], "vis_params['bands']")
    if len(bands) != 3:
        raise ValueError(f"vis_params['bands'] needs three bands (red, green, blue), got {bands}")

    def stretch(value: Any, key: str) -> Any:
        if isinstance(value, str):
            value = [float(v) for v in value.split(",")]
        arr = np.asarray(value, dtype=float)
        if arr.size not in (1, 3):
            raise ValueError(f"vis_params[{key!r}] must be one number or three, got {value!r}")
        return float(arr.reshape(-1)[0]) if arr.size == 1 else arr.tolist()

    return bands, stretch(params["min"], "min"), stretch(params["max"], "max")


def _dimensions(dimensions: Any) -> int | None:
    if dimensions is None:
        return None
    if isinstance(dimensions, str) and dimensions.strip().isdigit():
        dimensions = int(dimensions)
    if isinstance(dimensions, bool) or not isinstance(dimensions, (int, np.integer)):
        raise ValueError(
            f"dimensions={dimensions!r} is not supported: give the longer side in pixels, "
            "e.g. dimensions=500 (the aspect ratio follows the region), or None for one "
            "frame pixel per 10 m pixel"
        )
    return int(dimensions)


def _setting_of(image: xr.Dataset) -> dict[str, Any]:
    """The source an image was read from (to read a wider window of the same data)."""
    kind, root = image.attrs.get("source"), image.attrs.get("source_root")
    setting = {k: v for k, v in STATE.items() if k == "chunks"}
    if kind in ("sample", "cog") and root:
        return {**setting, "source": kind, "root": root}
    if kind == "ee":
        project = STATE.get("project") if STATE.get("source") == "ee" else None
        return {**setting, "source": "ee", "project": project}
    return dict(STATE)


def _region_image(image: xr.Dataset, region: Any, year: int) -> xr.Dataset:
    """The part of ``image`` inside ``region``; read anew if the region reaches past it."""
    from xembed.grid import target_grid

    geom = to_shapely(region)
    if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.area == 0:
        geom = shapely.box(*geom.bounds)
        if geom.area == 0:
            raise ValueError(
                "region has no area; pass a polygon, e.g. site.geometry.buffer(500).bounds()"
            )
    crs = image.rio.crs
    grid, _ = target_grid(geom, crs=crs)
    x, y = image["x"].values, image["y"].values
    half = 5.0 if x.size < 2 else abs(float(x[1] - x[0])) / 2
    inside = (
        grid.west >= x.min() - half - 1e-6
        and grid.east <= x.max() + half + 1e-6
        and grid.south >= y.min() - half - 1e-6
        and grid.north <= y.max() + half + 1e-6
    )
    if inside:
        return image.sel(x=slice(grid.west, grid.east), y=slice(grid.north, grid.south))
    # Like an Earth Engine image, the data go on past the window the cube was opened for.
    wider = open_with_source(geom, [year], clip=False, setting=_setting_of(image))
    return wider.sel(band=[str(b) for b in image["band"].values])


def render_image(
    image: xr.Dataset,
    region: Any = None,
    vis_params: Mapping[str, Any] | None = None,
    dimensions: int | None = 500,
    boundary: Any = None,
    label: str | None = None,
) -> _render.Frame:
    """Render an embedding image as a picture, with a boundary and a label.

    Parameters
    ----------
    image : xarray.Dataset
        One year, from :func:`get_embedding_image` (or any one-year cube).
    region : EEGeometry, shapely geometry, Site or GeoJSON-like, optional
        The area to show, in EPSG:4326, e.g.
        ``site.geometry.buffer(500).bounds()``; default the image's window.
        Data beyond the image's window are read from the same source.
    vis_params : dict, optional
        ``{"min": ..., "max": ..., "bands": [r, g, b]}`` (numbers or three
        numbers each); missing keys come from :data:`EMBEDDING_VIS_DEFAULT`.
    dimensions : int or None, default 500
        Pixels on the longer side; pixels are enlarged by nearest neighbour.
        ``None``: one frame pixel per 10 m pixel.
    boundary : EEGeometry, shapely geometry or Site, optional
        Polygon to outline (default none).
    label : str, optional
        Text at the top left (default none).

    Returns
    -------
    xembed.render.Frame
        ``(height, width, 3)`` uint8, north up, in the image's UTM zone. A
        numpy array that Jupyter displays as a picture (``_repr_png_``).
        Pixels without data show as a dark grey checkerboard.

    Raises
    ------
    ValueError
        For unsupported ``vis_params`` keys (e.g. ``palette``), bands not in
        the image, ``dimensions`` that are not a number of pixels, or an
        image with several years.

    Examples
    --------
    >>> import xembed
    >>> site = load_sites(xembed.sources.sample.demo_sites_path())[6]
    >>> img = render_image(
    ...     image=get_embedding_image(site.geometry, 2023),
    ...     region=site.geometry.buffer(500).bounds(),
    ...     vis_params=EMBEDDING_VIS_DEFAULT,
    ...     dimensions=400,
    ...     boundary=site.geometry,
    ...     label="Embeddings 2023 (A01/A16/A09)",
    ... )
    >>> img.shape, img.dtype
    ((392, 400, 3), dtype('uint8'))
    """
    if not isinstance(image, xr.Dataset) or "embeddings" not in image:
        raise TypeError(
            "image must be a cube from get_embedding_image(geometry, year) (an xarray.Dataset "
            f"with 'embeddings'), got {type(image).__name__}"
        )
    years = [int(y) for y in image["year"].values]
    if len(years) != 1:
        raise ValueError(
            f"image holds the years {years}; render_image draws one: pass "
            "get_embedding_image(geometry, year) or image.sel(year=[year])"
        )
    bands, vmin, vmax = _vis(vis_params)
    have = [str(b) for b in image["band"].values]
    missing = [b for b in bands if b not in have]
    if missing:
        raise ValueError(
            f"vis_params bands {missing} are not in the image, which has {have}; "
            "open it with get_embedding_image(geometry, year) (all bands) or those bands"
        )
    size = _dimensions(dimensions)
    shown = image if region is None else _region_image(image, region, years[0])
    return _render.render(
        shown,
        years[0],
        boundary=False if boundary is None else to_shapely(boundary),
        label=False if label is None else str(label),
        dimensions=size,
        bands=bands,
        vmin=vmin,
        vmax=vmax,
    )


def export_frames_as_strip(frames: Iterable[Any], path: str | os.PathLike[str]) -> os.PathLike[str]:
    """Write frames side by side into one PNG (see :func:`xembed.render.save_strip`).

    Examples
    --------
    >>> import os, tempfile
    >>> frame = np.zeros((20, 30, 3), dtype=np.uint8)
    >>> path = export_frames_as_strip([frame, frame], os.path.join(tempfile.mkdtemp(), "s.png"))
    >>> path.name
    's.png'
    """
    return _render.save_strip(list(frames), path)


def export_frames_as_gif(
    frames: Iterable[Any], path: str | os.PathLike[str], duration_ms: float = 700
) -> os.PathLike[str]:
    """Write frames as an animated GIF that loops (see :func:`xembed.render.save_gif`).

    Examples
    --------
    >>> import os, tempfile
    >>> frames = [np.full((20, 30, 3), v, dtype=np.uint8) for v in (0, 255)]
    >>> export_frames_as_gif(frames, os.path.join(tempfile.mkdtemp(), "a.gif")).suffix
    '.gif'
    """
    return _render.save_gif(list(frames), path, duration_ms=duration_ms)
