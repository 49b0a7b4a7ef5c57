"""Class areas of many sites: :func:`class_areas`, the batch twin of ``class_area``.

A class map needs a model, so class areas are not one more statistic of
:func:`xembed.extract` (whose table holds 64 band columns per row): they
have their own table, made from the same groups. Each group of sites (see
:mod:`xembed.batch`) opens one lazy cube, every site's class map is predicted
on its window of it in one dask computation (chunks read once for all the
group's sites), and :func:`xembed.ops.learn.class_area` measures each map.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import dask
import pandas as pd
import xarray as xr

from xembed.batch.plan import chunk_cells, group_sites, mirror_lattice
from xembed.batch.run import (
    active_client,
    mirror_cube,
    progress_bar,
    site_cube,
    site_list_of,
)
from xembed.batch.table import describe_error, site_id_type, warn_failures
from xembed.cube import resolve_source
from xembed.ops.learn import class_area, predict
from xembed.sites import Site
from xembed.sources.common import normalize_years

__all__ = ["class_areas"]

Classes = Callable[[xr.Dataset], xr.DataArray]


def class_areas(
    sites: Any,
    years: int | Iterable[int],
    classes: Any,
    *,
    source: str | os.PathLike[str] = "sample",
    root: str | os.PathLike[str] | None = None,
    client: Any = None,
    progress: bool = True,
    chunks: Mapping[str, int] | int | None = None,
    id_field: str | None = None,
) -> pd.DataFrame:
    """Hectares and share of each class within each site, per year, for many sites.

    The numbers of ``ds.embed.class_area(classes)`` on each site's cube
    (:func:`xembed.ops.learn.class_area`: coverage-weighted, a year's areas
    sum to the site's area with data), with the sites grouped as
    :func:`xembed.extract` groups them, so each chunk is read once.

    Parameters
    ----------
    sites : sites, GeoDataFrame or path
        As for :func:`xembed.extract`.
    years : int or iterable of int
        The years to map.
    classes : fitted estimator or callable
        A fitted scikit-learn classifier (its classes are predicted with
        :func:`xembed.ops.learn.predict`, e.g. ``classify(...).attrs["model"]``),
        or ``classes(cube) -> DataArray(year, y, x)`` of integer codes (lazy)
        for a site's clipped cube.
    source, root, client, progress, chunks, id_field
        As for :func:`xembed.extract` (a mirror source).

    Returns
    -------
    pandas.DataFrame
        ``site_id, year, class, ha, fraction``, by input site order, then
        year, then class. ``attrs["errors"]``: ``site_id, error`` of the
        sites that failed (no rows; a UserWarning summarises them).

    Examples
    --------
    >>> import xembed
    >>> from xembed.sources.sample import landcover
    >>> truth = lambda cube: landcover(cube).where(cube.coverage > 0, -1)
    >>> areas = class_areas(xembed.demo_sites()[:2], [2017, 2024], truth, progress=False)
    >>> areas.columns.tolist()
    ['site_id', 'year', 'class', 'ha', 'fraction']
    >>> site = areas[(areas.site_id == 3102) & (areas["class"] == "forest")]
    >>> site["fraction"].round(2).tolist()  # restored from 2018: pasture, then forest
    [0.0, 1.0]
    """
    site_list: list[Site] = site_list_of(sites, id_field)
    years = normalize_years(years)
    src = resolve_source(source, root=root, years=years)
    if not src.is_mirror:
        raise ValueError(
            f"class_areas reads a mirror (source 'sample', 'cog' or a folder), not {src.kind!r}; "
            "with Earth Engine use open_embeddings(site, ...).embed.class_area per site"
        )
    mapper = classes if not hasattr(classes, "predict") else (lambda c: predict(c, classes))
    mirror = str(src.root)
    groups, unplanned = group_sites(
        site_list, lattice=lambda crs: mirror_lattice(mirror, crs), cell=chunk_cells(chunks)
    )
    failures = {p: describe_error(err) for p, err in unplanned}
    frames: dict[int, pd.DataFrame] = {}
    client = active_client(client)
    bar = progress_bar(len(site_list), 0, progress, desc="class areas")
    try:
        for group in groups:
            try:
                emb = mirror_cube(src, group, years, chunks)
                cubes = [site_cube(emb, group, m) for m in group.members]
                maps = [mapper(c) for c in cubes]
                maps = client.gather(client.compute(maps)) if client else dask.compute(*maps)
                for member, cube, codes in zip(group.members, cubes, maps, strict=True):
                    frame = class_area(cube, codes)
                    frames[member.position] = frame.assign(position=member.position)
            except Exception as err:
                failures.update(
                    dict.fromkeys((m.position for m in group.members), describe_error(err))
                )
            bar.update(len(group.members))
    finally:
        bar.close()
    return _table(site_list, frames, failures)


def _table(
    sites: list[Site], frames: Mapping[int, pd.DataFrame], failures: Mapping[int, str]
) -> pd.DataFrame:
    id_dtype = "int64" if site_id_type(sites) == "int" else object
    columns = ["site_id", "year", "class", "ha", "fraction"]
    if frames:
        table = pd.concat([frames[p] for p in sorted(frames)], ignore_index=True)
        ids = pd.Series([sites[p].id for p in table["position"]], dtype=id_dtype)
        table = table.drop(columns="position").assign(site_id=ids.to_numpy())[columns]
    else:
        table = pd.DataFrame({c: [] for c in columns})
    errors = pd.DataFrame(
        {
            "site_id": pd.Series([sites[p].id for p in sorted(failures)], dtype=id_dtype),
            "year": pd.Series([None] * len(failures), dtype="Int64"),
            "error": pd.Series([failures[p] for p in sorted(failures)], dtype=object),
        }
    )
    table.attrs["errors"] = errors
    if failures:
        warn_failures(errors, len(sites))
    return table
