"""The sample through ``open_embeddings`` against independent references.

- pixels: GDAL (rasterio.warp.reproject, nearest, exact transformer) warps
  each file of the year onto the site's grid, honouring the files' bottom-up
  geotransform itself; the warped files are stacked in mosaic order and
  de-quantised. Must equal the cube exactly (max abs difference 0).
- means: exactextract's coverage-weighted mean of that GDAL reference, for
  every demo site, band and year, within 1e-5.
"""

from __future__ import annotations

import exactextract
import geopandas as gpd
import numpy as np
import pyproj
import pytest
import rasterio
import rasterio.warp
import shapely

import xembed
from xembed.schema import dequantize
from xembed.sources import cog

YEARS = tuple(range(2017, 2025))


def gdal_reference(root, ds) -> np.ndarray:
    index = cog.read_index(root)
    height, width = ds.sizes["y"], ds.sizes["x"]
    to_ll = pyproj.Transformer.from_crs(ds.rio.crs, "EPSG:4326", always_xy=True)
    box = shapely.box(*to_ll.transform_bounds(*ds.rio.bounds(), densify_pts=21))
    out = np.full((len(YEARS), 64, height, width), -128, np.int8)
    for i, year in enumerate(YEARS):
        rows = index[(index["year"] == year) & shapely.intersects(index["footprint"], box)]
        for href in sorted(rows["href"], key=lambda h: str(h).rsplit("/", 3)[-3:]):
            warped = np.full((64, height, width), -128, np.int8)
            with rasterio.open(href) as src:
                rasterio.warp.reproject(
                    rasterio.band(src, list(range(1, 65))),
                    warped,
                    dst_transform=ds.rio.transform(),
                    dst_crs=ds.rio.crs,
                    src_nodata=-128,
                    dst_nodata=-128,
                    resampling=rasterio.warp.Resampling.nearest,
                    tolerance=0,  # exact transformer, no approximation
                )
            np.copyto(out[i], warped, where=warped != -128)
    return dequantize(out)


@pytest.fixture(scope="module")
def references(sample_root, demo_sites):
    out = {}
    for site in demo_sites:
        ds = xembed.open_embeddings(site, YEARS, root=sample_root, clip=False)
        out[site.id] = (site, ds, gdal_reference(sample_root, ds))
    return out


def test_pixels_equal_gdal_read_flip_dequantise(references):
    for site_id, (_, ds, reference) in references.items():
        got = ds.embeddings.values
        assert got.shape == reference.shape
        same = (got == reference) | (np.isnan(got) & np.isnan(reference))
        assert same.all(), f"site {site_id}: {(~same).sum()} pixels differ from GDAL"


def test_sample_has_gap_and_cross_zone_site(references):
    gaps = {sid for sid, (_, ds, ref) in references.items() if np.isnan(ref).any()}
    assert gaps, "a demo site must overlap the nodata gap"
    zones = {
        sid
        for sid, (site, _, _) in references.items()
        if site.geometry.bounds[0] < -48.0 < site.geometry.bounds[2]
    }
    assert zones, "a demo site must cross the UTM zone boundary"


def test_polygon_mean_equals_exactextract(references, tmp_path):
    for site_id, (site, ds, reference) in references.items():
        cube = xembed.open_embeddings(site, YEARS, root=ds.attrs["source_root"])
        mean = cube.embed.polygon_mean().values  # (year, band)
        path = tmp_path / f"{site_id}.tif"
        height, width = ds.sizes["y"], ds.sizes["x"]
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=width,
            height=height,
            count=len(YEARS) * 64,
            dtype="float32",
            crs=ds.rio.crs,
            transform=ds.rio.transform(),
            nodata=np.nan,
        ) as dst:
            dst.write(reference.reshape(-1, height, width))
        polygon = xembed.grid.project(site.geometry, "EPSG:4326", ds.rio.crs)
        frame = gpd.GeoDataFrame({"id": [site_id]}, geometry=[polygon], crs=ds.rio.crs)
        result = exactextract.exact_extract(str(path), frame, "mean", output="pandas")
        expected = result.filter(like="_mean").to_numpy()[0].reshape(len(YEARS), 64)
        np.testing.assert_allclose(mean, expected, atol=1e-5, rtol=0, err_msg=f"site {site_id}")


def test_no_seam_along_the_zone_boundary(references):
    """The cross-zone site has data in every pixel the polygon touches, every year."""
    for site_id, (site, ds, reference) in references.items():
        if not site.geometry.bounds[0] < -48.0 < site.geometry.bounds[2]:
            continue
        inside = ds.coverage.values > 0
        assert not np.isnan(reference[:, :, inside]).any(), f"site {site_id} has a seam"


def test_similarity_matrix_of_every_demo_site():
    """Issue 3's check on real (sample) sites: cosine matrix symmetric with
    diagonal 1; the raw matrix's diagonal is each yearly mean's squared norm,
    the dot product computed here by hand in float64 from the means."""
    for site in xembed.demo_sites():
        ds = xembed.open_embeddings(site, YEARS)
        means = ds.embed.polygon_mean().values.astype(np.float64)
        sim = ds.embed.similarity_matrix().values
        raw = ds.embed.similarity_matrix(normalize=False).values
        np.testing.assert_array_equal(sim, sim.T)
        np.testing.assert_array_equal(np.diag(sim), 1.0)
        np.testing.assert_allclose(np.diag(raw), np.einsum("yb,yb->y", means, means), rtol=1e-6)
        norms = np.sqrt(np.diag(raw))
        np.testing.assert_allclose(sim, raw / np.outer(norms, norms), atol=1e-6)
        assert (np.diag(raw) < 1).all(), site.id  # means of unit vectors are shorter


def test_valid_fraction_equals_exactextract(references, tmp_path):
    """Issue 12: each site-year's ``valid_fraction`` is exactextract's coverage-weighted
    count of pixels with data (on the GDAL reference) over the polygon's coverage sum
    (the count on a raster without nodata); ``valid_ha`` is that count in hectares.
    polygon_mean and zonal_mean give the same; site 3106's 2019 is in the nodata gap."""
    fractions = {}
    for site_id, (site, ds, reference) in references.items():
        height, width = ds.sizes["y"], ds.sizes["x"]
        first_band = reference[:, 0]  # (year, y, x): the sources mask all bands at once
        layers = np.concatenate([first_band, np.ones((1, height, width), np.float32)])
        path = tmp_path / f"{site_id}.tif"
        with rasterio.open(
            path, "w", driver="GTiff", width=width, height=height, count=len(layers),
            dtype="float32", crs=ds.rio.crs, transform=ds.rio.transform(), nodata=np.nan,
        ) as dst:  # fmt: skip
            dst.write(layers)
        polygon = xembed.grid.project(site.geometry, "EPSG:4326", ds.rio.crs)
        frame = gpd.GeoDataFrame({"id": [site_id]}, geometry=[polygon], crs=ds.rio.crs)
        result = exactextract.exact_extract(str(path), frame, "count", output="pandas")
        counts = result.filter(like="_count").to_numpy()[0]
        valid, total = counts[:-1], counts[-1]

        cube = xembed.open_embeddings(site, YEARS, root=ds.attrs["source_root"])
        mean = cube.embed.polygon_mean()
        np.testing.assert_allclose(mean["valid_fraction"], valid / total, atol=1e-6, rtol=0)
        np.testing.assert_allclose(mean["valid_ha"], valid * 100 / 10_000, rtol=1e-6)
        zonal = xembed.zonal_mean(ds, [site])
        np.testing.assert_allclose(zonal["valid_fraction"][0], valid / total, atol=1e-6)
        fractions[site_id] = valid / total
    gap = {sid: f.round(3).tolist() for sid, f in fractions.items() if (f < 1 - 1e-6).any()}
    assert gap == {3106: [1.0, 1.0, 0.62, 1.0, 1.0, 1.0, 1.0, 1.0]}
