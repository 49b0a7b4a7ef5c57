"""The map of one cube: yearly pictures in radio groups, the site boundary, legends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import folium
import xarray as xr

from xembed.maps.layers import colourise, compute_layers, resolve_layers, year_labels
from xembed.maps.page import Legend, OfflineMap, YearControl
from xembed.maps.raster import WebImage, data_uri, to_web_mercator
from xembed.render.frame import BOUNDARY_COLOR, crs_of, years_of

__all__ = ["BOUNDARY_GROUP", "OFF", "cube_map", "new_map"]

#: The first radio button of every group: none of its pictures shown.
OFF = "off"
#: The group of the layer control holding the site boundary (a checkbox).
BOUNDARY_GROUP = "Site"
#: The map pane of the pictures: above base-map tiles (200), below the boundary (400).
PICTURES = "pictures"
MAX_ZOOM = 22  # a 10 m pixel is ~30 screen pixels at zoom 20: room to look closely


def new_map(bounds: list[list[float]], basemap: str | None) -> OfflineMap:
    """An offline map fitted to ``[[south, west], [north, east]]``, with online tiles if asked."""
    (south, west), (north, east) = bounds
    m = OfflineMap(
        location=[(south + north) / 2, (west + east) / 2],
        # far from the fitted zoom, so fitBounds jumps instead of animating (Leaflet animates
        # only up to 4 levels): the page is drawn at once, as screenshots and printing want
        zoom_start=2,
        tiles=None,
        max_zoom=MAX_ZOOM,
        control_scale=True,
    )
    if basemap is not None:
        folium.TileLayer(basemap, max_zoom=MAX_ZOOM, max_native_zoom=19, control=False).add_to(m)
    folium.map.CustomPane(PICTURES, z_index=350).add_to(m)
    m.fit_bounds(bounds)
    return m


def _check_years(ds: xr.Dataset | xr.DataArray, years: Sequence[int] | None) -> None:
    if years is None:
        return
    have = years_of(ds)
    missing = [int(y) for y in years if int(y) not in have]
    if missing:
        raise ValueError(f"years {missing} are not in the cube; it has {have}")


def _boundary(ds: xr.Dataset | xr.DataArray) -> folium.GeoJson | None:
    import shapely

    wkt = ds.attrs.get("site_geometry_wkt")
    if not wkt:
        return None
    site = ds.attrs.get("site_id", "")
    return folium.GeoJson(
        shapely.geometry.mapping(shapely.from_wkt(wkt)),
        name=f"boundary {site}".strip(),
        style_function=lambda _: {"color": BOUNDARY_COLOR, "weight": 2, "fill": False},
        tooltip=f"Site {site}" if site else None,
    )


def _group(m: folium.Map, web: WebImage, names: list[str], *, show: int | None) -> list[Any]:
    """Add one radio group's overlays to the map: "off", then a picture per year."""
    entries: list[Any] = [folium.FeatureGroup(name=OFF, show=show is None).add_to(m)]
    for i, (name, image) in enumerate(zip(names, web.rgba, strict=True)):
        overlay = folium.raster_layers.ImageOverlay(
            data_uri(image), bounds=web.bounds, name=name, show=i == show, pane=PICTURES
        )
        entries.append(overlay.add_to(m))
    return entries


def _unique(title: str, taken: dict[str, Any]) -> str:
    n, out = 2, title
    while out in taken:
        out, n = f"{title} ({n})", n + 1
    return out


def cube_map(
    ds: xr.Dataset | xr.DataArray,
    layers: Sequence[Any] | None = None,
    *,
    years: Sequence[int] | None = None,
    basemap: str | None = None,
) -> OfflineMap:
    """The map :func:`xembed.explore` draws for a cube (see there)."""
    crs = crs_of(ds)
    if crs is None:
        raise ValueError(
            "explore needs the cube's CRS to place it on the map; write it with "
            "ds = ds.rio.write_crs('EPSG:32722') (the cube's UTM zone)"
        )
    _check_years(ds, years)
    resolved = resolve_layers(ds, layers, years)
    computed = compute_layers(resolved)  # one compute for every layer: one read of the cube
    pictures = [colourise(layer, values) for layer, values in zip(resolved, computed, strict=True)]
    webs = [to_web_mercator(rgba, crs, extent) for rgba, extent, _ in pictures]
    m = new_map(webs[0].bounds, basemap)  # fitted to the first layer
    groups: dict[str, list[Any]] = {}
    for i, (layer, web) in enumerate(zip(resolved, webs, strict=True)):
        title = _unique(layer.title, groups)
        show = 0 if i == 0 else None  # the first layer's first year; the others off
        groups[title] = _group(m, web, year_labels(layer), show=show)
    exclusive = list(groups)
    boundary = _boundary(ds)
    if boundary is not None:
        groups[BOUNDARY_GROUP] = [boundary.add_to(m)]
    YearControl(groups, exclusive_groups=False, exclusiveGroups=exclusive, collapsed=False).add_to(
        m
    )
    Legend([legend for _, _, legend in pictures if legend is not None]).add_to(m)
    return m
