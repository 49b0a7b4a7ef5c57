"""The map of many sites: their outlines, a popup each with its numbers and a link."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import folium
import numpy as np

from xembed.maps.cubemap import new_map
from xembed.maps.page import OfflineMap, StaticPopup
from xembed.render.frame import BOUNDARY_COLOR
from xembed.sites import Site, load_sites

__all__ = ["as_sites", "popup_html", "sites_map"]


def as_sites(sites: Any) -> list[Site]:
    """Sites as a list: a :class:`~xembed.Site`, a list, or what :func:`load_sites` reads."""
    if isinstance(sites, Site):
        return [sites]
    if isinstance(sites, Sequence) and not isinstance(sites, str) and sites:
        if all(isinstance(s, Site) for s in sites):
            return list(sites)
    return load_sites(sites)


def _rows(table: Any) -> dict[str, dict[str, Any]]:
    if table is None:
        return {}
    frame = table if "site_id" in table.columns else table.reset_index()
    if "site_id" not in frame.columns:
        raise ValueError(
            f"table needs a 'site_id' column (or index) to match its rows to the sites; it has "
            f"{list(frame.columns)}"
        )
    rows = frame.drop_duplicates("site_id").set_index(frame["site_id"].astype(str))
    return {k: v for k, v in rows.drop(columns="site_id").to_dict("index").items()}


def _format(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if np.isnan(number):
            return "–"
        return f"{number:.3g}" if abs(number) < 1000 else f"{number:,.0f}"
    return str(value)


def popup_html(site: Site, row: Mapping[str, Any], link: str | None) -> str:
    """The popup of one site: its id, start year, the table's columns, and the link.

    Examples
    --------
    >>> import shapely
    >>> site = Site(3101, 2016, shapely.box(-48.0, -22.6, -47.99, -22.59))
    >>> text = popup_html(site, {"valid_fraction": 0.987}, "sites/3101.html")
    >>> '<a href="sites/3101.html"' in text, "0.987" in text
    (True, True)
    """
    cells = {"start year": "–" if site.start_year is None else str(site.start_year)}
    cells.update({str(k).replace("_", " "): _format(v) for k, v in row.items()})
    body = "".join(
        f"<tr><td>{html.escape(k)}</td><td style='text-align:right'>{html.escape(v)}</td></tr>"
        for k, v in cells.items()
    )
    out = f"<b>Site {html.escape(str(site.id))}</b><table class='xembed-popup'>{body}</table>"
    if link:
        out += f'<a href="{html.escape(link)}" target="_top">Open the site\'s report</a>'
    return out


def sites_map(
    sites: Any,
    *,
    table: Any = None,
    links: Mapping[Any, str] | None = None,
    basemap: str | None = None,
) -> OfflineMap:
    """The map :func:`xembed.explore_sites` draws (see there)."""
    import shapely

    listed = as_sites(sites)
    rows = _rows(table)
    hrefs = {str(k): v for k, v in (links or {}).items()}
    west, south, east, north = shapely.union_all([s.geometry for s in listed]).bounds
    m = new_map([[south, west], [north, east]], basemap)
    style = {"color": BOUNDARY_COLOR, "weight": 2, "fillOpacity": 0.15, "fillColor": BOUNDARY_COLOR}
    for site in listed:
        key = str(site.id)
        folium.GeoJson(
            shapely.geometry.mapping(site.geometry),
            name=f"Site {key}",
            style_function=lambda _: style,
            tooltip=f"Site {key}",
            # folium's hint names GeoJsonPopup only; its code takes any Popup
            popup=StaticPopup(popup_html(site, rows.get(key, {}), hrefs.get(key)), max_width=320),  # type: ignore[arg-type]
        ).add_to(m)
    return m
