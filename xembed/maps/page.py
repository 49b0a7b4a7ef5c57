"""The page around a map: Leaflet inlined from package data, legends, the layer control.

Folium links Leaflet, jQuery, Bootstrap and Font Awesome from CDNs; an
xembed map needs only Leaflet and the grouped layer control, so it carries
exactly those, inlined into the HTML (their images as data URIs), and a
saved map opens offline from any folder, alone.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import folium
from branca.element import Element, MacroElement
from folium.plugins import GroupedLayerControl
from folium.template import Template

__all__ = [
    "ASSETS",
    "Legend",
    "OfflineMap",
    "StaticPopup",
    "YearControl",
    "asset_text",
    "colour_bar",
    "swatches",
]

#: The vendored web assets, in load order: (name, path under ``xembed/data/web``).
ASSETS: tuple[tuple[str, str], ...] = (
    ("leaflet_css", "leaflet/leaflet.css"),
    ("leaflet", "leaflet/leaflet.js"),
    ("groupedlayercontrol_css", "leaflet-groupedlayercontrol/leaflet.groupedlayercontrol.min.css"),
    ("groupedlayercontrol", "leaflet-groupedlayercontrol/leaflet.groupedlayercontrol.min.js"),
)


def _web_file(path: str) -> Any:
    return files("xembed").joinpath("data", "web", *path.split("/"))


def asset_text(path: str) -> str:
    """One vendored asset, ready to inline.

    Source-map comments are dropped (a browser's developer tools would fetch
    the missing ``.map`` files) and CSS ``url(images/...)`` become data URIs.

    Examples
    --------
    >>> css = asset_text("leaflet/leaflet.css")
    >>> "url(images/" in css, "url(data:image/png;base64," in css
    (False, True)
    """
    text = _web_file(path).read_text(encoding="utf-8")
    text = re.sub(r"^\s*(//|/\*)# sourceMappingURL=.*$", "", text, flags=re.MULTILINE)
    folder = path.rsplit("/", 1)[0]

    def data_uri(match: re.Match[str]) -> str:
        png = _web_file(f"{folder}/{match.group(1)}").read_bytes()
        return f"url(data:image/png;base64,{base64.b64encode(png).decode('ascii')})"

    return re.sub(r"url\((images/[\w.-]+\.png)\)", data_uri, text)


class _Raw(Element):
    """Text put into the page as it is (no template: Leaflet's source is not Jinja)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def render(self, **kwargs: Any) -> str:
        return self.text


def _inline(name: str, path: str) -> _Raw:
    text = asset_text(path)
    if path.endswith(".css"):
        return _Raw(f"<style>/* {path} */\n{text}</style>")
    return _Raw(f"<script>/* {path} */\n{text}</script>")


class OfflineMap(folium.Map):
    """A :class:`folium.Map` that carries its scripts and styles inside the page.

    It loads nothing from the internet: Leaflet and the grouped layer
    control are inlined (no jQuery, Bootstrap or icon fonts: xembed's maps
    use none). Online tiles come only from a base map asked for.
    """

    default_js: list[tuple[str, str]] = []  # noqa: RUF012  (folium's own type)
    default_css: list[tuple[str, str]] = []  # noqa: RUF012

    def render(self, **kwargs: Any) -> Any:
        header = self.get_root().header  # type: ignore[attr-defined]
        for name, path in ASSETS:
            header.add_child(_inline(name, path), name=name)
        super().render(**kwargs)


class YearControl(GroupedLayerControl):
    """Folium's grouped layer control, its script inlined by :class:`OfflineMap`.

    One group per analysis, one radio button per year, so stepping through
    the years is a click per year (or the arrow keys on a focused button).
    """

    default_js: list[tuple[str, str]] = []  # noqa: RUF012  (folium's own type)
    default_css: list[tuple[str, str]] = []  # noqa: RUF012


class StaticPopup(folium.Popup):
    """A popup of fixed HTML, set as a string (folium's parses it with jQuery, not shipped)."""

    _template = Template(
        # rendered whole (folium.Popup.render), not as a macro
        """
            var {{ this.get_name() }} = L.popup({{ this.options|tojavascript }});
            {{ this.get_name() }}.setContent({{ this.content|tojson }});
            {{ this._parent.get_name() }}.bindPopup({{ this.get_name() }});
        """
    )

    def __init__(self, content: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.content = content


@dataclass(frozen=True)
class _Entry:
    title: str
    body: str  # HTML, escaped


def colour_bar(
    title: str, colours: Sequence[str], vmin: float, vmax: float, *, label: str = ""
) -> _Entry:
    """A horizontal colour bar (CSS gradient) from ``vmin`` to ``vmax``."""
    gradient = ", ".join(colours)
    ticks = [vmin, (vmin + vmax) / 2, vmax]
    tick_html = "".join(
        f'<span style="flex:1;text-align:{a}">{t:.3g}</span>'
        for t, a in zip(ticks, ("left", "center", "right"), strict=True)
    )
    body = (
        f'<div class="xembed-bar" style="height:12px;width:180px;'
        f'background:linear-gradient(to right, {gradient});border:1px solid #888"></div>'
        f'<div style="display:flex;width:182px;font-size:11px">{tick_html}</div>'
    )
    if label:
        body += f'<div style="font-size:11px;color:#444">{html.escape(label)}</div>'
    return _Entry(title, body)


def swatches(title: str, names: Sequence[str], colours: Sequence[str]) -> _Entry:
    """A legend of classes: a coloured square and a name per class."""
    rows = "".join(
        f'<div style="font-size:11px;line-height:15px"><span class="xembed-swatch" '
        f'style="display:inline-block;width:11px;height:11px;background:{c};'
        f'border:1px solid #666;margin-right:4px;vertical-align:middle"></span>'
        f"{html.escape(str(n))}</div>"
        for n, c in zip(names, colours, strict=True)
    )
    return _Entry(title, rows)


class Legend(MacroElement):
    """The legends of a map's layers, in one box at the bottom left (HTML and CSS only)."""

    def __init__(self, entries: Sequence[_Entry]) -> None:
        super().__init__()
        self._name = "XembedLegend"
        self.entries = list(entries)

    def render(self, **kwargs: Any) -> Any:
        if not self.entries:
            return
        parts = "".join(
            f'<div class="xembed-legend-entry" style="margin:2px 0 6px">'
            f"<b>{html.escape(e.title)}</b>{e.body}</div>"
            for e in self.entries
        )
        box = (
            f'<div class="xembed-legend" style="position:absolute;left:10px;bottom:44px;'
            f"z-index:1000;background:rgba(255,255,255,0.9);padding:6px 8px;border-radius:4px;"
            f"font:12px sans-serif;box-shadow:0 1px 4px rgba(0,0,0,0.4);max-height:60%;"
            f'overflow-y:auto">{parts}</div>'
        )
        self.get_root().html.add_child(_Raw(box), name=self.get_name())  # type: ignore[attr-defined]
