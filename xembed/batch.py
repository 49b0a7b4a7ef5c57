"""Batch extraction: yearly statistics of many sites into one tidy table.

:func:`extract` is the scale-out twin of
``open_embeddings(site, years).embed.polygon_mean()`` in a loop: it gives the
same numbers (within float rounding) for any number of sites, reads each file
window once for all the sites under it, runs on whatever dask scheduler is
active, survives failing sites, and with ``store=`` resumes after a crash.

How the work is cut
-------------------
Each site gets the grid :func:`xembed.open_embeddings` would give it (its own
UTM zone, the native 10 m lattice). Sites are then *grouped*: same UTM zone,
and the centre of their grid in the same square cell of :data:`GROUP_CELL`
pixels (2.56 km, the default chunk size) of that zone's lattice. A group
opens one lazy cube over the envelope of its sites' grids (``clip=False``)
and reduces all its sites at once: ``"mean"`` with
:func:`xembed.ops.zonal_mean` (one pass; chunks no site touches are never
read), the other statistics per site with :func:`xembed.ops.polygon_mean` on
the site's window of the same cube, in the same dask computation, so each
chunk is read once for every statistic and site. The cell bounds every
envelope to a cell plus the overhang of its sites: far-apart sites never
share a cube, and a cube is lazy, so only chunks under sites are read.

Groups are computed a few at a time (:func:`dask.compute` on the active
scheduler, or futures on a ``dask.distributed`` client) and each finished
group is committed (``store=``) before the next results are awaited.

The table
---------
One row per site, year and statistic: ``site_id, year, stat, A00..A63``,
float64, sorted by the sites' input order, then the years in the order
given, then ``stats`` in the order given. Every statistic, ``"count"``
included, fills the 64 band columns: ``"count"`` is the area with data in
pixels (sum of coverage), the same in every band because the mirror marks
missing data in all bands at once; it is kept per band so that the table
stays rectangular and equals :func:`xembed.ops.polygon_mean` band by band.

The store
---------
``store=PATH`` is a folder that ``pandas.read_parquet(PATH)`` (pyarrow)
reads as one Parquet dataset::

    PATH/_xembed_extract.json     what the store holds: years, stats, source, format
    PATH/part-<hash>.parquet      one committed group: its sites' finished rows
    PATH/_errors.parquet          failures of the last run (information only)

A part is written to a hidden temporary name (``.part-...tmp``), flushed to
disk and renamed into place with :func:`os.replace`, so a part file either
holds a whole group or does not exist; names starting with ``.`` or ``_``
are never read back as data (pyarrow ignores them too). A site is *done*
when a part holds it with the same geometry (parts carry a ``site_hash``
column); only sites with no failure at all are committed, so failed sites
(and sites with a failed year) are tried again on every run. A re-run
groups all the sites exactly as before and recomputes only groups with a
site not done, so the final table is identical, bit for bit, to an
uninterrupted run's. Two processes must not write one store at once.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import dask
import dask.array as da
import numpy as np
import pandas as pd
import shapely
import xarray as xr

from xembed._util import stacklevel
from xembed.cube import Source, resolve_source
from xembed.errors import DataNotFoundError
from xembed.grid import Grid, coverage_fraction, target_grid
from xembed.ops import REDUCERS, Reducer, polygon_mean, zonal_mean
from xembed.schema import BANDS, PIXEL_SIZE
from xembed.sites import Site, as_sites

__all__ = [
    "GROUP_CELL",
    "MAX_GROUP_CELLS",
    "MAX_GROUP_PIXELS",
    "STORE_FORMAT",
    "Group",
    "Lattice",
    "extract",
    "group_sites",
    "mirror_lattice",
]

#: Side of the cells (pixels of the zone's 10 m lattice) that link sites into
#: groups: the default chunk size, 2.56 km. ``extract`` uses its chunk size.
GROUP_CELL = 256
#: Largest side of a group's envelope, in cells (8 x 2.56 km = 20 km by default).
MAX_GROUP_CELLS = 8
#: Most pixels a group's sites may cover (~2600 ha): bounds the per-group
#: (site, pixel, weight) table that travels in the dask graph (~32 bytes per
#: pixel, ~8 MB) and the work lost if a group fails or is interrupted.
MAX_GROUP_PIXELS = 1 << 18
#: Version of the store layout written in ``_xembed_extract.json``.
STORE_FORMAT = 1

_MANIFEST = "_xembed_extract.json"
_ERRORS = "_errors.parquet"
_PART_PREFIX = "part-"
_TMP_MAX_AGE = 3600.0  # seconds after which a leftover temporary file is removed
_GROUPS_PER_WORKER = 2  # groups in flight per dask worker thread/process
_MAX_LISTED = 5  # failures named in the warning


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Lattice:
    """Where a UTM zone's files have their internal tile (block) edges.

    ``x0``/``y0`` is a corner of a block (metres); ``block`` its side in
    pixels, 0 if unknown. Groups and chunks are cut along these lines, so a
    chunk read decodes whole blocks only once.
    """

    x0: float = 0.0
    y0: float = 0.0
    block: int = 0


@dataclass(frozen=True)
class Member:
    """One site of a group: its position in the input, its grid and polygon on it."""

    position: int
    site: Site
    grid: Grid
    projected: shapely.Geometry


@dataclass(frozen=True)
class Group:
    """Sites that share one cube: same UTM zone, grid centres in one cell.

    ``grid`` is the envelope of the members' grids (on the same lattice), so
    each member's grid is a window of it.
    """

    key: tuple[int, int, int]
    grid: Grid
    members: tuple[Member, ...]
    lattice: Lattice = Lattice()

    def window(self, member: Member) -> tuple[slice, slice]:
        """Rows and columns of ``member``'s grid inside the group's grid."""
        r0 = round((self.grid.north - member.grid.north) / self.grid.res)
        c0 = round((member.grid.west - self.grid.west) / self.grid.res)
        return slice(r0, r0 + member.grid.height), slice(c0, c0 + member.grid.width)

    def singles(self) -> list[Group]:
        """One group per member (to isolate a failure)."""
        return [Group(self.key, m.grid, (m,), self.lattice) for m in self.members]

    def spatial_chunks(self, rows: int, cols: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Chunk sizes of ``rows`` x ``cols`` pixels, cut on the lattice's lines.

        The lines are those :func:`group_sites` cut cells on, so a cell is a
        chunk and is read once, by one group.
        """
        res = self.grid.res
        first_row = round((self.grid.north - self.lattice.y0) / res) % rows
        first_col = round((self.lattice.x0 - self.grid.west) / res) % cols
        return _cut(self.grid.height, first_row, rows), _cut(self.grid.width, first_col, cols)


def _cut(n: int, first: int, step: int) -> tuple[int, ...]:
    """Sizes of ``n`` pixels cut at ``first``, ``first + step``, ... (all > 0).

    Examples
    --------
    >>> _cut(10, 3, 4), _cut(10, 0, 4), _cut(2, 3, 4)
    ((3, 4, 3), (4, 4, 2), (2,))
    """
    edges = [0, *range(first if first > 0 else step, n, step), n]
    return tuple(b - a for a, b in itertools.pairwise(edges) if b > a)


def _envelope(members: Sequence[Member]) -> Grid:
    first = members[0].grid
    res = first.res
    west = min(round(m.grid.west / res) for m in members)
    north = max(round(m.grid.north / res) for m in members)
    east = max(round(m.grid.east / res) for m in members)
    south = min(round(m.grid.south / res) for m in members)
    return Grid(
        crs=first.crs, west=west * res, north=north * res, width=east - west, height=north - south
    )


def _find(parent: list[int], i: int) -> int:
    """Union-find root of ``i`` (with path halving)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _split(
    indices: list[int], spans: Sequence[tuple[int, int, int, int]], cell: tuple[int, int]
) -> list[list[int]]:
    """Cut a linked set of sites until each part is small enough (k-d, on cell lines).

    A part is small enough when its envelope spans at most
    :data:`MAX_GROUP_CELLS` cells each way and its sites cover at most
    :data:`MAX_GROUP_PIXELS` pixels. Cuts fall on cell lines where possible,
    so only the cells that sites straddle are read by both sides.
    """
    r0 = min(spans[i][0] for i in indices)
    r1 = max(spans[i][1] for i in indices)
    c0 = min(spans[i][2] for i in indices)
    c1 = max(spans[i][3] for i in indices)
    pixels = sum((spans[i][1] - spans[i][0]) * (spans[i][3] - spans[i][2]) for i in indices)
    n_rows = (r1 - 1) // cell[0] - r0 // cell[0] + 1
    n_cols = (c1 - 1) // cell[1] - c0 // cell[1] + 1
    if len(indices) == 1 or (max(n_rows, n_cols) <= MAX_GROUP_CELLS and pixels <= MAX_GROUP_PIXELS):
        return [indices]
    axis = 0 if n_rows * cell[0] >= n_cols * cell[1] else 2  # cut across the longer side
    step = cell[0] if axis == 0 else cell[1]
    centre = {i: (spans[i][axis] + spans[i][axis + 1]) // 2 for i in indices}
    ordered = sorted(indices, key=lambda i: (centre[i], i))
    median = centre[ordered[len(ordered) // 2]]
    line = round(median / step) * step  # the cell line nearest the median
    low = [i for i in ordered if centre[i] < line]
    if not low or len(low) == len(ordered):  # all in one cell: cut at the median
        low = ordered[: len(ordered) // 2]
    high = [i for i in ordered if i not in set(low)]
    return _split(sorted(low), spans, cell) + _split(sorted(high), spans, cell)


def group_sites(
    sites: Sequence[Site],
    *,
    lattice: Callable[[str], Lattice] | None = None,
    cell: int | tuple[int, int] = GROUP_CELL,
) -> tuple[list[Group], list[tuple[int, Exception]]]:
    """Group sites that share reads: same UTM zone, linked by the cells they touch.

    Each site gets the grid :func:`xembed.open_embeddings` would give it. The
    zone's lattice is cut into cells of ``cell`` pixels (the chunks a group's
    cube is read in); sites that touch a common cell, directly or through
    other sites, form one group, so every cell is read by one group only. A
    group whose envelope would span more than :data:`MAX_GROUP_CELLS` cells,
    or whose sites cover more than :data:`MAX_GROUP_PIXELS` pixels, is cut in
    two on a cell line, recursively (:func:`_split`): an envelope never
    explodes and far-apart sites never share a cube. Pure planning: no pixel
    is read.

    Parameters
    ----------
    sites : sequence of Site
        The sites, in EPSG:4326.
    lattice : callable, optional
        ``lattice(crs)`` gives the :class:`Lattice` of a zone's files (``crs``
        like ``"EPSG:32722"``); cells start on its lines. Default: from
        easting and northing 0.
    cell : int or (int, int)
        Cell rows and columns in pixels (default :data:`GROUP_CELL`).

    Returns
    -------
    groups : list of Group
        In a deterministic order (zone, then north to south, west to east);
        members in input order.
    failed : list of (int, Exception)
        Input positions of sites whose grid could not be made, and why.

    Examples
    --------
    >>> import xembed
    >>> groups, failed = group_sites(xembed.demo_sites())
    >>> sum(len(g.members) for g in groups), failed
    (10, [])
    >>> sorted({g.grid.crs.to_epsg() for g in groups})
    [32722, 32723]
    """
    ch, cw = (cell, cell) if isinstance(cell, int) else cell
    if min(ch, cw) <= 0:
        raise ValueError(f"cell must be a positive number of pixels, got {cell!r}")
    zones: dict[int, list[Member]] = {}
    lattices: dict[int, Lattice] = {}
    failed: list[tuple[int, Exception]] = []
    for position, site in enumerate(sites):
        try:
            grid, projected = target_grid(site.geometry)
        except Exception as err:
            failed.append((position, err))
            continue
        epsg = int(grid.crs.to_epsg() or 0)
        if epsg not in lattices:
            lattices[epsg] = lattice(grid.crs.to_string()) if lattice else Lattice()
        zones.setdefault(epsg, []).append(Member(position, site, grid, projected))

    groups: list[tuple[tuple[int, int, int, int], Group]] = []
    for epsg, members in zones.items():
        lat = lattices[epsg]
        # Pixel spans of each site, from the lattice origin (rows run south).
        spans = []
        for m in members:
            res = m.grid.res
            c0, c1 = round((m.grid.west - lat.x0) / res), round((m.grid.east - lat.x0) / res)
            r0, r1 = round((lat.y0 - m.grid.north) / res), round((lat.y0 - m.grid.south) / res)
            spans.append((r0, r1, c0, c1))
        parent = list(range(len(members)))
        owner: dict[tuple[int, int], int] = {}
        for i, (r0, r1, c0, c1) in enumerate(spans):
            for row in range(r0 // ch, (r1 - 1) // ch + 1):
                for col in range(c0 // cw, (c1 - 1) // cw + 1):
                    j = owner.setdefault((row, col), i)
                    parent[_find(parent, i)] = _find(parent, j)
        components: dict[int, list[int]] = {}
        for i in range(len(members)):
            components.setdefault(_find(parent, i), []).append(i)
        for indices in components.values():
            for part in _split(sorted(indices), spans, (ch, cw)):
                chosen = tuple(members[i] for i in part)
                first = min(spans[i][0] for i in part), min(spans[i][2] for i in part)
                order = (epsg, first[0], first[1], chosen[0].position)
                groups.append((order, Group((epsg, *first), _envelope(chosen), chosen, lat)))
    return [g for _, g in sorted(groups, key=lambda item: item[0])], failed


@functools.lru_cache(maxsize=128)
def mirror_lattice(root: str, crs: str) -> Lattice:
    """The block lattice of a mirror's files in one UTM zone.

    One file header gives the block size and the row order (bottom-up files
    start their blocks at the south edge); the index gives every file's
    corner. The lattice is known if at least half of the zone's files put
    their blocks on the same lines (the public mirror's files share one grid
    per zone), else unknown (the default :class:`Lattice`: chunks then start
    at each group's corner). Unknown too if no file of the zone is there or
    its header cannot be read: an optimisation only, never an error.

    Examples
    --------
    >>> from xembed.sources.sample import sample_root
    >>> mirror_lattice(str(sample_root()), "EPSG:32722")  # its files are staggered
    Lattice(x0=0.0, y0=0.0, block=0)
    """
    import rasterio

    from xembed.sources import cog

    try:
        index = cog._load_index(str(root).rstrip("/"))
        rows = index[index["crs"].astype(str) == crs].sort_values("path")
        rows = cog._with_hrefs(str(root).rstrip("/"), rows)
        if rows.empty:
            return Lattice()
        href = str(rows["href"].iloc[0])
        with rasterio.Env(**cog._GDAL_ENV), rasterio.open(cog._gdal_path(href)) as src:
            block_rows, block_cols = src.block_shapes[0]
            t = src.transform
    except Exception:  # an optimisation only: never fail the batch over it
        return Lattice()
    if block_rows != block_cols or abs(abs(t.a) - PIXEL_SIZE) > 1e-9:
        return Lattice()
    # Column 0 and row 0 (the south row of a bottom-up file) start blocks.
    step = block_rows * PIXEL_SIZE
    x0 = rows["utm_west"].to_numpy(dtype=float)
    y0 = rows["utm_south" if t.e > 0 else "utm_north"].to_numpy(dtype=float)
    keys = pd.Series(list(zip(np.round(x0 % step, 3), np.round(y0 % step, 3), strict=True)))
    counts = keys.value_counts()
    if counts.iloc[0] < 0.5 * len(keys):
        return Lattice()
    rx, ry = counts.index[0]
    return Lattice(x0=float(rx), y0=float(ry), block=int(block_rows))


# --------------------------------------------------------------------------- sites and args


def _as_sites(sites: Any) -> list[Site]:
    """A list of Sites from a path, a GeoDataFrame, one site, or an iterable of sites."""
    out = as_sites(sites)
    if not out:
        raise ValueError("sites is empty; pass at least one site (e.g. xembed.demo_sites())")
    seen: dict[str, Any] = {}
    for site in out:
        key = str(site.id)
        if key in seen:
            raise ValueError(
                f"site ids {seen[key]!r} and {site.id!r} are the same as text (or repeated); "
                "give every site its own id (load_sites(..., id_field=...) picks the column)"
            )
        seen[key] = site.id
    return out


def _normalize_stats(stats: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(stats, str):
        stats = (stats,)
    out = tuple(str(s) for s in stats)
    if not out:
        raise ValueError(f"stats is empty; pass some of {list(REDUCERS)}, e.g. ('mean',)")
    unknown = [s for s in out if s not in REDUCERS]
    if unknown:
        raise ValueError(f"unknown stats {unknown}; expected some of {list(REDUCERS)}")
    if len(set(out)) != len(out):
        raise ValueError(f"stats {list(out)} repeat a statistic; pass each once")
    return out


def _site_hash(site: Site) -> str:
    return hashlib.sha1(shapely.to_wkb(site.geometry, hex=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- cubes


def _mirror_cube(
    source: Source, group: Group, years: tuple[int, ...], chunks: Mapping[str, int] | int | None
) -> xr.DataArray:
    """Lazy ``(year, band, y, x)`` embeddings of a mirror over ``grid`` (not clipped).

    Built like :func:`xembed.open_embeddings` builds a site's cube, on a given
    grid. Years without any file over the grid stay empty (NaN) instead of
    failing the group: the sites are checked one by one afterwards.
    """
    from xembed.sources import cog
    from xembed.sources.common import chunk_sizes, lazy_array, normalize_chunks

    assert source.root is not None
    grid = group.grid
    try:
        plan = cog.plan_mosaic(source.root, grid, years)
    except DataNotFoundError:
        per_year = []
        for year in years:
            try:
                per_year.append(cog.plan_mosaic(source.root, grid, [year])[0])
            except DataNotFoundError:
                per_year.append(())
        if not any(per_year):
            raise  # nothing at all under the group: each site fails with this message
        plan = tuple(per_year)
    reader = cog.MosaicReader(grid, years, plan)
    spec = normalize_chunks(chunks)
    year_chunk, band_chunk, _, _ = chunk_sizes(spec, reader.shape)
    # the cell size itself, not clipped to the grid: chunks cut on the cell lines
    rows, cols = group.spatial_chunks(
        grid.height if spec["y"] in (-1, 0) else spec["y"],
        grid.width if spec["x"] in (-1, 0) else spec["x"],
    )
    chunk_tuple: Any = (year_chunk, band_chunk, rows, cols)
    data = lazy_array(reader, chunk_tuple)
    emb = xr.DataArray(
        data,
        dims=("year", "band", "y", "x"),
        coords={
            "year": np.asarray(years, dtype=np.int64),
            "band": np.asarray(BANDS),
            "y": grid.y,
            "x": grid.x,
        },
        name="embeddings",
    )
    return emb.rio.write_crs(grid.crs)


def _site_cube(emb: xr.DataArray, group: Group, member: Member) -> xr.Dataset:
    """The member's window of the group cube with its coverage: its own clipped cube."""
    rows, cols = group.window(member)
    window = emb.isel(y=rows, x=cols)
    cov = xr.DataArray(
        coverage_fraction(member.projected, member.grid),
        dims=("y", "x"),
        coords={"y": window["y"], "x": window["x"]},
    )
    return xr.Dataset({"embeddings": window.where(cov > 0), "coverage": cov})


def _cells(chunks: Mapping[str, int] | int | None) -> tuple[int, int]:
    """Group cells for these chunks: one cell per chunk (``-1``: the default size)."""
    from xembed.sources.common import normalize_chunks

    spec = normalize_chunks(chunks)
    return (
        spec["y"] if spec["y"] > 0 else GROUP_CELL,
        spec["x"] if spec["x"] > 0 else GROUP_CELL,
    )


def _collect(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


def _lazy_group(
    group: Group,
    source: Source,
    years: tuple[int, ...],
    stats: tuple[str, ...],
    chunks: Mapping[str, int] | int | None,
) -> Any:
    """One dask Delayed giving, per statistic, a ``(site, year, band)`` float64 array."""
    sites = [m.site for m in group.members]
    if source.is_mirror:
        emb = _mirror_cube(source, group, years, chunks)
        cubes: list[xr.Dataset] | None = None
    else:
        from xembed.cube import open_embeddings

        # Earth Engine computes the reads server-side: one cube per site.
        (member,) = group.members
        cube = open_embeddings(
            member.site, years, source="ee", project=source.project, clip=False, chunks=chunks
        )
        emb = cube["embeddings"]
        cubes = [cube.assign(embeddings=cube["embeddings"].where(cube["coverage"] > 0))]
    arrays = []
    for stat in stats:
        if stat == "mean":
            arrays.append(zonal_mean(emb, sites).data)
            continue
        if cubes is None:
            cubes = [_site_cube(emb, group, m) for m in group.members]
        reducer = cast(Reducer, stat)
        arrays.append(da.stack([polygon_mean(c, reducer=reducer).data for c in cubes]))
    return dask.delayed(_collect, pure=True)(*arrays)


# --------------------------------------------------------------------------- results


@dataclass
class _Outcome:
    """What one group produced: finished rows (by input position) and failures."""

    rows: dict[int, pd.DataFrame] = field(default_factory=dict)
    failed: dict[int, list[tuple[int | None, str]]] = field(default_factory=dict)


def _describe_error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _site_frame(
    member: Member,
    values: Sequence[np.ndarray],
    index: int,
    years: tuple[int, ...],
    stats: tuple[str, ...],
    keep: Sequence[int],
) -> pd.DataFrame:
    """Rows of one site: years ``keep`` (positions) x stats, in year then stat order."""
    block = np.stack([v[index] for v in values], axis=1)  # (year, stat, band)
    block = block[list(keep)].reshape(-1, len(BANDS))
    frame = pd.DataFrame(block, columns=list(BANDS))
    frame.insert(0, "stat", [s for _ in keep for s in stats])
    frame.insert(0, "year", np.asarray([years[j] for j in keep for _ in stats], dtype=np.int64))
    frame.insert(0, "position", member.position)
    return frame


def _no_data_years(values: Sequence[np.ndarray], index: int, stats: tuple[str, ...]) -> list[int]:
    """Year positions where the site has no valid pixel (every statistic empty)."""
    empty = None
    for stat, v in zip(stats, values, strict=True):
        site = v[index]
        this = (site == 0).all(axis=-1) if stat == "count" else np.isnan(site).all(axis=-1)
        empty = this if empty is None else empty & this
    assert empty is not None
    return [int(j) for j in np.flatnonzero(empty)]


def _missing_file_years(
    source: Source, member: Member, years: tuple[int, ...], candidates: list[int]
) -> dict[int, str]:
    """Of the years (positions) without a valid pixel, those without any file.

    Exactly the check :func:`xembed.open_embeddings` makes for the site: a year
    with a file but only nodata under the site is kept (NaN), as there.
    """
    from xembed.sources import cog

    if not candidates or not source.is_mirror:
        return {}
    assert source.root is not None
    out = {}
    for j in candidates:
        try:
            cog.plan_mosaic(source.root, member.grid, [years[j]])
        except DataNotFoundError as err:
            out[j] = f"DataNotFoundError: {err}"
        except Exception as err:  # e.g. a file header that cannot be read
            out[j] = _describe_error(err)
    return out


def _outcome(
    group: Group,
    values: Sequence[np.ndarray],
    source: Source,
    years: tuple[int, ...],
    stats: tuple[str, ...],
) -> _Outcome:
    outcome = _Outcome()
    for index, member in enumerate(group.members):
        missing = _missing_file_years(source, member, years, _no_data_years(values, index, stats))
        keep = [j for j in range(len(years)) if j not in missing]
        if not keep:
            message = next(iter(missing.values()))
            outcome.failed[member.position] = [
                (None, f"no year of {list(years)} has data for the site; {message}")
            ]
            continue
        if missing:
            outcome.failed[member.position] = [(years[j], msg) for j, msg in missing.items()]
        outcome.rows[member.position] = _site_frame(member, values, index, years, stats, keep)
    return outcome


def _safe_outcome(
    group: Group,
    values: Sequence[np.ndarray],
    source: Source,
    years: tuple[int, ...],
    stats: tuple[str, ...],
) -> _Outcome:
    try:
        return _outcome(group, values, source, years, stats)
    except Exception as err:  # never let one group's bookkeeping stop the batch
        return _failed_group(group, err)


def _failed_group(group: Group, err: BaseException) -> _Outcome:
    outcome = _Outcome()
    for member in group.members:
        outcome.failed[member.position] = [(None, _describe_error(err))]
    return outcome


# --------------------------------------------------------------------------- the store


class _Store:
    """A folder of Parquet parts, one per committed group (see the module docs)."""

    def __init__(self, path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(
                f"store {str(self.path)!r} is a file; pass a folder path (it is created if missing)"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        manifest_path = self.path / _MANIFEST
        if manifest_path.is_file():
            held = json.loads(manifest_path.read_text(encoding="utf-8"))
            if held.get("format") != STORE_FORMAT:
                raise ValueError(
                    f"store {str(self.path)!r} has layout format {held.get('format')!r}; this "
                    f"xembed writes format {STORE_FORMAT}: use a new store folder"
                )
            diff = [k for k in manifest if held.get(k) != manifest[k]]
            if diff:
                was = {k: held.get(k) for k in diff}
                now = {k: manifest[k] for k in diff}
                raise ValueError(
                    f"store {str(self.path)!r} was written with {was}, not {now}; pass the "
                    "same arguments to resume it, or a new store folder for a new extraction"
                )
        elif any(self.path.glob(f"{_PART_PREFIX}*.parquet")):
            raise ValueError(
                f"store {str(self.path)!r} holds parts but no {_MANIFEST}; it was not written "
                "by xembed.extract (or is damaged): pass a new store folder"
            )
        else:
            _atomic_write(
                manifest_path,
                lambda tmp: tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8"),
            )
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        now = time.time()
        for tmp in self.path.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > _TMP_MAX_AGE:
                    tmp.unlink()

    def parts(self) -> list[Path]:
        """Committed parts only: ``part-*.parquet``; hidden temporary files never match."""
        return sorted(self.path.glob(f"{_PART_PREFIX}*.parquet"))

    def load(self, keys: Mapping[tuple[str, str], int]) -> dict[int, pd.DataFrame]:
        """Finished rows of the sites in ``keys`` ((id text, hash) -> input position)."""
        found: dict[int, pd.DataFrame] = {}
        for part in self.parts():
            try:
                frame = pd.read_parquet(part)
            except Exception as err:  # a damaged disk, not a half-written part
                warnings.warn(
                    f"ignoring unreadable store part {str(part)!r} ({_describe_error(err)}); "
                    "its sites are computed again (delete the file to silence this)",
                    UserWarning,
                    stacklevel=stacklevel(),
                )
                continue
            text = frame["site_id"].astype(str)
            for (site_key, site_hash), rows in frame.groupby(
                [text, frame["site_hash"]], sort=False
            ):
                position = keys.get((str(site_key), str(site_hash)))
                if position is not None and position not in found:
                    found[position] = rows.drop(columns=["site_id", "site_hash"])
        return found

    def commit(self, frame: pd.DataFrame) -> Path:
        """Write one group's rows as a new part, atomically (temp file, fsync, rename)."""
        digest = hashlib.sha1()
        for key, site_hash in sorted(
            set(zip(frame["site_id"].astype(str), frame["site_hash"], strict=True))
        ):
            digest.update(f"{key}\0{site_hash}\0".encode())
        path = self.path / f"{_PART_PREFIX}{digest.hexdigest()[:20]}.parquet"
        _atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
        return path

    def write_errors(self, errors: pd.DataFrame) -> None:
        path = self.path / _ERRORS
        if errors.empty:
            path.unlink(missing_ok=True)
            return
        table = errors.assign(site_id=errors["site_id"].astype(str))
        _atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))


def _atomic_write(path: Path, write: Any) -> None:
    """``write(tmp)`` to a hidden temporary name, fsync it, rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- running


def _client(client: Any) -> Any:
    """The dask.distributed client to use: the one given, else the active one, else None."""
    if client is not None:
        return client
    if dask.config.get("scheduler", None) not in (None, "dask.distributed", "distributed"):
        return None  # the user chose another scheduler explicitly
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _workers(client: Any) -> int:
    if client is not None:
        with contextlib.suppress(Exception):
            return max(1, sum(client.nthreads().values()))
        return 2
    n = dask.config.get("num_workers", None)
    return max(1, int(n) if n else os.cpu_count() or 1)


def _run(
    groups: list[Group],
    source: Source,
    years: tuple[int, ...],
    stats: tuple[str, ...],
    chunks: Mapping[str, int] | int | None,
    client: Any,
) -> Iterator[tuple[Group, _Outcome]]:
    """Compute groups a few at a time on the active scheduler; yield each outcome.

    A group that fails is split into its sites, so one bad site fails alone.
    """
    window = max(2, _GROUPS_PER_WORKER * _workers(client))

    def lazy(group: Group) -> Any:
        return _lazy_group(group, source, years, stats, chunks)

    if client is not None:
        yield from _run_distributed(groups, lazy, source, years, stats, client, window)
        return
    for start in range(0, len(groups), window):
        batch = groups[start : start + window]
        planned: list[tuple[Group, Any]] = []
        for group in batch:
            try:
                planned.append((group, lazy(group)))
            except Exception as err:
                if len(group.members) > 1:
                    yield from _run(group.singles(), source, years, stats, chunks, None)
                else:
                    yield group, _failed_group(group, err)
        try:
            results = dask.compute(*[task for _, task in planned]) if planned else ()
        except Exception:
            # Which group failed is unknown: compute them one by one.
            for group, task in planned:
                try:
                    (values,) = dask.compute(task)
                except Exception as err:
                    if len(group.members) > 1:
                        yield from _run(group.singles(), source, years, stats, chunks, None)
                    else:
                        yield group, _failed_group(group, err)
                else:
                    yield group, _safe_outcome(group, values, source, years, stats)
            continue
        for (group, _), values in zip(planned, results, strict=True):
            yield group, _safe_outcome(group, values, source, years, stats)


def _run_distributed(
    groups: list[Group],
    lazy: Any,
    source: Source,
    years: tuple[int, ...],
    stats: tuple[str, ...],
    client: Any,
    window: int,
) -> Iterator[tuple[Group, _Outcome]]:
    """Futures on a dask.distributed client, ``window`` groups in flight, as completed."""
    from distributed import as_completed

    queue = list(reversed(groups))
    running: dict[Any, Group] = {}
    completed = as_completed()

    def submit() -> Iterator[tuple[Group, _Outcome]]:
        while queue and len(running) < window:
            group = queue.pop()
            try:
                future = client.compute(lazy(group))
            except Exception as err:
                if len(group.members) > 1:
                    queue.extend(reversed(group.singles()))
                else:
                    yield group, _failed_group(group, err)
                continue
            running[future] = group
            completed.add(future)

    try:
        yield from submit()
        while running:
            future = next(completed)
            group = running.pop(future)
            try:
                values = future.result()
            except Exception as err:
                if len(group.members) > 1:
                    queue.extend(reversed(group.singles()))
                else:
                    yield group, _failed_group(group, err)
            else:
                yield group, _safe_outcome(group, values, source, years, stats)
            yield from submit()
    finally:
        if running:
            client.cancel(list(running))


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc="extract",
        unit="site",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )


# --------------------------------------------------------------------------- the entry point


def extract(
    sites: Any,
    years: int | Iterable[int],
    *,
    source: str | os.PathLike[str] = "sample",
    root: str | os.PathLike[str] | None = None,
    project: str | None = None,
    stats: str | Iterable[str] = ("mean",),
    store: str | os.PathLike[str] | None = None,
    client: Any = None,
    progress: bool = True,
    chunks: Mapping[str, int] | int | None = None,
) -> pd.DataFrame:
    """Yearly statistics of any number of sites, as one tidy table.

    The same numbers as ``open_embeddings(site, years, ...).embed.polygon_mean(
    reducer=stat)`` for each site (within float rounding), with each file
    window read once for all the sites under it (see the module docs for how
    sites are grouped). Runs on the active dask scheduler: the threaded
    default, or a ``dask.distributed`` client (``client=``, or the one
    active); there is no scheduler of xembed's own.

    Parameters
    ----------
    sites : list of Site, shapely geometries or GeoJSON Features, GeoDataFrame or path
        The sites in EPSG:4326 (or a site file :func:`xembed.load_sites`
        reads). Ids come from the sites (bare geometries: their position).
    years : int or iterable of int
        Years to extract, e.g. ``range(2018, 2025)``.
    source, root, project
        As for :func:`xembed.open_embeddings`. Mirror sources (``"sample"``,
        ``"cog"``, a folder) share reads between sites; with ``"ee"`` each
        site is its own request (Earth Engine reads server-side).
    stats : str or iterable of str
        Some of ``"mean"``, ``"median"``, ``"std"``, ``"min"``, ``"max"``,
        ``"count"`` (:func:`xembed.ops.polygon_mean`'s definitions).
        ``"median"`` holds each site's pixels in memory (one site at a time).
    store : path, optional
        A folder to commit finished sites to as they complete (a Parquet
        dataset, see the module docs). Re-running with the same arguments
        skips the sites already there and returns the identical table.
    client : distributed.Client, optional
        Run on this cluster (default: the active client, if any, else the
        active dask scheduler).
    progress : bool
        Show a progress bar over sites (tqdm; a widget in Jupyter).
    chunks : mapping or int, optional
        Chunks of the cubes read, as for :func:`xembed.open_embeddings`
        (default: all years and bands, 256 x 256 pixels).

    Returns
    -------
    pandas.DataFrame
        Columns ``site_id, year, stat, A00..A63`` (float64), one row per
        site, year and statistic, sorted by input site order, then ``years``
        and ``stats`` as given. ``attrs["errors"]`` is a DataFrame
        ``site_id, year, error`` of failures (``year`` is ``<NA>`` when the
        whole site failed); failed site-years have no rows, the other sites
        are complete. A site-year whose files hold only nodata under the site
        gives NaN (``count`` 0), as ``polygon_mean`` does.

    Raises
    ------
    ValueError
        For bad arguments (years outside the source, unknown stats,
        duplicate site ids, a store written with other arguments).
    xembed.errors.SourceError
        For an unknown source or a malformed mirror.

    Warns
    -----
    UserWarning
        Summarising the failures, if any site or year failed.

    Examples
    --------
    >>> import xembed
    >>> table = extract(xembed.demo_sites()[:3], [2020, 2021], progress=False)
    >>> table.shape
    (6, 67)
    >>> table[["site_id", "year", "stat"]].head(3).to_dict("list")
    {'site_id': [3101, 3101, 3102], 'year': [2020, 2021, 2020], 'stat': ['mean', 'mean', 'mean']}
    >>> table.attrs["errors"].empty
    True
    """
    from xembed.sources.common import normalize_years

    site_list = _as_sites(sites)
    years = normalize_years(years)
    stats = _normalize_stats(stats)
    src = resolve_source(source, root=root, project=project, years=years)
    id_type = "int" if all(isinstance(s.id, int) for s in site_list) else "str"
    hashes = [_site_hash(s) for s in site_list]

    if src.is_mirror:
        mirror = str(src.root)
        groups, unplanned = group_sites(
            site_list, lattice=lambda crs: mirror_lattice(mirror, crs), cell=_cells(chunks)
        )
    else:  # Earth Engine reads server-side: one cube per site
        groups, unplanned = group_sites(site_list)
        groups = [single for g in groups for single in g.singles()]

    db: _Store | None = None
    done: dict[int, pd.DataFrame] = {}
    if store is not None:
        manifest = {
            "format": STORE_FORMAT,
            "years": list(years),
            "stats": list(stats),
            **src.describe(),
            "site_id_type": id_type,
        }
        db = _Store(store, manifest)
        keys = {(str(s.id), h): i for i, (s, h) in enumerate(zip(site_list, hashes, strict=True))}
        done = db.load(keys)

    failures: dict[int, list[tuple[int | None, str]]] = {
        position: [(None, _describe_error(err))] for position, err in unplanned
    }
    fresh: dict[int, pd.DataFrame] = {}
    todo = [g for g in groups if any(m.position not in done for m in g.members)]
    bar = _progress(len(site_list), len(done), progress)
    try:
        for group, outcome in _run(todo, src, years, stats, chunks, _client(client)):
            new = {p: f for p, f in outcome.rows.items() if p not in done}
            fresh.update(new)
            failures.update({p: f for p, f in outcome.failed.items() if p not in done})
            if db is not None:
                finished = [p for p in new if p not in outcome.failed]
                if finished:
                    db.commit(_part_frame(site_list, hashes, id_type, new, finished))
            bar.update(sum(1 for m in group.members if m.position not in done))
    finally:
        bar.close()

    errors = _errors_frame(site_list, failures)
    if db is not None:
        db.write_errors(errors)
    table = _assemble(site_list, years, stats, {**done, **fresh})
    table.attrs["errors"] = errors
    if not errors.empty:
        _warn(errors, len(site_list))
    return table


def _part_frame(
    sites: Sequence[Site],
    hashes: Sequence[str],
    id_type: str,
    rows: Mapping[int, pd.DataFrame],
    positions: Sequence[int],
) -> pd.DataFrame:
    frames = []
    for p in sorted(positions):
        frame = rows[p].drop(columns=["position"])
        site_id = sites[p].id if id_type == "int" else str(sites[p].id)
        frame.insert(0, "site_id", site_id)
        frame["site_hash"] = hashes[p]
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out["site_id"] = out["site_id"].astype("int64" if id_type == "int" else "str")
    return out


def _assemble(
    sites: Sequence[Site],
    years: tuple[int, ...],
    stats: tuple[str, ...],
    rows: Mapping[int, pd.DataFrame],
) -> pd.DataFrame:
    """The final table, in a canonical order and dtypes whatever the rows' origin."""
    columns = ["site_id", "year", "stat", *BANDS]
    ids = [s.id for s in sites]
    id_dtype: Any = "int64" if all(isinstance(i, int) for i in ids) else object
    if not rows:
        empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
        return empty.astype({"site_id": id_dtype, "year": "int64", "stat": object})
    frames = []
    for position in sorted(rows):
        frame = rows[position].drop(columns=["position"], errors="ignore")
        frame = frame.assign(_pos=position)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    year_rank = {y: i for i, y in enumerate(years)}
    stat_rank = {s: i for i, s in enumerate(stats)}
    table["_year"] = table["year"].map(year_rank)
    table["_stat"] = table["stat"].map(stat_rank)
    table = table.sort_values(["_pos", "_year", "_stat"], kind="stable")
    site_id = pd.Series([ids[p] for p in table["_pos"]], dtype=id_dtype)
    out = pd.DataFrame(
        {
            "site_id": site_id.to_numpy(),
            "year": table["year"].to_numpy(dtype=np.int64),
            "stat": table["stat"].astype(str).to_numpy(dtype=object),
        }
    )
    values = table[list(BANDS)].to_numpy(dtype=np.float64)
    return pd.concat([out, pd.DataFrame(values, columns=list(BANDS))], axis=1)


def _errors_frame(
    sites: Sequence[Site], failures: Mapping[int, list[tuple[int | None, str]]]
) -> pd.DataFrame:
    records = [
        (sites[p].id, year, message)
        for p in sorted(failures)
        for year, message in sorted(failures[p], key=lambda f: -1 if f[0] is None else f[0])
    ]
    ids = [s.id for s in sites]
    id_dtype: Any = "int64" if all(isinstance(i, int) for i in ids) else object
    return pd.DataFrame(
        {
            "site_id": pd.Series([r[0] for r in records], dtype=id_dtype),
            "year": pd.Series([r[1] for r in records], dtype="Int64"),
            "error": pd.Series([r[2] for r in records], dtype=object),
        }
    )


def _warn(errors: pd.DataFrame, n_sites: int) -> None:
    whole = errors[errors["year"].isna()]
    failed_sites = errors["site_id"].nunique()
    listed = []
    for row in errors.head(_MAX_LISTED).itertuples():
        when = "" if pd.isna(row.year) else f" {row.year}"
        listed.append(f"site {row.site_id!r}{when}: {row.error}")
    more = f"; ... ({len(errors)} failures in all)" if len(errors) > _MAX_LISTED else ""
    warnings.warn(
        f"xembed.extract: {failed_sites} of {n_sites} sites failed ({len(whole)} entirely, "
        f"the others some years): " + "; ".join(listed) + more + ". The table holds every "
        "other site and year; the failures are in table.attrs['errors'] (re-run with the "
        "same store= to retry only them)",
        UserWarning,
        stacklevel=stacklevel(),
    )
