"""source="ee" through Xee, end to end against the local fake Earth Engine.

The real ``earthengine-api`` client and the real Xee talk HTTP to
:func:`xembed.testing.fake_earthengine`, which serves the sample mirror; the
COG reader reads the same files. Everything here is offline; the one test
that needs the real service is marked ``network``.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pyproj
import pytest
import shapely
import xarray as xr

ee = pytest.importorskip("ee")
pytest.importorskip("xee")

from xembed.cube import open_embeddings  # noqa: E402
from xembed.errors import DataNotFoundError  # noqa: E402
from xembed.grid import target_grid  # noqa: E402
from xembed.schema import BANDS, COLLECTION  # noqa: E402
from xembed.sites import Site  # noqa: E402
from xembed.sources.earthengine import (  # noqa: E402
    BYTES_PER_VALUE,
    MAX_CONCURRENT_REQUESTS,
    REQUEST_BYTE_LIMIT,
    EarthEngineError,
    build_collection,
    count_requests,
    io_chunks_for,
    open_embeddings_ee,
)
from xembed.testing import raise_if_dask_computes  # noqa: E402
from xembed.testing.earthengine import (  # noqa: E402
    SUPPORTED_FUNCTIONS,
    FakeRequest,
    all_requests_fail,
    fake_earthengine,
    first_requests_fail,
)

YEARS = tuple(range(2017, 2025))

#: Every Earth Engine function xembed's graphs use: opening (xembed's per-year
#: mosaics plus Xee's metadata query) and reading (Xee's band stacking). A
#: change here means an ee or Xee upgrade changed what is sent: check that the
#: reads still mean the same thing before updating the list.
EXPECTED_FUNCTIONS = frozenset(
    {
        # xembed.sources.earthengine.build_collection
        "ImageCollection.load",
        "Collection.filter",
        "Filter.dateRangeContains",
        "DateRange",
        "Filter.intersects",
        "Feature",
        "GeometryConstructors.Rectangle",
        "ImageCollection.mosaic",
        "Element.set",
        "ImageCollection.fromImages",
        "Collection.size",
        # Xee's opening query (EarthEngineStore.get_info)
        "Element.toDictionary",
        "Collection.first",
        "Collection.reduceColumns",
        "Reducer.toList",
        "Reducer.repeat",
        "Dictionary.get",
        # Xee's reads (_slice_collection, image_to_array)
        "Collection.toList",
        "List.slice",
        "Collection.iterate",
        "Image.addBands",
        "Image.mask",
        "Image.constant",
        "Image.select",
        "Image.bandNames",
        "Image.unmask",
    }
)


@pytest.fixture(scope="module")
def fake(sample_root):
    with fake_earthengine(sample_root) as server:
        yield server


@pytest.fixture
def fresh(fake):
    """The module's fake with its request log emptied."""
    fake.reset_counters()
    return fake


@pytest.fixture(scope="module")
def sites(demo_sites):
    return {site.id: site for site in demo_sites}


def _small_site(sites) -> Site:
    return sites[3109]  # 20 x 19 px


# --------------------------------------------------------------------------- request planning


@pytest.mark.parametrize(
    ("n_years", "chunk", "expected"),
    [
        (8, (256, 256), (256, 256)),
        (8, (2048, 2048), (1024, 512)),
        (9, (1000, 1000), (1000, 500)),
        (1, (4096, 4096), (2048, 2048)),
    ],
)
def test_io_chunks_carry_all_years_within_the_limit(n_years, chunk, expected):
    io = io_chunks_for(n_years, *chunk)
    assert io == {"index": n_years, "height": expected[0], "width": expected[1]}
    assert n_years * io["height"] * io["width"] * BYTES_PER_VALUE <= REQUEST_BYTE_LIMIT
    # The window divides the chunk: a chunk is read by whole requests.
    assert chunk[0] % io["height"] == 0 and chunk[1] % io["width"] == 0


def test_io_chunks_refuse_impossible_sizes():
    with pytest.raises(ValueError, match="positive"):
        io_chunks_for(0, 256, 256)


def test_request_budget_formula_for_a_1000_px_site():
    """The bound, derived: one request per band per 256 x 256 window, all years in it.

    A 1000 x 1000 px site over 8 years in the default 256 px chunks has
    ceil(1000/256)**2 = 16 windows; 64 bands x 16 windows = 1024 requests,
    each 8 x 256 x 256 x 9 B = 4.7 MB (well within 48 MiB). Requesting each
    year separately would take 8 x as many (8192).
    """
    io = io_chunks_for(8, 256, 256)
    windows = math.ceil(1000 / 256) ** 2
    n = count_requests((1000, 1000), (256, 256), io, n_years=8)
    assert windows == 16
    assert n == 64 * windows == 1024
    per_year = count_requests((1000, 1000), (256, 256), {**io, "index": 1}, n_years=8)
    assert per_year == 8 * n


# --------------------------------------------------------------------------- laziness, grid


def test_opening_sends_no_pixel_request(fresh, sites):
    with raise_if_dask_computes():
        ds = open_embeddings_ee(sites[3101], YEARS)
        analysis = ds["embeddings"].mean("band")  # built, not computed
    assert fresh.compute_pixels_count == 0
    assert fresh.value_compute_count == 1  # Xee's one metadata query
    assert analysis.dims == ("year", "y", "x")
    # Already initialised by the user (here: the fake): no re-initialisation.
    assert not [r for r in fresh.requests if r.kind in ("discovery", "algorithms")]


def test_xee_grid_conventions_match_the_target_grid(fresh, sites):
    """What Xee 0.1.x does with the grid xembed passes, checked against the fake."""
    grid, _ = target_grid(sites[3103].geometry)
    t = grid.transform
    with pytest.warns(UserWarning, match="Unable to retrieve 'system:time_start'"):
        # Mosaics have no system:id: Xee's time query comes back empty.
        xee_ds = xr.open_dataset(
            build_collection(grid, YEARS[:2]),
            engine="ee",
            crs=grid.crs.to_string(),
            crs_transform=(t.a, t.b, t.c, t.d, t.e, t.f),
            shape_2d=(grid.width, grid.height),
            chunks=None,
        )
    # Pixel centres, y descending, bit for bit those of the COG source's grid.
    np.testing.assert_array_equal(xee_ds["x"].values, grid.x)
    np.testing.assert_array_equal(xee_ds["y"].values, grid.y)
    assert xee_ds["y"].values[0] > xee_ds["y"].values[-1]
    # No time labels: 0..n-1 (xembed assigns the years).
    np.testing.assert_array_equal(xee_ds["time"].values, [0, 1])
    # Xee puts the pixel size in encoding["scale_factor"]: written to NetCDF
    # as is, values would be divided by 10.
    assert xee_ds["A00"].encoding["scale_factor"] == 10.0
    assert list(xee_ds.data_vars) == list(BANDS)
    ds = open_embeddings_ee(sites[3103], YEARS[:2])
    assert "scale_factor" not in ds["embeddings"].encoding
    assert fresh.compute_pixels_count == 0


# --------------------------------------------------------------------------- equality with COG


@pytest.mark.parametrize(
    "site_id",
    [
        pytest.param(3103, id="crosses-utm-zone-boundary"),
        pytest.param(3106, id="over-the-2019-nodata-gap"),
        pytest.param(3104, id="multipolygon-in-one-zone"),
    ],
)
def test_same_cube_as_the_sample(fresh, sites, sample_root, site_id):
    """Earth Engine (through the fake) and the COG reader give the same cube.

    Both serve the sample's int8 values de-quantised the same way, so the
    difference is exactly 0 (no float32 rounding is involved: the fake sends
    float32, Xee keeps float32).
    """
    site = sites[site_id]
    ds = open_embeddings_ee(site, YEARS)
    cog = open_embeddings(site, YEARS, source="sample")
    for name in ("year", "band", "y", "x"):
        np.testing.assert_array_equal(ds[name].values, cog[name].values)
    np.testing.assert_array_equal(ds["coverage"].values, cog["coverage"].values)
    assert ds.rio.crs == cog.rio.crs and ds.rio.transform() == cog.rio.transform()
    got, want = ds["embeddings"].values, cog["embeddings"].values
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)  # NaN where NaN, max abs diff 0
    assert ds.attrs["source"] == "ee" and ds.attrs["site_id"] == str(site_id)

    # One request per band for the single 256 x 256 window, all 8 years in it.
    shape = (ds.sizes["y"], ds.sizes["x"])
    expected = count_requests(shape, (256, 256), io_chunks_for(8, 256, 256), n_years=8)
    assert expected == 64
    assert fresh.compute_pixels_count == expected
    pixels = [r for r in fresh.requests if r.kind == "computePixels"]
    assert {r.shape for r in pixels} == {(8, *shape)}
    assert 1 <= fresh.max_concurrent <= MAX_CONCURRENT_REQUESTS

    inside = ds["coverage"].values > 0
    if site_id == 3103:
        lon_min, _, lon_max, _ = site.geometry.bounds
        assert lon_min < -48.0 < lon_max  # really straddles 22S / 23S
        # Both zones' data fill it, except a one-column sliver along -48 deg where
        # zone-clipped tiles leave no pixel whose area holds the centre (both
        # sources agree on it: nearest neighbour, as Earth Engine resamples).
        missing = np.isnan(got[:, 0][:, inside])
        assert missing.mean() < 0.01
        assert len(set(np.nonzero(np.isnan(got[0, 0]) & inside)[1])) <= 1
    if site_id == 3106:
        gap = np.isnan(got[YEARS.index(2019), 0][inside])
        assert 0.1 < gap.mean() < 0.9  # part of the site is in the 2019 gap
        assert not np.isnan(got[YEARS.index(2018), 0][inside]).any()


def test_request_budget_for_a_1000_px_site(fresh):
    """~1000 x 1000 px over 8 years: one request per band per window.

    The site is 10 km wide, bigger than the sample, so most pixels are NaN.
    Two bands are computed (dask fuses the band slice into the read), which
    takes the fake a few seconds; the 64-band count follows from the same
    formula (``test_request_budget_formula_for_a_1000_px_site``).
    """
    to_ll = pyproj.Transformer.from_crs("EPSG:32723", "EPSG:4326", always_xy=True)
    box = shapely.box(187_000.0, 7_492_000.0, 196_995.0, 7_501_995.0)
    site = Site(
        id="big",
        start_year=None,
        geometry=shapely.transform(box, lambda c: np.column_stack(to_ll.transform(*c.T))),
    )
    ds = open_embeddings_ee(site, YEARS, clip=False)
    assert (ds.sizes["y"], ds.sizes["x"]) == (1000, 1000)
    values = ds["embeddings"].isel(band=slice(0, 2)).values
    assert 0 < np.isnan(values).mean() < 1  # some of it over the sample
    budget = count_requests((1000, 1000), (256, 256), io_chunks_for(8, 256, 256), n_years=8)
    assert budget == 1024
    assert fresh.compute_pixels_count == budget * 2 // 64 == 32
    assert all(r.shape[0] == 8 for r in fresh.requests if r.kind == "computePixels")


# --------------------------------------------------------------------------- faults


def _two_bands(site):
    ds = open_embeddings_ee(site, YEARS, clip=False)
    return ds["embeddings"].isel(band=slice(0, 2))


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param(first_requests_fail(3, 429), id="first-3-get-429"),
        pytest.param({1: 429, 2: 503}, id="mapping"),
    ],
)
def test_transient_errors_are_retried_and_exact(sample_root, sites, fake, faults):
    site = _small_site(sites)
    want = open_embeddings(site, YEARS, source="sample", clip=False)["embeddings"]
    with fake_earthengine(sample_root, faults=faults) as flaky:
        got = _two_bands(site).values
        statuses = [r.status for r in flaky.requests if r.kind == "computePixels"]
    np.testing.assert_array_equal(got, want.isel(band=slice(0, 2)).values)
    failed = [s for s in statuses if s != 200]
    assert failed and set(failed) <= {429, 503}
    assert statuses.count(200) == 2  # each band read once it succeeded
    # Leaving the inner fake re-points ee at the module's one.
    assert ee.data._get_state().cloud_api_base_url == fake.url


def test_persistent_errors_raise_naming_site_and_years(sample_root, sites):
    site = _small_site(sites)
    with fake_earthengine(sample_root, faults=all_requests_fail(500)) as broken:
        data = open_embeddings_ee(site, [2018, 2019], clip=False)["embeddings"].isel(band=0)
        with pytest.raises(EarthEngineError, match=r"site 3109, years \[2018, 2019\]") as info:
            data.load()
        tries = [r.status for r in broken.requests if r.kind == "computePixels"]
    assert "HTTP 500" in str(info.value) and "source='cog'" in str(info.value)
    assert tries == [500] * 6  # ee's HTTP layer: 1 try + 5 retries, then the error


def test_failure_when_opening_names_site_and_years(sample_root, sites):
    site = _small_site(sites)
    fail_metadata = all_requests_fail(500, kind="value:compute")
    with fake_earthengine(sample_root, faults=fail_metadata):
        with pytest.raises(EarthEngineError, match=r"could not open .* site 3109, year 2020"):
            open_embeddings_ee(site, 2020)


SESSION_ENDED = (
    r"the Earth Engine session the cube of site 3109, year 2019 was opened with has ended "
    r"\((?P<why>.*)\): compute the cube inside the block or session it was opened in \(e\.g\. "
    r"ds\.load\(\) inside the `with fake_earthengine\(\):` block\), or open it again"
)


def test_computing_after_the_fake_block_ends_names_the_ended_session(sample_root, sites, fake):
    """Issue 12, item 6: not "Too many requests (HTTP 429) ... retry later"."""
    with fake_earthengine(sample_root) as inner:
        data = open_embeddings_ee(_small_site(sites), [2019], clip=False)["embeddings"]
        inner_url = inner.url
    # ee is back on the module's fake: a different server than the cube's.
    assert ee.data._get_state().cloud_api_base_url == fake.url
    fake.reset_counters()
    with pytest.raises(EarthEngineError, match=SESSION_ENDED) as info:
        data.isel(band=0).load()
    assert f"ee now talks to {fake.url}, not {inner_url}" in str(info.value)
    assert "429" not in str(info.value)
    assert fake.compute_pixels_count == 0  # refused before any request


def test_computing_after_ee_was_reset_names_the_ended_session(sample_root, sites):
    with fake_earthengine(sample_root):
        data = open_embeddings_ee(_small_site(sites), [2019], clip=False)["embeddings"]
        ee.Reset()
        with pytest.raises(EarthEngineError, match=SESSION_ENDED) as info:
            data.isel(band=0).load()
    assert "ee was reset (ee.Reset()) or is not initialised in this process" in str(info.value)
    assert "429" not in str(info.value)


def test_fault_rule_forms():
    request = FakeRequest(4, "computePixels", 2, "POST", "/v1/projects/p/image:computePixels")
    assert first_requests_fail(2)(request) == 429
    assert first_requests_fail(1)(request) is None
    assert all_requests_fail(503, kind="value:compute")(request) is None
    with pytest.raises(TypeError, match="faults must be"):
        with fake_earthengine(faults=42):  # type: ignore[arg-type]
            pass


# --------------------------------------------------------------------------- the graph


def test_graph_functions_are_pinned(fresh, sites):
    _two_bands(_small_site(sites)).load()
    assert fresh.functions_used == EXPECTED_FUNCTIONS
    assert EXPECTED_FUNCTIONS <= SUPPORTED_FUNCTIONS
    assert fresh.unsupported == []


def test_unsupported_function_fails_loudly(fresh):
    with pytest.raises(ee.EEException, match=r"'Image.sqrt' is not supported"):
        ee.Image(1).sqrt().getInfo()
    assert fresh.unsupported == ["Image.sqrt"]
    assert [r.status for r in fresh.requests] == [400]


def test_fake_collection_and_add_bands_renaming(fresh, sites):
    grid, _ = target_grid(sites[3101].geometry)
    mosaic = build_collection(grid, [2020]).first()
    a00 = mosaic.select("A00")
    stacked = a00.addBands(a00).addBands(a00, ["A00"])
    assert stacked.bandNames().getInfo() == ["A00", "A00_1", "A00_2"]
    tiles = ee.ImageCollection(COLLECTION).filterDate("2020-01-01", "2021-01-01")
    assert tiles.size().getInfo() == 16  # 4 images x 2 x 2 files
    info = tiles.first().getInfo()
    assert info["properties"]["UTM_ZONE"] in ("22S", "23S")
    assert [b["id"] for b in info["bands"]] == list(BANDS)


# --------------------------------------------------------------------------- set-up errors


def test_no_data_over_the_site_names_the_years(fresh):
    far = Site(id="far", start_year=None, geometry=shapely.box(-47.60, -22.60, -47.59, -22.59))
    with pytest.raises(DataNotFoundError, match=r"site 'far', years \[2019, 2020\]"):
        open_embeddings_ee(far, [2019, 2020])


def test_project_is_passed_through(fresh, sites):
    ds = open_embeddings_ee(sites[3109], 2020, project="my-project")
    assert ds.sizes["year"] == 1
    assert [r.path for r in fresh.requests] == ["/v1/projects/my-project/value:compute"]
    ee.data.setCloudApiUserProject("fake")


def test_missing_credentials_say_what_to_do(monkeypatch, tmp_path, sites):
    import google.auth
    import google.auth.exceptions

    def no_adc(*args, **kwargs):
        raise google.auth.exceptions.DefaultCredentialsError("no application default credentials")

    monkeypatch.setattr(google.auth, "default", no_adc)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/earthengine/credentials
    monkeypatch.setattr(ee.data, "is_initialized", lambda: False)
    with pytest.raises(EarthEngineError, match="earthengine authenticate") as info:
        open_embeddings_ee(sites[3109], 2020)
    assert "source='cog'" in str(info.value)


# --------------------------------------------------------------------------- the real service


@pytest.mark.network
def test_real_earth_engine_smoke(sites):  # pragma: no cover - needs credentials
    """With credentials (``earthengine authenticate``) and ``EE_PROJECT`` set."""
    project = os.environ.get("EE_PROJECT")
    if not project:
        pytest.skip("set EE_PROJECT to a Cloud project registered for Earth Engine")
    ee.Initialize(project=project)
    ds = open_embeddings_ee(sites[3109], 2020, project=project)
    values = ds["embeddings"].values
    assert values.shape[:2] == (1, 64) and np.isfinite(values).any()
