"""Shared fixtures: a hand-built mirror with a known integer pattern, the sample."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine

BOUNDARY_LON = -48.0
LAT = -22.6
FILE_PX = 40  # each file is 40 x 40 px; each "EE image" is 2 x 2 files
YEARS = (2019, 2020)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-network", action="store_true", help="run tests marked network")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from tests._browser import chromium_missing

    no_browser = chromium_missing()  # tests/test_explore.py fails on CI=true when so
    skip_browser = pytest.mark.skip(reason=f"browser test: {no_browser}")
    for item in items:
        if "browser" in item.keywords:
            # one xdist worker runs them all: one Chromium started per run, not per worker
            item.add_marker(skip_browser if no_browser else pytest.mark.xdist_group("browser"))
    if config.getoption("--run-network"):
        return
    skip = pytest.mark.skip(reason="needs the internet; run with --run-network")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    """One sample cache for the whole run, shared by xdist workers.

    The controller (or a plain run) generates the sample once before tests
    start; workers inherit ``XEMBED_CACHE`` and find it ready.
    """
    if "XEMBED_CACHE" not in os.environ:
        base = Path(config.rootpath) / ".cache" / "xembed-test"
        os.environ["XEMBED_CACHE"] = str(base)
    # Served mirrors get a new URL per test: a persistent range cache would only
    # grow. Tests of the cache turn it on themselves.
    os.environ.setdefault("XEMBED_CACHE_BYTES", "0")


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        import shutil

        from xembed._util import cache_dir
        from xembed.sources.sample import sample_root

        for kept in ("index", "ranges"):  # copies of earlier runs' served mirrors
            shutil.rmtree(cache_dir() / kept, ignore_errors=True)
        sample_root()


def pattern(year: int, band: np.ndarray, col: np.ndarray, row: np.ndarray, zone: int):
    """The planted int8 value at a file pixel; never -128, distinct per zone."""
    value = (col * 7 + row * 13 + band * 31 + year * 3 + zone * 101) % 255
    return (value - 127).astype(np.int8)


def utm(zone: int) -> str:
    return f"EPSG:{32700 + zone}"


def mirror_images() -> dict[tuple[int, int], tuple[np.ndarray, float, float, str]]:
    """The tiny mirror's images: (zone, year) -> (q north-up, west, north, crs).

    In each of zones 22S and 23S one 80 x 80 px image straddles the -48 deg
    boundary; pixels whose centre lies on the other zone's side are -128
    (zone-clipped tiles). Image pixel (col, row), counted from the north-west
    corner, holds ``pattern(year, band, col, row, zone)``; a 6 x 6 px gap of
    -128 sits in zone 22's image in 2020.
    """
    images = {}
    size = 2 * FILE_PX
    for zone in (22, 23):
        crs = utm(zone)
        to_utm = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        to_ll = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        bx, by = to_utm.transform(BOUNDARY_LON, LAT)
        west = float(np.floor(bx / 10) * 10 - (400 if zone == 22 else 30))
        north = float(np.floor(by / 10) * 10 + 400)
        gcol, grow = np.meshgrid(np.arange(size), np.arange(size))
        lon, _ = to_ll.transform(west + 10 * gcol + 5, north - 10 * grow - 5)
        outside = (lon > BOUNDARY_LON) if zone == 22 else (lon < BOUNDARY_LON)
        for year in YEARS:
            q = pattern(year, np.arange(64)[:, None, None], gcol[None], grow[None], zone)
            q[:, outside] = -128
            if zone == 22 and year == 2020:
                q[:, 30:36, 20:26] = -128
            images[zone, year] = (q, west, north, crs)
    return images


def write_mirror(root: Path, *, absolute_paths: bool = False) -> pd.DataFrame:
    """Write :func:`mirror_images` as a mirror: 2 x 2 bottom-up files per image."""
    rows = []
    for (zone, year), (q, west, north, crs) in mirror_images().items():
        to_ll = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        for yoff in (0, FILE_PX):
            for xoff in (0, FILE_PX):
                tile = q[:, yoff : yoff + FILE_PX, xoff : xoff + FILE_PX]
                fwest, fnorth = west + 10 * xoff, north - 10 * yoff
                fsouth, feast = fnorth - 10 * FILE_PX, fwest + 10 * FILE_PX
                rel = f"{year}/{zone}S/img{zone}abcdefghijklm-{yoff:010d}-{xoff:010d}.tiff"
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                with rasterio.open(
                    path,
                    "w",
                    driver="GTiff",
                    width=FILE_PX,
                    height=FILE_PX,
                    count=64,
                    dtype="int8",
                    nodata=-128,
                    crs=crs,
                    # bottom-up, as the mirror stores them
                    transform=Affine(10, 0, fwest, 0, 10, fsouth),
                    compress="zstd",
                    tiled=True,
                    blockxsize=16,
                    blockysize=16,
                    interleave="band",
                ) as dst:
                    dst.write(tile[:, ::-1, :])
                    dst.descriptions = tuple(f"A{i:02d}" for i in range(64))
                w, s, e, n = to_ll.transform_bounds(fwest, fsouth, feast, fnorth)
                if zone == 22:
                    e = min(e, BOUNDARY_LON)
                else:
                    w = max(w, BOUNDARY_LON)
                prefix = "s3://us-west-2.opendata.source.coop/tge-labs/aef/v1/annual/"
                rows.append(
                    {
                        "path": prefix + rel if absolute_paths else rel,
                        "crs": crs,
                        "year": year,
                        "utm_zone": f"{zone}S",
                        "utm_west": fwest,
                        "utm_south": fsouth,
                        "utm_east": feast,
                        "utm_north": fnorth,
                        "wgs84_west": w,
                        "wgs84_south": s,
                        "wgs84_east": e,
                        "wgs84_north": n,
                        "geometry": shapely.box(w, s, e, n).wkb,
                    }
                )
    table = pd.DataFrame(rows)
    table.to_parquet(root / "aef_index.parquet")
    return table


@pytest.fixture(scope="session")
def mini_mirror(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("mirror")
    return root, write_mirror(root)


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium for tests marked ``browser`` (tests/_browser.py)."""
    from tests._browser import open_browser

    with open_browser() as b:
        yield b


@pytest.fixture(scope="session")
def sample_root() -> Path:
    from xembed.sources.sample import sample_root

    return sample_root()


@pytest.fixture(scope="session")
def demo_sites():
    from xembed.sources.sample import demo_sites

    return demo_sites()
