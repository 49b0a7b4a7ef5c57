"""Running a batch: one lazy cube per group, its outcome, the schedulers, :func:`extract`.

A group's statistics are one dask computation (:func:`_lazy_group`);
groups are computed a few at a time on the threaded scheduler
(:func:`dask.compute`) or as futures on a ``dask.distributed`` client, and
each finished group is committed to the store before the next results are
awaited. See :mod:`xembed.batch` for the whole design.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from xembed.batch.plan import Group, Member, chunk_cells, group_sites, mirror_lattice
from xembed.batch.store import Store, make_manifest, part_frame, site_hash
from xembed.batch.table import (
    assemble,
    describe_error,
    errors_frame,
    site_id_type,
    warn_failures,
)
from xembed.cube import Source, open_embeddings, resolve_source
from xembed.errors import DataNotFoundError
from xembed.grid import coverage_fraction
from xembed.ops import REDUCERS, Reducer, check_coverage, polygon_mean, zonal_mean
from xembed.ops.reduce import COVERAGE_COLUMNS, MIN_VALID, check_min_valid
from xembed.schema import BANDS
from xembed.sites import Site, as_sites, check_distinct_as_text, load_sites
from xembed.sources.common import chunk_sizes, lazy_array, normalize_chunks, normalize_years

__all__ = [
    "active_client",
    "extract",
    "mirror_cube",
    "progress_bar",
    "site_cube",
    "site_list_of",
]

_GROUPS_PER_WORKER = 2  # groups in flight per dask worker thread/process


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
    id_field: str | None = None,
    min_valid: float = MIN_VALID,
) -> pd.DataFrame:
    """Yearly statistics of any number of sites, as one tidy table.

    The same numbers as ``open_embeddings(site, years, ...).embed.polygon_mean(
    reducer=stat)`` for each site (within float rounding), with each file
    window read once for all the sites under it (see :mod:`xembed.batch` for
    how sites are grouped). Runs on the active dask scheduler: the threaded
    default, or a ``dask.distributed`` client (``client=``, or the one
    active); there is no scheduler of xembed's own.

    Parameters
    ----------
    sites : list of Site, shapely geometries or GeoJSON Features, GeoDataFrame or path
        The sites in EPSG:4326 (or a site file :func:`xembed.load_sites`
        reads). Ids come from the sites (bare geometries: their position).
    id_field : str, optional
        For a site file, GeoDataFrame or FeatureCollection: the column
        holding the site ids (passed to :func:`xembed.load_sites`).
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
        dataset, see :mod:`xembed.batch`). Re-running with the same arguments
        skips the sites already there and returns the identical table.
    client : distributed.Client, optional
        Run on this cluster (default: the active client, if any, else the
        active dask scheduler).
    progress : bool
        Show a progress bar over sites (tqdm; a widget in Jupyter).
    chunks : mapping or int, optional
        Chunks of the cubes read, as for :func:`xembed.open_embeddings`
        (default: all years and bands, 256 x 256 pixels).
    min_valid : float, default 0.9
        Warn (:class:`xembed.CoverageWarning`, once, listing them) about
        site-years whose ``valid_fraction`` is below this; ``0`` never warns.

    Returns
    -------
    pandas.DataFrame
        Columns ``site_id, year, stat, valid_fraction, valid_ha, A00..A63``
        (float64), one row per site, year and statistic, sorted by input
        site order, then ``years`` and ``stats`` as given.
        ``valid_fraction`` is the coverage-weighted share of the site's area
        with data (0..1) that the row's numbers stand on, ``valid_ha`` that
        area in hectares. ``attrs["errors"]`` is a DataFrame
        ``site_id, year, error`` of failures (``year`` is ``<NA>`` when the
        whole site failed); failed site-years have no rows, the other sites
        are complete. A site-year without a single valid pixel under the
        site (no file there, or only nodata) is a failure.

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
    xembed.CoverageWarning
        Naming the site-years whose valid fraction is below ``min_valid``.

    Examples
    --------
    >>> import xembed
    >>> table = extract(xembed.demo_sites()[:3], [2020, 2021], progress=False)
    >>> table.shape
    (6, 69)
    >>> table["valid_fraction"].tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    >>> table[["site_id", "year", "stat"]].head(3).to_dict("list")
    {'site_id': [3101, 3101, 3102], 'year': [2020, 2021, 2020], 'stat': ['mean', 'mean', 'mean']}
    >>> table.attrs["errors"].empty
    True
    """
    site_list = site_list_of(sites, id_field)
    years = normalize_years(years)
    stats = _normalize_stats(stats)
    min_valid = check_min_valid(min_valid)
    src = resolve_source(source, root=root, project=project, years=years)
    id_type = site_id_type(site_list)
    hashes = [site_hash(s) for s in site_list]
    groups, unplanned = _plan(site_list, src, chunks)

    db: Store | None = None
    done: dict[int, pd.DataFrame] = {}
    if store is not None:
        db = Store(store, make_manifest(years, stats, src, id_type))
        keys = {(str(s.id), h): i for i, (s, h) in enumerate(zip(site_list, hashes, strict=True))}
        done = db.load(keys)

    failures: dict[int, list[tuple[int | None, str]]] = {
        position: [(None, describe_error(err))] for position, err in unplanned
    }
    fresh: dict[int, pd.DataFrame] = {}
    todo = [g for g in groups if any(m.position not in done for m in g.members)]
    if src.is_mirror and todo:
        from xembed.sources import cog

        # Every group's file headers in one concurrent round, not a round per group.
        cog.prefetch_headers(str(src.root), [g.grid for g in todo], years)
    bar = progress_bar(len(site_list), len(done), progress)
    try:
        for group, outcome in _run(todo, src, years, stats, chunks, active_client(client)):
            new = {p: f for p, f in outcome.rows.items() if p not in done}
            fresh.update(new)
            failures.update({p: f for p, f in outcome.failed.items() if p not in done})
            if db is not None:
                finished = [p for p in new if p not in outcome.failed]
                if finished:
                    db.commit(part_frame(site_list, hashes, id_type, new, finished))
            bar.update(sum(1 for m in group.members if m.position not in done))
    finally:
        bar.close()

    errors = errors_frame(site_list, failures)
    if db is not None:
        db.write_errors(errors)
    table = assemble(site_list, years, stats, {**done, **fresh})
    table.attrs["errors"] = errors
    if not errors.empty:
        warn_failures(errors, len(site_list))
    check_coverage(table, min_valid)
    return table


def _plan(
    sites: list[Site], source: Source, chunks: Mapping[str, int] | int | None
) -> tuple[list[Group], list[tuple[int, Exception]]]:
    """The groups to compute (:func:`group_sites`) and the sites that could not be planned."""
    if source.is_mirror:
        mirror = str(source.root)
        return group_sites(
            sites, lattice=lambda crs: mirror_lattice(mirror, crs), cell=chunk_cells(chunks)
        )
    # Earth Engine reads server-side: one cube per site
    groups, unplanned = group_sites(sites)
    return [single for g in groups for single in g.singles()], unplanned


# --------------------------------------------------------------------------- sites and args


def site_list_of(sites: Any, id_field: str | None = None) -> list[Site]:
    """A list of Sites from a path, a GeoDataFrame, one site, or an iterable of sites."""
    if _is_site_collection(sites):
        out = load_sites(sites, id_field=id_field)
    elif id_field is not None:
        raise ValueError(
            f"id_field={id_field!r} picks the id column of a site file, GeoDataFrame or "
            f"FeatureCollection, but sites is a {type(sites).__name__} whose sites carry "
            "their own ids; drop id_field, or pass the file or frame itself"
        )
    else:
        out = as_sites(sites)
    if not out:
        raise ValueError("sites is empty; pass at least one site (e.g. xembed.demo_sites())")
    check_distinct_as_text([site.id for site in out])
    return out


def _is_site_collection(sites: Any) -> bool:
    """A path, GeoDataFrame/GeoSeries or FeatureCollection: what ``load_sites`` reads."""
    if isinstance(sites, (str, os.PathLike)):
        return True
    if isinstance(sites, Mapping):
        return sites.get("type") == "FeatureCollection"
    module = type(sites).__module__
    return module.startswith("geopandas")


def _normalize_stats(stats: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(stats, str):
        stats = (stats,)
    out = tuple(str(s) for s in stats)
    if not out:
        raise ValueError(f"stats is empty; pass some of {list(REDUCERS)}, e.g. ('mean',)")
    unknown = [s for s in out if s not in REDUCERS]
    if "class_area" in unknown:  # needs a model: its own table (64 band columns do not fit)
        raise ValueError(
            "class_area is not a statistic of extract (a class map needs a model); use "
            "xembed.class_areas(sites, years, model) for a site_id, year, class, ha table"
        )
    if unknown:
        raise ValueError(f"unknown stats {unknown}; expected some of {list(REDUCERS)}")
    if len(set(out)) != len(out):
        raise ValueError(f"stats {list(out)} repeat a statistic; pass each once")
    return out


# --------------------------------------------------------------------------- cubes


def mirror_cube(
    source: Source, group: Group, years: tuple[int, ...], chunks: Mapping[str, int] | int | None
) -> xr.DataArray:
    """Lazy ``(year, band, y, x)`` embeddings of a mirror over ``grid`` (not clipped).

    Built like :func:`xembed.open_embeddings` builds a site's cube, on a given
    grid. Years without any file over the grid stay empty (NaN) instead of
    failing the group: the sites are checked one by one afterwards.
    """
    from xembed.sources import cog

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


def site_cube(emb: xr.DataArray, group: Group, member: Member) -> xr.Dataset:
    """The member's window of the group cube with its coverage: its own clipped cube."""
    rows, cols = group.window(member)
    window = emb.isel(y=rows, x=cols)
    cov = xr.DataArray(
        coverage_fraction(member.projected, member.grid),
        dims=("y", "x"),
        coords={"y": window["y"], "x": window["x"]},
    )
    return xr.Dataset({"embeddings": window.where(cov > 0), "coverage": cov})


def _unpack(packed: np.ndarray, n_stats: int) -> tuple[np.ndarray, ...]:
    """The arrays :func:`_lazy_group` packed: ``n_stats`` ``(site, year, band)``, then coverage."""
    packed = np.asarray(packed, dtype=np.float64)
    n = len(BANDS)
    stats = tuple(packed[..., i * n : (i + 1) * n] for i in range(n_stats))
    return (*stats, *(packed[..., n_stats * n + j] for j in range(len(COVERAGE_COLUMNS))))


def _lazy_group(
    group: Group,
    source: Source,
    years: tuple[int, ...],
    stats: tuple[str, ...],
    chunks: Mapping[str, int] | int | None,
) -> Any:
    """One dask Delayed: per statistic a ``(site, year, band)`` float64 array, then coverage.

    The last two arrays are ``valid_fraction`` and ``valid_ha``, ``(site,
    year)``, from the first statistic's pass (no extra read).
    """
    sites = [m.site for m in group.members]
    if source.is_mirror:
        emb = mirror_cube(source, group, years, chunks)
        cubes: list[xr.Dataset] | None = None
    else:
        # Earth Engine computes the reads server-side: one cube per site.
        (member,) = group.members
        cube = open_embeddings(
            member.site, years, source="ee", project=source.project, clip=False, chunks=chunks
        )
        emb = cube["embeddings"]
        cubes = [cube.assign(embeddings=cube["embeddings"].where(cube["coverage"] > 0))]
    arrays = []
    coverage: list[Any] = []
    for stat in stats:
        if stat == "mean":
            means = zonal_mean(emb, sites, min_valid=0.0)
            arrays.append(means.data)
            coverage = coverage or [means[name].data for name in COVERAGE_COLUMNS]
            continue
        if cubes is None:
            cubes = [site_cube(emb, group, m) for m in group.members]
        reducer = cast(Reducer, stat)
        results = [polygon_mean(c, reducer=reducer, min_valid=0.0) for c in cubes]
        arrays.append(da.stack([r.data for r in results]))
        coverage = coverage or [
            da.stack([da.asarray(r[name].data) for r in results]) for name in COVERAGE_COLUMNS
        ]
    # One array, so one graph optimisation: separate arrays would each fuse the
    # shared reads into tasks of their own, and every window would be read again.
    packed = da.concatenate(
        [da.asarray(a).astype(np.float64) for a in arrays]
        + [da.asarray(c).astype(np.float64)[..., None] for c in coverage],
        axis=-1,
    )
    return dask.delayed(_unpack, pure=True)(packed, len(arrays))


# --------------------------------------------------------------------------- results


@dataclass
class _Outcome:
    """What one group produced: finished rows (by input position) and failures."""

    rows: dict[int, pd.DataFrame] = field(default_factory=dict)
    failed: dict[int, list[tuple[int | None, str]]] = field(default_factory=dict)


_Result = tuple[Group, _Outcome]  # what the runners yield, group by group


def _site_frame(
    member: Member,
    values: Sequence[np.ndarray],
    index: int,
    years: tuple[int, ...],
    stats: tuple[str, ...],
    keep: Sequence[int],
) -> pd.DataFrame:
    """Rows of one site: years ``keep`` (positions) x stats, in year then stat order.

    ``values``: one array per statistic, then ``valid_fraction`` and ``valid_ha``.
    """
    block = np.stack([v[index] for v in values[: len(stats)]], axis=1)  # (year, stat, band)
    block = block[list(keep)].reshape(-1, len(BANDS))
    frame = pd.DataFrame(block, columns=list(BANDS))
    for name, v in reversed(list(zip(COVERAGE_COLUMNS, values[len(stats) :], strict=True))):
        frame.insert(0, name, np.repeat(v[index][list(keep)], len(stats)))
    frame.insert(0, "stat", [s for _ in keep for s in stats])
    frame.insert(0, "year", np.asarray([years[j] for j in keep for _ in stats], dtype=np.int64))
    frame.insert(0, "position", member.position)
    return frame


def _empty_years(
    source: Source, member: Member, years: tuple[int, ...], fraction: np.ndarray
) -> dict[int, str]:
    """Year positions without a single valid pixel under the site, and why.

    Years without any file fail with the message :func:`xembed.open_embeddings`
    gives for the site; years whose files hold only nodata under the site
    say so (their statistics would be NaN).
    """
    from xembed.sources import cog

    out = {}
    for j in np.flatnonzero(~(fraction > 0)).tolist():
        out[j] = (
            f"no valid pixel under the site in {years[j]}: the data there is all nodata "
            "(valid_fraction 0)"
        )
        if not source.is_mirror:
            continue
        assert source.root is not None
        try:
            cog.plan_mosaic(source.root, member.grid, [years[j]])
        except DataNotFoundError as err:
            out[j] = f"DataNotFoundError: {err}"
        except Exception as err:  # e.g. a file header that cannot be read
            out[j] = describe_error(err)
    return out


def _outcome(
    group: Group,
    values: Sequence[np.ndarray],
    source: Source,
    years: tuple[int, ...],
    stats: tuple[str, ...],
) -> _Outcome:
    """Rows and failures of a computed group (a failure here fails the whole group)."""
    outcome = _Outcome()
    try:
        fraction = values[len(stats)]
        for index, member in enumerate(group.members):
            missing = _empty_years(source, member, years, fraction[index])
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
    except Exception as err:  # never let one group's bookkeeping stop the batch
        return _failed_group(group, err)
    return outcome


def _failed_group(group: Group, err: BaseException) -> _Outcome:
    outcome = _Outcome()
    for member in group.members:
        outcome.failed[member.position] = [(None, describe_error(err))]
    return outcome


# --------------------------------------------------------------------------- running


def active_client(client: Any) -> Any:
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


def _isolate(
    group: Group, err: BaseException, retry: Callable[[list[Group]], Iterable[_Result]]
) -> Iterator[_Result]:
    """A group that failed: ``retry`` its sites one by one, so one bad site fails alone."""
    if len(group.members) > 1:
        yield from retry(group.singles())
    else:
        yield group, _failed_group(group, err)


def computed_groups(
    planned: list[tuple[Group, Any]], client: Any = None
) -> Iterator[tuple[Group, Any, Exception | None]]:
    """``(group, values, None)`` per planned group, ``(group, None, error)`` if it failed.

    All at once in one :func:`dask.compute` (on ``client`` if given; chunks
    shared between groups are read once); if that fails, which group failed
    is unknown: one by one.
    """

    def compute(tasks: list[Any]) -> Sequence[Any]:
        if client is not None:
            return list(client.gather(client.compute(tasks)))
        return dask.compute(*tasks)

    try:
        results = compute([task for _, task in planned]) if planned else ()
    except Exception:
        for group, task in planned:
            try:
                (values,) = compute([task])
            except Exception as err:
                yield group, None, err
            else:
                yield group, values, None
        return
    for (group, _), values in zip(planned, results, strict=True):
        yield group, values, None


def _run(
    groups: list[Group],
    source: Source,
    years: tuple[int, ...],
    stats: tuple[str, ...],
    chunks: Mapping[str, int] | int | None,
    client: Any,
) -> Iterator[_Result]:
    """Compute groups a few at a time on the active scheduler; yield each outcome.

    A group that fails is split into its sites, so one bad site fails alone.
    """
    window = max(2, _GROUPS_PER_WORKER * _workers(client))

    def lazy(group: Group) -> Any:
        return _lazy_group(group, source, years, stats, chunks)

    def finish(group: Group, values: Any) -> _Outcome:
        return _outcome(group, values, source, years, stats)

    if client is not None:
        yield from _run_distributed(groups, lazy, finish, client, window)
        return

    def retry(singles: list[Group]) -> Iterator[_Result]:
        return _run(singles, source, years, stats, chunks, None)

    for start in range(0, len(groups), window):
        planned: list[tuple[Group, Any]] = []
        for group in groups[start : start + window]:
            try:
                planned.append((group, lazy(group)))
            except Exception as err:
                yield from _isolate(group, err, retry)
        for group, values, failure in computed_groups(planned):
            if failure is None:
                yield group, finish(group, values)
            else:
                yield from _isolate(group, failure, retry)


def _run_distributed(
    groups: list[Group],
    lazy: Callable[[Group], Any],
    finish: Callable[[Group, Any], _Outcome],
    client: Any,
    window: int,
) -> Iterator[_Result]:
    """Futures on a dask.distributed client, ``window`` groups in flight, as completed."""
    from distributed import as_completed

    queue = list(reversed(groups))
    running: dict[Any, Group] = {}
    completed = as_completed()

    def requeue(singles: list[Group]) -> list[_Result]:
        queue.extend(reversed(singles))  # next in line
        return []

    def submit() -> Iterator[_Result]:
        while queue and len(running) < window:
            group = queue.pop()
            try:
                future = client.compute(lazy(group))
            except Exception as err:
                yield from _isolate(group, err, requeue)
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
                yield from _isolate(group, err, requeue)
            else:
                yield group, finish(group, values)
            yield from submit()
    finally:
        if running:
            client.cancel(list(running))


def progress_bar(
    total: int, initial: int, enabled: bool, desc: str = "extract", unit: str = "site"
) -> Any:
    """A tqdm progress bar on stderr (a widget in Jupyter), or a silent one."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )
