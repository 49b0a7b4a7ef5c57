"""Interactive maps (``xembed.explore``): a cube's years and analyses, or many sites.

- :func:`explore`: a cube on a Leaflet map (through folium): per year an
  RGB (or PCA RGB) picture and, where asked, change, similarity, cluster
  or class pictures, each group with its legend; the site boundary; a layer
  control with one radio group per analysis, a button per year. Given
  sites instead of a cube, it draws :func:`explore_sites`.
- :func:`explore_sites`: many sites' outlines, a popup each (id, start
  year, the numbers of a table, a link to a report page).

The maps display in Jupyter and save with ``m.save("map.html")``. The
page works offline: Leaflet and the layer control are inlined from
package data (``xembed/data/web``, with their licences), the pictures are
PNG data URIs, and nothing is loaded from the internet unless a base map
is asked for (``basemap="OpenStreetMap"``, any name folium takes).

Conventions
-----------
- Pictures are warped from the cube's UTM grid to Web Mercator by nearest
  neighbour (:mod:`.raster`): the boundary and the pixels line up to a
  fraction of a pixel (tests/test_explore.py checks the four corners).
- Computing: all layers are computed in one pass (like ``render``,
  drawing is this function's job), so the cube is read once.
- folium is imported when a map is made: ``import xembed`` stays light.
- The package is ``xembed.maps``, not ``xembed.explore``: ``xembed.explore``
  is the function, and a subpackage of the same name would be shadowed by
  it (``import xembed.explore`` would give the function).

Modules
-------
- :mod:`.page`: the offline page (:class:`~.page.OfflineMap`), legends, the control;
- :mod:`.raster`: warping to Web Mercator, PNG data URIs;
- :mod:`.layers`: layer names and DataArrays to coloured yearly pictures;
- :mod:`.cubemap`, :mod:`.sitesmap`: the two maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import xarray as xr

__all__ = ["explore", "explore_sites"]


def _folium() -> None:
    try:
        import folium  # noqa: F401
    except ImportError as err:  # pragma: no cover - folium is in the viz extra
        raise ImportError(
            "xembed.explore draws with folium, which is not installed; "
            "install it with: pip install 'xembed[viz]' (or pip install folium)"
        ) from err


def explore(
    obj: Any,
    layers: Sequence[Any] | None = None,
    *,
    years: Sequence[int] | None = None,
    basemap: str | None = None,
    table: Any = None,
    links: Mapping[Any, str] | None = None,
) -> Any:
    """An interactive map of a cube (or of many sites) that displays in Jupyter and saves as HTML.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray, or sites
        A cube (``open_embeddings``), or sites (a :class:`~xembed.Site`, a
        list of them, a file or GeoDataFrame :func:`xembed.load_sites`
        reads): then this is :func:`explore_sites`.
    layers : list of str or DataArray, optional
        Which pictures, each a radio group with a button per year:
        ``"rgb"`` (the default: bands A01, A16, A09), ``"pca_rgb"``,
        ``"change"`` (since the site's start year), ``"similarity"`` (with
        the year before), ``"clusters"`` (k-means, k=6), ``"classes"`` (the
        cube's variable with ``flag_meanings``), a data variable's name, or
        DataArrays on the cube's grid: RGBA with a ``channel`` dim, integers
        with ``flag_values``/``flag_meanings`` (or ``k``), bools, or floats
        (coloured from ``valid_min`` to ``valid_max`` if given, else the 1st
        to 99th percentile). Without ``year`` it is one picture.
    years : list of int, optional
        Years to show (default: all of the cube's).
    basemap : str, optional
        Online tiles under the pictures, e.g. ``"OpenStreetMap"`` or
        ``"Esri.WorldImagery"``; default none: the page loads nothing
        from the internet.
    table, links
        For sites only: see :func:`explore_sites`.

    Returns
    -------
    folium.Map
        Shown by Jupyter; ``m.save("map.html")`` writes one self-contained file.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> m = explore(make_cube(shape=(8, 8)), ["rgb", "change"])
    >>> m.save("map.html")  # doctest: +SKIP
    >>> page = m.get_root().render()
    >>> "RGB (A01, A16, A09)" in page, "<script src=" in page  # all inline: nothing to load
    (True, False)
    """
    _folium()
    if not isinstance(obj, (xr.Dataset, xr.DataArray)):
        if layers is not None or years is not None:
            raise TypeError(
                "layers= and years= are for a cube; a map of sites takes table= and links= "
                "(see xembed.explore_sites)"
            )
        return explore_sites(obj, table=table, links=links, basemap=basemap)
    if table is not None or links is not None:
        raise TypeError(
            "table= and links= are for a map of sites (xembed.explore_sites), not a cube"
        )
    from xembed.maps.cubemap import cube_map

    return cube_map(obj, layers, years=years, basemap=basemap)


def explore_sites(
    sites: Any,
    *,
    table: Any = None,
    links: Mapping[Any, str] | None = None,
    basemap: str | None = None,
) -> Any:
    """Many sites' outlines on one map, a popup per site linking to its page.

    Parameters
    ----------
    sites : Site, list of Site, path or GeoDataFrame
        What :func:`xembed.load_sites` reads, or sites already loaded.
    table : pandas.DataFrame, optional
        A row per site, matched on a ``site_id`` column (or index); every
        other column is shown in the popup (e.g. ``start_year``,
        ``valid_fraction``, ``changed_ha``), floats to 3 significant digits.
    links : mapping, optional
        ``{site_id: url}``: the popup links to it (relative URLs such as
        ``"sites/3101.html"`` keep a report folder movable).
    basemap : str, optional
        Online tiles, as in :func:`explore`; default none (offline).

    Returns
    -------
    folium.Map

    Examples
    --------
    >>> import xembed
    >>> m = explore_sites(xembed.demo_sites()[:2], links={3101: "sites/3101.html"})
    >>> page = m.get_root().render()
    >>> "sites/3101.html" in page, "Site 3102" in page
    (True, True)
    """
    _folium()
    from xembed.maps.sitesmap import sites_map

    return sites_map(sites, table=table, links=links, basemap=basemap)
