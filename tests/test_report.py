"""The HTML report: every page and link, failures listed, escaping, the CLI, and a real browser."""

from __future__ import annotations

import html.parser
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from shapely.geometry import box

import xembed
from xembed.cli import main
from xembed.report import site as site_module
from xembed.report.build import build_report
from xembed.report.site import slug

YEARS = [2023, 2024]
BAD_ID = "<b>far&away</b>"  # outside the sample, and full of HTML
ODD_ID = "plot/7 <new>"  # inside the sample: its page needs a safe file name


class _Links(html.parser.HTMLParser):
    """Every ``href`` and ``src`` of a page, and the text of its table cells."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)


def links_of(page: Path) -> list[str]:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.links


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """Three demo sites (one with an odd id) and one far outside the sample, two years."""
    out = tmp_path_factory.mktemp("report")
    far = xembed.Site(geometry=box(10.0, 50.0, 10.003, 50.003), id=BAD_ID, start_year=2023)
    a, b, c = xembed.demo_sites()[:3]
    odd = xembed.Site(ODD_ID, c.start_year, c.geometry)
    sites = [a, b, odd, far]
    return build_report(sites, YEARS, out, progress=False, dimensions=64)


def test_every_page_exists_and_every_link_resolves(built) -> None:
    out = built.index.parent
    pages = [out / "index.html", out / "overview.html"] + [
        out / "sites" / f"{slug(i)}.html" for i in (3101, 3102, ODD_ID)
    ]
    assert "/" not in slug(ODD_ID) and "<" not in slug(ODD_ID)
    for page in pages:
        assert page.is_file(), page
    checked = 0
    for page in [out / "index.html", *out.glob("sites/*.html")]:
        for link in links_of(page):
            target = page.parent / urllib.parse.unquote(link)
            assert target.exists(), f"{page.name} links to missing {link}"
            checked += 1
    assert checked > 30  # 3 site pages x (5 pictures/map + downloads) + index
    site_dir = out / "sites" / "3101"
    assert {p.name for p in site_dir.iterdir()} >= {
        "strip.png",
        "years.gif",
        "similarity.png",
        "change.png",
        "map.html",
        "means.csv",
        "cube.zarr",
        "geotiff",
    }
    assert sorted(p.name for p in (site_dir / "geotiff").iterdir()) == [
        "embeddings_2023.tif",
        "embeddings_2024.tif",
    ]
    assert not [p for p in out.rglob(".*")]  # atomic writes leave no temporaries


def test_index_numbers_are_the_batch_numbers(built) -> None:
    out = built.index.parent
    means = pd.read_csv(out / "means.csv", dtype={"site_id": str})
    table = xembed.extract(xembed.demo_sites()[:2], YEARS, progress=False)
    numbers = ["year", "valid_fraction", "valid_ha", *xembed.BANDS]
    pd.testing.assert_frame_equal(means[numbers].iloc[: len(table)], table[numbers])
    assert means["site_id"].tolist() == ["3101", "3101", "3102", "3102", ODD_ID, ODD_ID]
    rows = means[means["site_id"] == "3102"]
    a, b = (rows[list(xembed.BANDS)].to_numpy()[i] for i in (0, 1))
    change = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    index = built.index.read_text()
    # the 3102 row: its change (start 2018 is before 2023, so since 2023) and valid fraction
    row = index[index.index('data-sort="3102"') :].split("</tr>")[0]
    assert f'data-sort="{float(change)!r}"' in row
    assert f'data-sort="{float(rows["valid_fraction"].min())!r}"' in row
    assert '<a href="sites/3102.html">page</a>' in row
    site_csv = pd.read_csv(out / "sites" / "3102" / "means.csv", dtype={"site_id": str})
    pd.testing.assert_frame_equal(site_csv, rows.reset_index(drop=True))


def test_failing_site_is_listed_escaped_and_the_others_complete(built) -> None:
    index = built.index.read_text()
    assert [f["site_id"] for f in built.failures] == [BAD_ID]
    assert "DataNotFoundError" in built.failures[0]["error"]
    assert BAD_ID not in index  # never raw HTML
    assert "&lt;b&gt;far&amp;away&lt;/b&gt;" in index
    assert "Failures (1)" in index and "4 sites, 3 pages" in index
    assert len(list((built.index.parent / "sites").glob("*.html"))) == 3
    assert ODD_ID not in index and "plot/7 &lt;new&gt;" in index
    odd_page = (built.index.parent / "sites" / f"{slug(ODD_ID)}.html").read_text()
    assert "<h1>Site plot/7 &lt;new&gt;</h1>" in odd_page


def test_a_failing_page_is_listed_and_report_warns(tmp_path, monkeypatch) -> None:
    real = site_module.render.save_gif

    def broken(frames, path, **kwargs):
        if "3102" in str(path):
            raise RuntimeError("disk full <now>")
        return real(frames, path, **kwargs)

    monkeypatch.setattr(site_module.render, "save_gif", broken)
    sites = xembed.demo_sites()[:2]
    with pytest.warns(UserWarning, match=r"xembed.report: 1 site failed: site 3102: RuntimeError"):
        index = xembed.report(sites, YEARS, tmp_path, progress=False, dimensions=48)
    text = index.read_text()
    assert "RuntimeError: disk full &lt;now&gt;" in text
    assert (tmp_path / "sites" / "3101.html").is_file()
    assert not (tmp_path / "sites" / "3102.html").exists()
    assert 'href="sites/3101.html"' in text and 'href="sites/3102.html"' not in text


def test_slug_keeps_safe_ids_and_separates_unsafe_ones() -> None:
    assert slug(3101) == "3101"
    assert slug("a/b") != slug("a_b") and "/" not in slug("a/b")


def test_cli_report_to_a_relative_folder(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["report", "demo", "--years", "2023-2024", "--out", "r", "--site", "3104"]
    assert main([*argv, "--quiet", "--dimensions", "48"]) == 0
    out = tmp_path / "r"
    assert f"wrote {out / 'index.html'}" in capsys.readouterr().out
    assert (out / "sites" / "3104.html").is_file()
    assert 'href="3104/cube.zarr"' in (out / "sites" / "3104.html").read_text()
    (tmp_path / "file").write_text("x")
    assert main(["report", "demo", "--years", "2023", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


# --- in a real browser (tests/_browser.py) ----------------------------------------------


def _pages(built) -> list[Path]:
    out = built.index.parent
    return [out / "index.html", *sorted((out / "sites").glob("*.html"))]


@pytest.mark.browser
def test_report_pages_open_offline_with_every_image(browser, built, tmp_path) -> None:
    shots = tmp_path / "screenshots"
    for path in _pages(built):
        page = browser.open(path)
        assert page.console_errors() == [], path.name
        assert page.external_requests() == [], path.name
        assert page.broken_images() == [], path.name
        assert page.images() == (0 if path.name == "index.html" else 4), path.name
        stats = page.screenshot(shots / f"{path.stem}.png")  # prints the path
        assert stats["grey_std"] > 10 and stats["colours"] > 20, (path.name, stats)
        # the embedded map (overview or the site's) drew its outlines offline
        browser.driver.switch_to.frame(browser.driver.find_element("tag name", "iframe"))
        try:
            outlines = browser.driver.execute_script(
                "return document.querySelectorAll('path.leaflet-interactive').length"
            )
        finally:
            browser.driver.switch_to.default_content()
        assert outlines >= (4 if path.name == "index.html" else 1), path.name


def _column(browser, index: int) -> list[str]:
    return browser.driver.execute_script(
        "return Array.from(document.querySelectorAll('table.sortable tbody tr'))"
        f".map(r => r.cells[{index}].getAttribute('data-sort'))"
    )


@pytest.mark.browser
def test_index_table_sorts_by_any_column(browser, built) -> None:
    browser.open(built.index)
    headers = browser.driver.find_elements("css selector", "table.sortable thead th")
    titles = [h.text for h in headers]
    area = titles.index("area ha")
    site = titles.index("site")
    before = [float(v) for v in _column(browser, area)]
    assert len(before) == 4 and before != sorted(before)  # the far site is listed last

    headers[area].click()
    values = [float(v) for v in _column(browser, area)]
    assert values == sorted(values)
    assert headers[area].get_attribute("aria-sort") == "ascending"
    headers[area].click()
    assert [float(v) for v in _column(browser, area)] == sorted(values, reverse=True)

    headers[site].click()  # text column: ids in text order
    ids = _column(browser, site)
    assert ids == sorted(ids) and ids[0] == "3101"
    change = titles.index("change since baseline")
    headers[change].click()  # the failed site has no change: empty cells go last
    changes = _column(browser, change)
    assert changes[-1] == "" and [float(c) for c in changes[:-1]] == sorted(
        float(c) for c in changes[:-1]
    )


def test_cli_report_exits_1_naming_a_failed_site_and_still_writes_the_index(
    tmp_path, capsys
) -> None:
    import geopandas as gpd

    path = tmp_path / "far.geojson"
    far = box(10.0, 50.0, 10.002, 50.002)
    gpd.GeoDataFrame({"rid": [7], "start_year": [2020]}, geometry=[far], crs="EPSG:4326").to_file(
        path
    )
    out = tmp_path / "r"
    assert main(["report", str(path), "--years", "2024", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "1 site failed: site 7: DataNotFoundError" in err and "index.html" in err
    assert "Failures (1)" in (out / "index.html").read_text()
