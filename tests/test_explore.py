"""Interactive maps (xembed.explore): layers, alignment, offline pages, in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re

import numpy as np
import pytest
import shapely
import xarray as xr
from pyproj import Transformer

import xembed
from tests._browser import chromium_missing
from xembed.testing import make_cube, raise_if_dask_computes

pytest.importorskip("folium")

YEARS = list(range(2017, 2025))
TO_MERC = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)


def overlays(page: str) -> list[tuple[np.ndarray, list[list[float]]]]:
    """The image overlays of a saved map, as the browser gets them: (RGBA, bounds)."""
    from PIL import Image

    found = re.findall(
        r'L\.imageOverlay\(\s*"data:image/png;base64,([^"]+)",\s*(\[\[.*?\]\])', page
    )
    return [
        (np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGBA")), json.loads(bb))
        for b, bb in found
    ]


def pixel_to_merc(col: float, row: float, shape: tuple[int, ...], bounds: list[list[float]]):
    """A point of an overlay picture (in pixels) to Web Mercator metres, as Leaflet places it."""
    (south, west), (north, east) = bounds
    x0, y0 = TO_MERC.transform(west, north)
    x1, y1 = TO_MERC.transform(east, south)
    return x0 + col / shape[1] * (x1 - x0), y0 + row / shape[0] * (y1 - y0)


@pytest.fixture(scope="module")
def demo_cube():
    site = xembed.demo_sites()[0]  # 3101
    return xembed.open_embeddings(site, YEARS)


@pytest.fixture(scope="module")
def demo_map(demo_cube, tmp_path_factory):
    path = tmp_path_factory.mktemp("explore") / "map.html"
    demo_cube.embed.explore(["rgb", "change", "similarity", "clusters"]).save(str(path))
    return path


# --- offline, layers, legends -------------------------------------------------------------------


def test_saved_map_references_nothing_online(demo_map):
    page = demo_map.read_text()
    # Vendored Leaflet mentions URLs in its source (a link, an SVG namespace): strip the
    # inlined assets, then no http(s) may remain anywhere in what xembed wrote.
    own = re.sub(r"<(script|style)>/\* leaflet[^*]*\*/.*?</\1>", "", page, flags=re.S)
    assert len(own) < len(page) - 140_000  # Leaflet itself is inline
    assert not re.findall(r"https?://", own)
    assert "<script src=" not in page and "<link " not in page  # nothing loaded: all inline
    assert "url(images/" not in page and "sourceMappingURL" not in page


def test_basemap_adds_online_tiles_only_when_asked():
    cube = make_cube(shape=(6, 6))
    assert "tile.openstreetmap.org" not in xembed.explore(cube).get_root().render()
    page = xembed.explore(cube, basemap="OpenStreetMap").get_root().render()
    assert "tile.openstreetmap.org" in page


def test_layers_groups_and_legends(demo_map):
    page = demo_map.read_text()
    assert len(overlays(page)) == 4 * len(YEARS)
    for title in ("RGB (A01, A16, A09)", "Change since 2017", "Similarity with previous year"):
        assert json.dumps(title) in page  # a group of the layer control
    # a colour bar per continuous layer, swatches per class
    assert page.count('class="xembed-bar"') == 2
    assert page.count('class="xembed-swatch"') == 6
    assert "1 − cosine similarity with 2017" in page


def test_one_compute_reads_the_cube_once():
    cube = make_cube(shape=(8, 8)).chunk()
    with raise_if_dask_computes(max_computes=1):
        xembed.explore(cube, ["rgb", "change", "similarity"])


def test_user_arrays_classes_and_bools():
    cube = make_cube(shape=(8, 8))
    classes = xr.zeros_like(cube.coverage, dtype=np.int16).rename("land")
    classes[:4] = 1
    classes.attrs = {"flag_values": [0, 1], "flag_meanings": "forest pasture"}
    changed = xembed.change(cube, threshold=0.5)
    page = xembed.explore(cube, [classes, changed]).get_root().render()
    assert ">forest<" in page and ">pasture<" in page and ">no<" in page
    assert len(overlays(page)) == 1 + cube.sizes["year"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": ["ndvi"]}, "unknown layer 'ndvi'"),
        ({"layers": ["classes"]}, "flag_meanings"),
        ({"years": [1999]}, r"years \[1999\] are not in the cube"),
        ({"links": {1: "a.html"}}, "for a map of sites"),
    ],
)
def test_errors_name_the_fix(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        xembed.explore(make_cube(shape=(4, 4)), **kwargs)


def test_integer_layer_without_class_names_is_refused():
    labels = xr.zeros_like(make_cube(shape=(4, 4)).coverage, dtype=np.int16)
    with pytest.raises(ValueError, match=r"flag_values.*flag_meanings"):
        xembed.explore(make_cube(shape=(4, 4)), [labels])


# --- alignment ------------------------------------------------------------------------------------


def test_corner_pixels_land_where_utm_puts_them(demo_cube):
    """Plant one coloured pixel at each corner of the UTM grid; find it on the web map."""
    ny, nx = demo_cube.sizes["y"], demo_cube.sizes["x"]
    rgba = np.zeros((ny, nx, 4), np.uint8)
    corners = {(0, 0): 255, (0, nx - 1): 200, (ny - 1, 0): 150, (ny - 1, nx - 1): 100}
    for (r, c), red in corners.items():
        rgba[r, c] = (red, 0, 0, 255)
    planted = xr.DataArray(
        rgba, dims=("y", "x", "channel"), coords={"y": demo_cube.y, "x": demo_cube.x}
    )
    page = xembed.explore(demo_cube, [planted]).get_root().render()
    ((image, bounds),) = overlays(page)
    to_ll = Transformer.from_crs(demo_cube.rio.crs, "EPSG:4326", always_xy=True)
    out_px = (TO_MERC.transform(*bounds[1][::-1])[0] - TO_MERC.transform(*bounds[0][::-1])[0]) / (
        image.shape[1]
    )
    for (r, c), red in corners.items():
        rows, cols = np.nonzero((image[..., 0] == red) & (image[..., 3] == 255))
        assert rows.size, f"corner pixel {(r, c)} is missing from the web map"
        got = pixel_to_merc(cols.mean() + 0.5, rows.mean() + 0.5, image.shape, bounds)
        want = TO_MERC.transform(*to_ll.transform(float(demo_cube.x[c]), float(demo_cube.y[r])))
        assert np.hypot(got[0] - want[0], got[1] - want[1]) < out_px  # within one picture pixel


def test_boundary_and_raster_line_up_at_the_four_corners(demo_cube):
    """The site's pixels (coverage > 0) reach the polygon's extreme vertices to within a pixel."""
    cover = (demo_cube.coverage > 0).astype(float).where(demo_cube.coverage > 0)
    page = xembed.explore(demo_cube, [cover]).get_root().render()
    ((image, bounds),) = overlays(page)
    rows, cols = np.nonzero(image[..., 3] == 255)
    left, top = pixel_to_merc(cols.min(), rows.min(), image.shape, bounds)
    right, bottom = pixel_to_merc(cols.max() + 1, rows.max() + 1, image.shape, bounds)
    polygon = shapely.from_wkt(demo_cube.attrs["site_geometry_wkt"])
    px, py = TO_MERC.transform(*np.asarray(polygon.exterior.coords).T)
    pixel = 10 / np.cos(np.radians(polygon.centroid.y))  # one 10 m pixel in Mercator metres
    # pixels touching the polygon are drawn: the raster reaches past it, by less than a pixel
    for raster, poly, outward in (
        (left, px.min(), -1),
        (right, px.max(), 1),
        (bottom, py.min(), -1),
        (top, py.max(), 1),
    ):
        assert 0 <= (raster - poly) * outward < 1.5 * pixel  # 1 pixel + the diagonal of rotation


# --- many sites -----------------------------------------------------------------------------------


def test_explore_sites_popups_link_to_pages(demo_sites):
    import pandas as pd

    table = pd.DataFrame(
        {"site_id": [s.id for s in demo_sites], "valid_fraction": 0.987, "changed_ha": 1.25}
    )
    links = {s.id: f"sites/{s.id}.html" for s in demo_sites}
    page = xembed.explore(demo_sites, table=table, links=links).get_root().render()
    for site in demo_sites:
        assert f"sites/{site.id}.html" in page
    assert "0.987" in page and "changed ha" in page
    assert "$(" not in page.split("/* leaflet-groupedlayercontrol")[-1]  # no jQuery needed


def test_accessor_and_dispatch(demo_sites):
    cube = make_cube(shape=(4, 4))
    assert type(cube.embed.explore()).__name__ == "OfflineMap"
    assert type(xembed.explore(demo_sites[0])).__name__ == "OfflineMap"


# --- in a real browser ----------------------------------------------------------------------------


def test_browser_tests_run_on_ci():
    """Under CI=true the browser tests must not be skipped: Chromium must be there."""
    missing, on_ci = chromium_missing(), os.environ.get("CI") == "true"
    assert not (on_ci and missing), f"CI=true but the browser tests would be skipped: {missing}"


@pytest.mark.browser
def test_map_in_headless_chromium(browser, demo_map, tmp_path):
    page = browser.open(demo_map)
    assert page.console_errors() == []
    assert page.external_requests() == []
    control = page.layer_control()
    assert control["RGB (A01, A16, A09)"] == [str(y) for y in YEARS] + ["off"]
    assert control["Change since 2017"] == [str(y) for y in YEARS] + ["off"]
    assert set(control) == {
        "RGB (A01, A16, A09)",
        "Change since 2017",
        "Similarity with previous year",
        "Clusters (k-means)",
        "Site",
    }
    assert page.images() == 1 and page.broken_images() == []
    stats = page.screenshot(tmp_path / "map-rgb-2017.png")
    assert stats["grey_std"] > 10 and stats["colours"] > 50
    for year in YEARS:  # step through the years: one picture at a time, each loaded
        page.click_layer("RGB (A01, A16, A09)", str(year))
        assert page.images() == 1 and page.broken_images() == []
    page.click_layer("Change since 2017", "2021")
    assert page.images() == 2 and page.broken_images() == []
    page.click_layer("RGB (A01, A16, A09)", "off")
    stats = page.screenshot(tmp_path / "map-change-2021.png")
    assert stats["grey_std"] > 10
    assert page.console_errors() == [] and page.external_requests() == []


@pytest.mark.browser
def test_sites_map_in_headless_chromium(browser, demo_sites, tmp_path):
    path = tmp_path / "sites.html"
    links = {s.id: f"sites/{s.id}.html" for s in demo_sites}
    xembed.explore_sites(demo_sites, links=links).save(str(path))
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.open(path)
    outlines = browser.driver.find_elements("css selector", "path.leaflet-interactive")
    assert len(outlines) == len(demo_sites)
    # a click event on the outline (a real pointer click can land on the sticky tooltip)
    browser.driver.execute_script(
        "arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", outlines[0]
    )
    link = WebDriverWait(browser.driver, 10).until(
        lambda d: d.find_element("css selector", ".leaflet-popup-content a")
    )
    assert re.fullmatch(r".*/sites/31\d\d\.html", link.get_attribute("href"))
    assert page.console_errors() == [] and page.external_requests() == []
    stats = page.screenshot(tmp_path / "sites.png")
    assert stats["colours"] > 5


def test_harness_tells_local_from_remote():
    from tests._browser import is_local

    assert is_local("file:///tmp/a.html") and is_local("data:image/png;base64,AA")
    assert is_local("http://127.0.0.1:8000/x") and not is_local("https://unpkg.com/leaflet")
    assert not is_local("http://127.0.0.1.evil.example/x")


def test_screenshot_stats_tell_blank_from_drawn(tmp_path):
    from PIL import Image

    blank, drawn = tmp_path / "blank.png", tmp_path / "drawn.png"
    Image.new("RGB", (64, 64), (221, 221, 221)).save(blank)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(drawn)
    from tests._browser import screenshot_stats

    assert screenshot_stats(blank) == {"grey_std": 0.0, "colours": 1.0}
    assert screenshot_stats(drawn)["grey_std"] > 10


def test_missing_chromium_names_the_packages(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert "apt-get install chromium chromium-driver" in str(chromium_missing())


def test_map_displays_in_jupyter():
    html = xembed.explore(make_cube(shape=(4, 4)))._repr_html_()
    assert "<iframe" in html and "https://cdn" not in html


@pytest.mark.browser
def test_corners_line_up_on_screen(browser, demo_cube, tmp_path):
    """In Chromium, each planted corner pixel is drawn where Leaflet puts its UTM centre."""
    from PIL import Image

    ny, nx = demo_cube.sizes["y"], demo_cube.sizes["x"]
    rgba = np.zeros((ny, nx, 4), np.uint8)
    colours = {(0, 0): (255, 0, 0), (0, nx - 1): (0, 0, 255), (ny - 1, 0): (0, 255, 0)}
    colours[ny - 1, nx - 1] = (255, 0, 255)
    for (r, c), colour in colours.items():
        rgba[r, c] = (*colour, 255)
    planted = xr.DataArray(
        rgba, dims=("y", "x", "channel"), coords={"y": demo_cube.y, "x": demo_cube.x}
    )
    m = xembed.explore(demo_cube, [planted])
    m.save(str(tmp_path / "corners.html"))
    page = browser.open(tmp_path / "corners.html")
    page.screenshot(tmp_path / "corners.png")
    shot = np.asarray(Image.open(tmp_path / "corners.png").convert("RGB")).astype(int)
    to_ll = Transformer.from_crs(demo_cube.rio.crs, "EPSG:4326", always_xy=True)
    for (r, c), colour in colours.items():
        lon, lat = to_ll.transform(float(demo_cube.x[c]), float(demo_cube.y[r]))
        want = browser.driver.execute_script(
            f"const p = {m.get_name()}.latLngToContainerPoint([arguments[0], arguments[1]]);"
            "return [p.x, p.y];",
            lat,
            lon,
        )
        rows, cols = np.nonzero((np.abs(shot - colour) <= 8).all(axis=2))
        assert rows.size > 25, f"corner {(r, c)} is not drawn"  # a 10 m pixel: > 5 x 5 px
        size = np.sqrt(rows.size)  # one embedding pixel, in screen pixels
        error = np.hypot(cols.mean() + 0.5 - want[0], rows.mean() + 0.5 - want[1])
        print(f"corner {(r, c)}: {error:.2f} px off; a pixel is {size:.1f} px")
        assert error < size / 4, f"corner {(r, c)} is {error:.1f} px off (pixel: {size:.0f} px)"
    assert page.console_errors() == []
