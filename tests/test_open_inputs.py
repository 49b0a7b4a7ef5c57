"""What ``open_embeddings`` accepts as a site (issue 12, items 3, 4 and 13).

A site file path or a GeoDataFrame holding one site (``id_field=`` picks the
id column), besides a Site, a geometry or a GeoJSON mapping; the path of an
exported cube still opens that cube. ``buffer=`` with ``clip=True`` keeps the
context the buffer adds.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import box, mapping

import xembed
from tests.conftest import YEARS
from xembed import export
from xembed.errors import DataNotFoundError, SiteError
from xembed.grid import coverage_fraction, target_grid
from xembed.sites import Site
from xembed.testing import raise_if_dask_computes

# Inside zone 22S's image of the mini mirror (conftest.mirror_images), ~200 x 110 m.
INSIDE = box(-48.0030, -22.6010, -48.0010, -22.6000)
NEAR = box(-47.9990, -22.6010, -47.9970, -22.6000)


@pytest.fixture(scope="module")
def root(mini_mirror: tuple[Path, pd.DataFrame]) -> Path:
    return mini_mirror[0]


def write_sites(path: Path, rows: list[tuple[Any, dict[str, Any]]]) -> Path:
    features = [
        {"type": "Feature", "properties": props, "geometry": mapping(geom)} for geom, props in rows
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


# ----------------------------------------------------------------- item 3: paths and frames


def test_a_one_site_file_opens_like_its_site(tmp_path: Path, root: Path) -> None:
    path = write_sites(tmp_path / "plot.geojson", [(INSIDE, {"plot_id": "A1", "start_year": 2018})])
    want = xembed.open_embeddings(Site("A1", 2018, INSIDE), YEARS, source=root)
    for where in (path, str(path)):
        with raise_if_dask_computes():
            got = xembed.open_embeddings(where, YEARS, source=root, id_field="plot_id")
        assert got.attrs["site_id"] == "A1" and got.attrs["site_start_year"] == 2018
        assert got.attrs["site_geometry_wkt"] == want.attrs["site_geometry_wkt"]
        np.testing.assert_array_equal(got["coverage"].values, want["coverage"].values)
    np.testing.assert_array_equal(got["embeddings"].values, want["embeddings"].values)


def test_a_one_row_geodataframe_opens_and_keeps_its_id(root: Path) -> None:
    gdf = gpd.GeoDataFrame(
        {"plot_id": ["A1", "B7"]}, geometry=[INSIDE, NEAR], crs="EPSG:4326"
    ).set_index("plot_id")
    ds = xembed.open_embeddings(gdf.iloc[[1]], YEARS, source=root)
    assert ds.attrs["site_id"] == "B7"
    flat = gdf.reset_index().iloc[[0]].to_crs("EPSG:32722")  # any CRS, reprojected
    ds = xembed.open_embeddings(flat, YEARS, source=root, id_field="plot_id")
    assert ds.attrs["site_id"] == "A1"


def test_a_file_without_ids_warns_when_opened(tmp_path: Path, root: Path) -> None:
    path = write_sites(tmp_path / "plot.geojson", [(INSIDE, {"plot_id": "A1"})])
    with pytest.warns(UserWarning, match=r"numbered by row.*id_field='plot_id'") as record:
        ds = xembed.open_embeddings(path, YEARS, source=root)
    assert ds.attrs["site_id"] == "0" and record[0].filename == __file__


def test_several_sites_name_load_sites_and_the_count(tmp_path: Path, root: Path) -> None:
    rows = [(INSIDE, {"rid": 1}), (NEAR, {"rid": 2}), (INSIDE, {"rid": 3})]
    path = write_sites(tmp_path / "plots.geojson", rows)
    with pytest.raises(
        SiteError,
        match=r".*plots\.geojson holds 3 sites, but one site is expected here \(as_site, "
        r"open_embeddings\); read them all with xembed\.load_sites",
    ):
        xembed.open_embeddings(path, YEARS, source=root)
    gdf = gpd.GeoDataFrame({"rid": [1, 2]}, geometry=[INSIDE, NEAR], crs="EPSG:4326")
    with pytest.raises(SiteError, match=r"GeoDataFrame holds 2 sites, .*xembed\.load_sites"):
        xembed.open_embeddings(gdf, YEARS, source=root)


def test_a_missing_file_is_named(tmp_path: Path, root: Path) -> None:
    missing = tmp_path / "my_sites.geojson"
    with pytest.raises(
        FileNotFoundError,
        match=r"No site file at '.*my_sites\.geojson'; expected GeoJSON .*or the path of a "
        r"cube exported by xembed\.export",
    ):
        xembed.open_embeddings(missing, YEARS, source=root)
    with pytest.raises(FileNotFoundError, match=r"my_sites\.geojson"):
        xembed.open_embeddings(str(missing), YEARS, source=root)


def test_an_exported_cube_path_still_opens_the_cube(tmp_path: Path, root: Path) -> None:
    cube = xembed.open_embeddings(INSIDE, YEARS, source=root)
    path = export.to_zarr(cube, tmp_path / "cube.zarr")
    back = xembed.open_embeddings(path, [YEARS[1]])
    assert back.sizes["year"] == 1 and back.attrs["site_id"] == "0"
    np.testing.assert_array_equal(
        back["embeddings"].values, cube["embeddings"].isel(year=[1]).values
    )


# ----------------------------------------------------------------- item 4: buffer and clip


def test_buffer_with_clip_keeps_the_buffered_context(root: Path) -> None:
    plain = xembed.open_embeddings(INSIDE, [2019], source=root)
    with raise_if_dask_computes():
        ds = xembed.open_embeddings(INSIDE, [2019], source=root, buffer=60)
    grid, projected = target_grid(INSIDE, buffer=60)
    # coverage stays the site's own: the same pixels, the same total area.
    np.testing.assert_array_equal(ds["coverage"].values, coverage_fraction(projected, grid))
    assert float(ds["coverage"].sum()) == pytest.approx(float(plain["coverage"].sum()))
    # Values are masked outside the buffered polygon only (the mirror has data there).
    valid = np.isfinite(ds["embeddings"].isel(year=0, band=0).values)
    np.testing.assert_array_equal(valid, coverage_fraction(projected.buffer(60), grid) > 0)
    n_plain = int(np.isfinite(plain["embeddings"].isel(year=0, band=0).values).sum())
    assert n_plain < valid.sum() < valid.size  # the context is there; the corners are not
    assert int(ds.attrs["clipped"]) == 1 and ds.attrs["buffer_m"] == 60.0
    unclipped = xembed.open_embeddings(INSIDE, [2019], source=root, buffer=60, clip=False)
    assert np.isfinite(unclipped["embeddings"].values).all()


# ----------------------------------------------------------------- item 13: messages


def test_swapped_site_outside_the_footprint_suggests_shapely_transform(root: Path) -> None:
    swapped = Site(3107, None, shapely.transform(INSIDE, lambda xy: xy[:, ::-1]))
    with pytest.raises(DataNotFoundError) as info:
        xembed.open_embeddings(swapped, YEARS, source=root)
    message = str(info.value)
    assert "shapely.ops" not in message
    fix = message.split("e.g. ")[-1]
    assert fix == "shapely.transform(geometry, lambda xy: xy[:, ::-1])"
    fixed = eval(fix, {"shapely": shapely, "geometry": swapped.geometry})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert xembed.open_embeddings(fixed, YEARS, source=root).sizes["year"] == len(YEARS)
