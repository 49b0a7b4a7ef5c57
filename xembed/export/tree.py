"""Many sites in one store: :func:`to_datatree`, :func:`write_sites_zarr`, :func:`open_sites`.

Sites have their own grids (even their own UTM zones), so each cube is a
group ``site_{id}`` of an :class:`xarray.DataTree` rather than a slice of one
array.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from xembed import schema
from xembed.errors import SchemaError
from xembed.export._store import PathLike, WriteMode, ZarrFormat, require_zarr
from xembed.export.read import open_cube, plain, site_groups, store_kind
from xembed.export.write import check_zarr_format, prepare_zarr, write_zarr

__all__ = ["open_sites", "to_datatree", "write_sites_zarr"]

_GROUP_PREFIX = "site_"


def _group_name(site_id: Any) -> str:
    text = str(site_id)
    if not text:
        raise SchemaError("a site id is empty; give every cube a site_id")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text)
    return name if name.startswith(_GROUP_PREFIX) else _GROUP_PREFIX + name


def _named_cubes(
    cubes: Mapping[Any, xr.Dataset] | Sequence[xr.Dataset] | xr.DataTree,
) -> dict[str, tuple[str, xr.Dataset]]:
    """{group name: (site id, cube)} from a mapping (keys are site ids), a list or a tree."""
    if isinstance(cubes, xr.DataTree):
        found = {
            node.path.strip("/"): (str(node.attrs.get("site_id", node.name)), node.to_dataset())
            for node in cubes.subtree
            if "embeddings" in node.data_vars
        }
        if not found:
            raise SchemaError("the DataTree has no group with an 'embeddings' variable")
        return found
    if isinstance(cubes, xr.Dataset):
        raise TypeError(
            "expected several cubes (a mapping {site_id: cube} or a list); "
            "for one cube use xembed.export.to_zarr"
        )
    items: list[tuple[Any, xr.Dataset]]
    if isinstance(cubes, Mapping):
        items = []
        for key, cube in cubes.items():
            if not isinstance(cube, xr.Dataset):
                raise TypeError(f"cubes[{key!r}] is a {type(cube).__name__}, not a cube Dataset")
            items.append((key, cube))
    else:
        items = []
        for i, cube in enumerate(cubes):
            if not isinstance(cube, xr.Dataset) or "site_id" not in cube.attrs:
                raise SchemaError(
                    f"cube {i} has no 'site_id' attribute to name its group; pass a mapping "
                    "{site_id: cube} instead"
                )
            items.append((cube.attrs["site_id"], cube))
    if not items:
        raise ValueError("no cubes given; pass at least one")
    out: dict[str, tuple[str, xr.Dataset]] = {}
    for site_id, cube in items:
        name = _group_name(site_id)
        if name in out:
            raise SchemaError(
                f"two cubes map to the group {name!r} (site id {site_id!r}); site ids must "
                "be unique"
            )
        schema.validate_cube(cube)
        out[name] = (str(site_id), cube)
    return out


def _root_attrs(named: Mapping[str, tuple[str, xr.Dataset]]) -> dict[str, Any]:
    return {
        "title": "AlphaEarth Foundations satellite embeddings, one group per site",
        "site_ids": [site_id for site_id, _ in named.values()],
    }


def to_datatree(
    cubes: Mapping[Any, xr.Dataset] | Sequence[xr.Dataset],
) -> xr.DataTree:
    """Many sites' cubes as one :class:`xarray.DataTree`, one group per site.

    Sites have their own grids (even their own UTM zones), so each cube is a
    group ``site_{id}`` rather than a slice of one array. Nothing is computed.

    Parameters
    ----------
    cubes : mapping or sequence of xarray.Dataset
        ``{site_id: cube}``, or cubes whose ``site_id`` attribute names them.

    Returns
    -------
    xarray.DataTree
        Root attrs: ``title`` and ``site_ids`` (in group order).

    Raises
    ------
    xembed.errors.SchemaError
        If a cube is not a cube, lacks a ``site_id`` or two share one.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> from xembed.export import to_datatree
    >>> a = make_cube(shape=(8, 8)).assign_attrs(site_id="a")
    >>> b = make_cube(shape=(6, 4), crs="EPSG:32723").assign_attrs(site_id="b")
    >>> tree = to_datatree([a, b])
    >>> sorted(tree.children), tree["site_b"].to_dataset().rio.crs.to_epsg()
    (['site_a', 'site_b'], 32723)
    """
    named = _named_cubes(cubes)
    root = xr.Dataset(attrs=_root_attrs(named))
    return xr.DataTree.from_dict({"/": root, **{name: cube for name, (_, cube) in named.items()}})


def write_sites_zarr(
    cubes: Mapping[Any, xr.Dataset] | Sequence[xr.Dataset] | xr.DataTree,
    path: PathLike,
    *,
    mode: WriteMode = "w-",
    quantize: bool = False,
    consolidated: bool = True,
    progress: bool = False,
    zarr_format: ZarrFormat = 3,
) -> Path:
    """Write many sites' cubes to one Zarr store, one group per site, atomically.

    Parameters
    ----------
    cubes : mapping, sequence or xarray.DataTree
        As for :func:`to_datatree`, or a tree it made.
    path, mode, quantize, consolidated, progress, zarr_format
        As for :func:`to_zarr`. All groups are written in one dask compute
        (one progress bar).

    Returns
    -------
    pathlib.Path
        The absolute path of the store; open it with :func:`open_sites`.

    Examples
    --------
    >>> import tempfile, os
    >>> from xembed.testing import make_cube
    >>> from xembed.export import open_sites, write_sites_zarr
    >>> cubes = {"a": make_cube(shape=(8, 8)), "b": make_cube(shape=(6, 4), crs="EPSG:32723")}
    >>> path = write_sites_zarr(cubes, os.path.join(tempfile.mkdtemp(), "sites.zarr"))
    >>> tree = open_sites(path)
    >>> {name: node.to_dataset().rio.crs.to_epsg() for name, node in tree.children.items()}
    {'site_a': 32722, 'site_b': 32723}
    """
    require_zarr()
    named = _named_cubes(cubes)
    root_attrs = dict(cubes.attrs) if isinstance(cubes, xr.DataTree) else _root_attrs(named)
    zarr_format = check_zarr_format(zarr_format)
    prepared = {
        name: prepare_zarr(cube, quantize=quantize, zarr_format=zarr_format)
        for name, (_, cube) in named.items()
    }
    tree = xr.DataTree.from_dict({"/": xr.Dataset(attrs=root_attrs), **prepared})
    return write_zarr(
        tree,
        path,
        mode=mode,
        consolidated=consolidated,
        progress=progress,
        zarr_format=zarr_format,
    )


def open_sites(path: PathLike, *, chunks: Mapping[str, int] | int | None = None) -> xr.DataTree:
    """Open a store written by :func:`write_sites_zarr` as a DataTree of cubes.

    Each group is opened with :func:`open_cube` (lazy, de-quantised,
    validated, CRS restored).

    Parameters
    ----------
    path : str or path
        The Zarr store.
    chunks : mapping or int, optional
        As for :func:`open_cube`.

    Returns
    -------
    xarray.DataTree
        One child per site, ``site_{id}``, and the root attrs as written.

    Raises
    ------
    FileNotFoundError
        If no complete store is at ``path``.
    xembed.errors.SchemaError
        If the store holds no site groups.
    """
    import zarr

    kind, where = store_kind(path)
    if kind != "zarr":
        raise SchemaError(
            f"{where} is not a Zarr store; multi-site exports are Zarr "
            "(write one with xembed.export.write_sites_zarr); for one cube use open_cube"
        )
    groups = site_groups(where)
    if not groups:
        raise SchemaError(
            f"{where} holds no site groups (groups with an 'embeddings' array); for a "
            "single-cube store use xembed.export.open_cube(path)"
        )
    attrs = {k: plain(v) for k, v in zarr.open_group(os.fspath(where), mode="r").attrs.items()}
    cubes = {name: open_cube(where, chunks=chunks, group=name) for name in groups}
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs=attrs), **cubes})
