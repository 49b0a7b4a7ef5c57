"""Planning a batch: which sites share a cube (pure geometry: no pixel is read).

Each site gets the grid :func:`xembed.open_embeddings` would give it; sites
whose grids touch a common cell of their UTM zone's lattice form a
:class:`Group`, cut further until its envelope and pixel count are bounded
(:data:`MAX_GROUP_CELLS`, :data:`MAX_GROUP_PIXELS`). :func:`mirror_lattice`
finds where a mirror's files put their block edges, so that cells and chunks
fall on them.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import shapely

from xembed.grid import Grid, target_grid
from xembed.schema import PIXEL_SIZE
from xembed.sites import Site
from xembed.sources.common import normalize_chunks

__all__ = [
    "GROUP_CELL",
    "MAX_GROUP_CELLS",
    "MAX_GROUP_PIXELS",
    "Group",
    "Lattice",
    "Member",
    "chunk_cells",
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
        index = cog.load_index(str(root).rstrip("/"))
        rows = index[index["crs"].astype(str) == crs].sort_values("path")
        rows = cog.with_hrefs(str(root).rstrip("/"), rows)
        if rows.empty:
            return Lattice()
        href = str(rows["href"].iloc[0])
        with rasterio.Env(**cog.GDAL_ENV), rasterio.open(cog.gdal_path(href)) as src:
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


def chunk_cells(chunks: Mapping[str, int] | int | None) -> tuple[int, int]:
    """Group cells for these chunks: one cell per chunk (``-1``: the default size).

    Examples
    --------
    >>> chunk_cells(None), chunk_cells(64), chunk_cells({"y": 128, "x": -1})
    ((256, 256), (64, 64), (128, 256))
    """
    spec = normalize_chunks(chunks)
    return (
        spec["y"] if spec["y"] > 0 else GROUP_CELL,
        spec["x"] if spec["x"] > 0 else GROUP_CELL,
    )
