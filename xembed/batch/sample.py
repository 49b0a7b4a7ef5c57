"""Sampling embeddings at many points without opening a cube: :func:`sample`.

The batch twin of ``open_embeddings(...).embed.sample(points)`` for points
spread over a region. Each point takes the pixel that contains it on the
native 10 m lattice of its own UTM zone (a point exactly on a pixel edge
takes the pixel to its east / south). Points are grouped by the cell of
that lattice their pixel falls in (the cells :func:`xembed.extract` groups
sites by, :data:`xembed.batch.GROUP_CELL` pixels, cut on the mirror's block
lines): a group reads one lazy cube over the envelope of its pixels, and
dask reads only the chunks that hold a point, once for all the points in
them. Groups run like :func:`xembed.extract`'s (the active dask scheduler or
a ``dask.distributed`` client) and, with ``store=``, are committed to a
resumable Parquet store as they finish.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import pandas as pd
import shapely

from xembed._util import stacklevel, transformer
from xembed.batch.plan import Group, Lattice, chunk_cells, mirror_lattice
from xembed.batch.run import active_client, computed_groups, mirror_cube, progress_bar
from xembed.batch.store import Store, make_manifest
from xembed.batch.table import describe_error
from xembed.cube import Source, resolve_source
from xembed.errors import CoverageWarning, DataNotFoundError
from xembed.grid import Grid
from xembed.schema import BANDS, PIXEL_SIZE
from xembed.sources.common import normalize_years

__all__ = ["sample"]

_SNAP_TOL = 1e-9  # pixels: reprojection noise this close to an edge counts as on it
_MAX_LISTED = 5  # points named in a warning
_GROUPS_IN_FLIGHT = 8


@dataclass(frozen=True)
class _Points:
    """The input points: geometries in ``crs``, their other columns, the lattice pixels."""

    attributes: pd.DataFrame
    epsg: np.ndarray  # UTM zone EPSG code of each point
    west: np.ndarray  # pixel column on its zone's lattice: its west edge is west * 10 m
    north: np.ndarray  # pixel row key: its north edge is north * 10 m
    x: np.ndarray  # the point in its zone's metres
    y: np.ndarray
    hashes: list[str]


def sample(
    points: Any,
    years: int | Iterable[int],
    *,
    source: str | os.PathLike[str] = "sample",
    root: str | os.PathLike[str] | None = None,
    project: str | None = None,
    store: str | os.PathLike[str] | None = None,
    client: Any = None,
    progress: bool = True,
    chunks: Mapping[str, int] | int | None = None,
    pixels: bool = False,
) -> pd.DataFrame:
    """The embeddings at any number of points, one row per point and year.

    The values of ``xembed.open_embeddings(...)`` at the pixel containing
    each point, without opening a cube: points whose pixels fall in the same
    cell of their UTM zone's lattice share one lazy cube, and each chunk of it
    that holds a point is read once for all of them.

    Parameters
    ----------
    points : GeoDataFrame, GeoSeries or iterable of shapely Points
        A GeoDataFrame/GeoSeries in any CRS, or shapely Points in EPSG:4326.
        A GeoDataFrame's other columns (labels, ids) are copied to the rows.
    years : int or iterable of int
        Years to sample, e.g. ``range(2017, 2025)``.
    source, root, project
        As for :func:`xembed.open_embeddings`; a mirror (``"sample"``,
        ``"cog"`` or a folder). For Earth Engine open a cube and use
        ``ds.embed.sample``.
    store : path, optional
        A folder to commit finished groups to (a Parquet dataset, as for
        :func:`xembed.extract`); a re-run with the same arguments reads them
        back and computes only the rest, giving the identical table.
    client : distributed.Client, optional
        Run on this cluster (default: the active client, else the active
        dask scheduler).
    progress : bool
        Show a progress bar over points.
    chunks : mapping or int, optional
        Spatial chunks (and group cells) of the cubes read, as for
        :func:`xembed.extract` (default 256 x 256 pixels).
    pixels : bool
        Only ``False``: points have no area (``ds.embed.sample(polygons,
        pixels=True)`` gives the pixels of polygons).

    Returns
    -------
    pandas.DataFrame
        The input's non-geometry columns, ``year`` (int64), ``x``, ``y``
        (the point in the metres of its UTM zone) and ``A00..A63`` (float64),
        one row per point (input order) and year (as given): the columns of
        ``ds.embed.sample``.
        A point outside the mirror's files, or on nodata that year, has a
        NaN row (one :class:`xembed.CoverageWarning` lists them).
        ``attrs["errors"]``: a DataFrame ``point, error`` of points whose
        group failed to read (input positions; their rows are NaN too and a
        re-run with the same ``store=`` retries them).

    Notes
    -----
    A point takes the pixel of its own UTM zone's 10 m lattice (the zone of
    its longitude, the grid ``open_embeddings`` gives a site around it).
    Within about 30 m of a zone boundary, a cube opened in the other zone
    holds the other lattice's pixels, a few metres apart.

    Examples
    --------
    >>> import shapely, xembed
    >>> pts = [shapely.Point(-48.01, -22.585), shapely.Point(-47.99, -22.59)]
    >>> table = xembed.sample(pts, [2020, 2021], progress=False)
    >>> table.shape, table["year"].tolist()
    ((4, 67), [2020, 2021, 2020, 2021])
    >>> table.attrs["errors"].empty
    True
    """
    if pixels:
        raise ValueError(
            "pixels=True asks for every pixel of a polygon, but xembed.sample takes points; "
            "for polygons open a cube and call ds.embed.sample(polygons, pixels=True)"
        )
    pts = _as_points(points)
    years = normalize_years(years)
    src = resolve_source(source, root=root, project=project, years=years)
    if not src.is_mirror:
        raise ValueError(
            f"xembed.sample reads a mirror (source 'sample', 'cog' or a folder), not {src.kind!r}; "
            "with Earth Engine open a cube (xembed.open_embeddings) and call ds.embed.sample"
        )
    n = len(pts.hashes)
    values = np.full((n, len(years), len(BANDS)), np.nan, dtype=np.float32)
    db: Store | None = None
    done: set[int] = set()
    if store is not None:
        manifest = {**make_manifest(years, ("sample",), src, "int"), "table": "sample"}
        db = Store(store, manifest)
        keys = {(str(i), h): i for i, h in enumerate(pts.hashes)}
        for position, rows in db.load(keys).items():
            values[position] = rows.sort_values("year")[list(BANDS)].to_numpy(np.float32)
            done.add(position)
    groups = _groups(pts, src, chunks)
    todo = [(g, idx) for g, idx in groups if not set(idx.tolist()) <= done]
    failed: dict[int, str] = {}
    bar = progress_bar(n, len(done), progress, desc="sample", unit="point")
    try:
        for (_group, idx), result in _run(todo, src, years, chunks, pts, active_client(client)):
            if isinstance(result, Exception):
                failed.update(dict.fromkeys(idx.tolist(), describe_error(result)))
            else:
                values[idx] = result
                if db is not None:
                    db.commit(_part(idx, years, result, pts.hashes))
            bar.update(len(set(idx.tolist()) - done))
    finally:
        bar.close()
    table = _table(pts, years, values)
    table.attrs["errors"] = pd.DataFrame(
        {"point": pd.Series(sorted(failed), dtype="int64"),
         "error": pd.Series([failed[p] for p in sorted(failed)], dtype=object)}
    )  # fmt: skip
    _warn(values, years, failed)
    if failed:
        listed = "; ".join(f"point {p}: {failed[p]}" for p in sorted(failed)[:_MAX_LISTED])
        warnings.warn(
            f"xembed.sample: {len(failed)} of {n} points failed ({listed}); their rows are NaN "
            "and the failures in table.attrs['errors'] (re-run with the same store= to retry "
            "only them)",
            UserWarning,
            stacklevel=stacklevel(),
        )
    return table


def _as_points(points: Any) -> _Points:
    """The points' lattice pixels, zones and attributes, whatever the input type."""
    crs: Any = "EPSG:4326"
    attributes = None
    if hasattr(points, "geometry") and hasattr(points, "crs"):  # GeoDataFrame / GeoSeries
        if points.crs is None:
            raise ValueError(
                "points has no CRS; set one (points.set_crs('EPSG:4326')) or pass shapely "
                "Points in longitude/latitude"
            )
        crs = points.crs
        geoms = np.asarray(points.geometry.values, dtype=object)
        if hasattr(points, "columns"):
            attributes = pd.DataFrame(points.drop(columns=points.geometry.name)).reset_index(
                drop=True
            )
    else:
        geoms = np.asarray([points] if isinstance(points, shapely.Geometry) else list(points))
    bad = [i for i, g in enumerate(geoms) if not isinstance(g, shapely.Point) or g.is_empty]
    if bad:
        kinds = sorted({type(geoms[i]).__name__ for i in bad})
        raise ValueError(
            f"xembed.sample takes points, but features {bad[:_MAX_LISTED]} are {kinds}; pass "
            "shapely Points (polygons: open a cube and call ds.embed.sample, or xembed.extract "
            "for their means)"
        )
    if len(geoms) == 0:
        raise ValueError("points is empty; pass at least one shapely Point")
    xy = shapely.get_coordinates(geoms)
    lon, lat = transformer(crs, "EPSG:4326").transform(xy[:, 0], xy[:, 1])
    zone = np.clip(np.floor((np.asarray(lon) + 180.0) / 6.0).astype(int) + 1, 1, 60)
    epsg = np.where(np.asarray(lat) >= 0, 32600, 32700) + zone
    px, py = np.empty(len(xy)), np.empty(len(xy))
    for code in np.unique(epsg):
        sel = epsg == code
        px[sel], py[sel] = transformer(crs, f"EPSG:{code}").transform(xy[sel, 0], xy[sel, 1])
    west = _edge(px / PIXEL_SIZE, np.floor)  # on a vertical edge: the pixel to the east
    north = _edge(py / PIXEL_SIZE, np.ceil)  # on a horizontal edge: the pixel to the south
    hashes = [hashlib.sha1(shapely.to_wkb(g, hex=True).encode()).hexdigest()[:16] for g in geoms]
    if attributes is None:
        attributes = pd.DataFrame(index=range(len(geoms)))
    return _Points(attributes, epsg, west, north, px, py, hashes)


def _edge(q: np.ndarray, rounding: Any) -> np.ndarray:
    """Pixel edge index: ``rounding(q)``, or the nearest edge if ``q`` is on it (noise)."""
    k = np.round(q)
    return np.where(np.abs(q - k) <= _SNAP_TOL, k, rounding(q)).astype(np.int64)


def _groups(
    pts: _Points, source: Source, chunks: Mapping[str, int] | int | None
) -> list[tuple[Group, np.ndarray]]:
    """``(group, point positions)``: points whose pixels share a lattice cell and zone."""
    import pyproj

    ch, cw = chunk_cells(chunks)
    out = []
    for code in np.unique(pts.epsg).tolist():
        crs = pyproj.CRS.from_epsg(code)
        lat = mirror_lattice(str(source.root), f"EPSG:{code}") if source.root else Lattice()
        sel = np.flatnonzero(pts.epsg == code)
        x0, y0 = round(lat.x0 / PIXEL_SIZE), round(lat.y0 / PIXEL_SIZE)
        cells = np.column_stack([(y0 - pts.north[sel]) // ch, (pts.west[sel] - x0) // cw])
        keys, inverse = np.unique(cells, axis=0, return_inverse=True)
        for k, (row, col) in enumerate(keys.tolist()):
            idx = sel[inverse.ravel() == k]
            west, north = int(pts.west[idx].min()), int(pts.north[idx].max())
            grid = Grid(
                crs,
                west=west * PIXEL_SIZE,
                north=north * PIXEL_SIZE,
                width=int(pts.west[idx].max()) - west + 1,
                height=north - int(pts.north[idx].min()) + 1,
            )
            out.append((Group((code, row, col), grid, (), lat), idx))
    return out


def _lazy(
    group: Group,
    idx: np.ndarray,
    pts: _Points,
    source: Source,
    years: tuple[int, ...],
    chunks: Mapping[str, int] | int | None,
) -> Any:
    """A dask Delayed ``(point, year, band)`` float32 array of the group's points, or None.

    None: no file of the mirror under the group in any year (NaN rows).
    """
    try:
        emb = mirror_cube(source, group, years, chunks)
    except DataNotFoundError:
        return None
    rows = round(group.grid.north / PIXEL_SIZE) - pts.north[idx]
    cols = pts.west[idx] - round(group.grid.west / PIXEL_SIZE)
    picked = emb.data.transpose(2, 3, 0, 1).vindex[rows, cols]
    return dask.delayed(np.asarray, pure=True)(picked, dtype=np.float32)


def _run(
    todo: list[tuple[Group, np.ndarray]],
    source: Source,
    years: tuple[int, ...],
    chunks: Mapping[str, int] | int | None,
    pts: _Points,
    client: Any,
) -> Iterator[tuple[tuple[Group, np.ndarray], np.ndarray | Exception]]:
    """Each group's values (or the error it failed with), a few groups at a time."""
    empty = np.full((len(years), len(BANDS)), np.nan, dtype=np.float32)
    for start in range(0, len(todo), _GROUPS_IN_FLIGHT):
        window = todo[start : start + _GROUPS_IN_FLIGHT]
        results: dict[tuple[int, int, int], np.ndarray | Exception | None] = {}
        planned: list[tuple[Group, Any]] = []
        for group, idx in window:
            try:
                task = _lazy(group, idx, pts, source, years, chunks)
            except Exception as err:
                task = err
            if task is None or isinstance(task, Exception):
                results[group.key] = task
            else:
                planned.append((group, task))
        for group, values, failure in computed_groups(planned, client):
            results[group.key] = values if failure is None else failure
        for group, idx in window:
            result = results[group.key]
            yield (
                (group, idx),
                np.broadcast_to(empty, (len(idx), *empty.shape)) if (result is None) else result,
            )


def _part(
    idx: np.ndarray, years: tuple[int, ...], values: np.ndarray, hashes: list[str]
) -> pd.DataFrame:
    """A store part: the group's rows keyed by point position and geometry hash."""
    frame = pd.DataFrame(values.reshape(-1, len(BANDS)), columns=list(BANDS))
    frame.insert(0, "year", np.tile(np.asarray(years, dtype=np.int64), len(idx)))
    frame.insert(0, "site_id", np.repeat(idx.astype(np.int64), len(years)))
    frame["site_hash"] = np.repeat(np.asarray([hashes[i] for i in idx]), len(years))
    return frame


def _table(pts: _Points, years: tuple[int, ...], values: np.ndarray) -> pd.DataFrame:
    n = len(pts.hashes)
    head = pts.attributes.loc[np.repeat(np.arange(n), len(years))].reset_index(drop=True)
    head["year"] = np.tile(np.asarray(years, dtype=np.int64), n)
    head["x"] = np.repeat(pts.x, len(years))
    head["y"] = np.repeat(pts.y, len(years))
    bands = pd.DataFrame(values.reshape(-1, len(BANDS)).astype(np.float64), columns=list(BANDS))
    return pd.concat([head, bands], axis=1)


def _warn(values: np.ndarray, years: tuple[int, ...], failed: Mapping[int, str]) -> None:
    """One CoverageWarning naming the point-years without data (not the failed ones)."""
    empty = np.isnan(values).all(axis=2)
    empty[list(failed)] = False
    where = np.argwhere(empty)
    if not len(where):
        return
    listed = ", ".join(f"point {p} ({years[j]})" for p, j in where[:_MAX_LISTED].tolist())
    more = f", ... ({len(where)} in all)" if len(where) > _MAX_LISTED else ""
    warnings.warn(
        f"xembed.sample: {len(where)} point-years have no data (outside the mirror's files or "
        f"on nodata): {listed}{more}; their rows are NaN (drop them with "
        "table.dropna(subset=['A00']))",
        CoverageWarning,
        stacklevel=stacklevel(),
    )
