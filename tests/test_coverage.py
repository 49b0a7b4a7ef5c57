"""Issue 12, item 1: how much of each site the numbers stand on.

Every table of means carries ``valid_fraction`` and ``valid_ha``; the arrays
carry them as coordinates (lazy with the means); the functions that return
tables warn once with ``xembed.CoverageWarning`` about site-years under
``min_valid``; a site-year without a single valid pixel is NaN (a failure in
``extract``). Demo site 3106 lies partly in the sample's 2019 nodata gap.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyproj
import pytest
import shapely

import xembed
from xembed import ops
from xembed.testing import make_cube, raise_if_dask_computes

YEARS = tuple(range(2017, 2025))
# make_cube((8, 8))'s polygon covers 15.1155 pixels; its west half (columns 2-3)
# holds 8 whole pixels, so without them (15.1155 - 8) / 15.1155 of the site has data.
TOTAL_PX = float(make_cube(shape=(8, 8))["coverage"].astype("float64").sum())
WEST_HALF_GONE = (TOTAL_PX - 8) / TOTAL_PX
assert abs(TOTAL_PX - 15.1155) < 1e-4


def _holed_cube(chunks=None, years=(2020, 2021, 2022), gone=(2021,)):
    """make_cube with the west half of the polygon without data in the ``gone`` years."""
    cube = make_cube(years=years, shape=(8, 8))
    for year in gone:
        cube["embeddings"][years.index(year), :, :, :4] = np.nan
    return cube.chunk(chunks) if chunks else cube


@pytest.fixture(scope="module")
def site_3106():
    return next(s for s in xembed.demo_sites() if s.id == 3106)


@pytest.fixture(scope="module")
def cube_3106(site_3106):
    return xembed.open_embeddings(site_3106, YEARS).persist()


def _coverage_warnings(record):
    return [w for w in record if issubclass(w.category, xembed.CoverageWarning)]


# --- the arrays: coordinates, lazy, never a warning ---------------------------------------


@pytest.mark.parametrize("chunks", [None, {"y": 4, "x": 4}], ids=["numpy", "dask"])
def test_polygon_mean_carries_valid_fraction_and_ha_as_coordinates(chunks):
    cube = _holed_cube(chunks)
    with raise_if_dask_computes(), warnings.catch_warnings():
        warnings.simplefilter("error")  # an array function never warns
        mean = ops.polygon_mean(cube)
    assert mean.dims == ("year", "band")  # the DataArray still holds the means
    assert mean["valid_fraction"].dims == ("year",) and mean["valid_ha"].dims == ("year",)
    assert mean.attrs["min_valid"] == 0.9
    with raise_if_dask_computes(max_computes=1):  # the fractions come with the means' pass
        mean = mean.compute()
    np.testing.assert_allclose(mean["valid_fraction"], [1.0, WEST_HALF_GONE, 1.0], rtol=1e-6)
    # 100 m^2 per 10 m pixel: 15.1155 px = 0.151155 ha
    np.testing.assert_allclose(
        mean["valid_ha"], [TOTAL_PX / 100, (TOTAL_PX - 8) / 100, TOTAL_PX / 100], rtol=1e-6
    )
    assert np.isfinite(mean.values).all()  # a partial year still has a mean


@pytest.mark.parametrize("reducer", ["median", "std", "min", "max", "count"])
def test_every_reducer_carries_the_same_coverage(reducer):
    cube = _holed_cube()
    mean = ops.polygon_mean(cube, reducer=reducer)
    np.testing.assert_allclose(mean["valid_fraction"], [1.0, WEST_HALF_GONE, 1.0], rtol=1e-6)
    normalized = ops.polygon_mean(cube, normalize=True)
    np.testing.assert_allclose(normalized["valid_fraction"], mean["valid_fraction"])


def test_zonal_mean_carries_coverage_and_its_table_warns(site_3106, cube_3106):
    lazy = xembed.open_embeddings(site_3106, YEARS)
    with raise_if_dask_computes(), warnings.catch_warnings():
        warnings.simplefilter("error")
        means = xembed.zonal_mean(lazy, [site_3106])
    assert means["valid_fraction"].dims == ("site", "year")
    assert means.attrs["min_valid"] == 0.9
    with raise_if_dask_computes(max_computes=1):
        means = means.compute()
    single = cube_3106.embed.polygon_mean().compute()
    np.testing.assert_allclose(means["valid_fraction"][0], single["valid_fraction"], atol=1e-9)
    np.testing.assert_allclose(means["valid_ha"][0], single["valid_ha"], rtol=1e-9)
    with pytest.warns(xembed.CoverageWarning, match=r"site 3106 in 2019: valid_fraction 0\.620"):
        table = xembed.to_frame(means)
    assert table[["site_id", "year"]].values.tolist() == [[3106, y] for y in YEARS]
    np.testing.assert_allclose(table["valid_fraction"], single["valid_fraction"], atol=1e-9)


# --- the tables: columns and one warning per call -----------------------------------------


def test_to_frame_of_a_partly_covered_site_warns_once_naming_site_year_fraction(cube_3106):
    with pytest.warns(xembed.CoverageWarning) as record:
        table = xembed.to_frame(cube_3106)
    (warning,) = _coverage_warnings(record)
    assert warning.filename == __file__  # points at the caller
    message = str(warning.message)
    assert message.startswith("1 site-year has data under less than 90% of its site")
    assert "site 3106 in 2019: valid_fraction 0.620 (9.68 ha with data)" in message
    assert "min_valid=0" in message  # the fix
    assert list(table.columns[:5]) == ["site_id", "year", "valid_fraction", "valid_ha", "A00"]
    full = table["year"] != 2019
    assert (table.loc[full, "valid_fraction"] == 1.0).all()
    assert table.loc[~full, "valid_fraction"].round(3).tolist() == [0.62]
    # valid_ha: the site's coverage in pixels (1562.4) x 100 m^2 x valid fraction
    np.testing.assert_allclose(
        table["valid_ha"], table["valid_fraction"] * cube_3106["coverage"].sum().item() / 100
    )
    assert np.isfinite(table.filter(like="A").to_numpy()).all()


def test_several_partial_site_years_make_one_warning_listing_them():
    cube = _holed_cube(gone=(2020, 2022))
    with pytest.warns(xembed.CoverageWarning) as record:
        xembed.to_frame(cube)
    (warning,) = _coverage_warnings(record)
    message = str(warning.message)
    assert message.startswith("2 site-years have data under less than 90% of their site")
    assert "site 'test' in 2020: valid_fraction 0.471" in message
    assert "site 'test' in 2022: valid_fraction 0.471" in message


@pytest.mark.parametrize(
    ("min_valid", "warns"), [(0.0, False), (0.47, False), (0.48, True), (0.9, True)]
)
def test_min_valid_is_the_threshold(min_valid, warns):
    cube = _holed_cube()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        xembed.to_frame(cube, min_valid=min_valid)
    assert len(_coverage_warnings(record)) == int(warns)


def test_to_frame_uses_the_min_valid_the_means_were_made_with():
    means = ops.polygon_mean(_holed_cube(), min_valid=0.0).compute()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xembed.to_frame(means)  # recorded: silent
    with pytest.warns(xembed.CoverageWarning, match="in 2021"):
        xembed.to_frame(means, min_valid=0.9)  # asked for: warns


def test_check_coverage_for_means_computed_by_hand(cube_3106):
    means = cube_3106.embed.polygon_mean().compute()
    with pytest.warns(xembed.CoverageWarning, match=r"site 3106 in 2019") as record:
        low = xembed.check_coverage(means)
    assert len(_coverage_warnings(record)) == 1
    assert low.columns.tolist() == ["site_id", "year", "valid_fraction", "valid_ha"]
    assert low[["site_id", "year"]].values.tolist() == [[3106, 2019]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert xembed.check_coverage(means, min_valid=0).empty
        table = xembed.to_frame(means, min_valid=0)
    with pytest.warns(xembed.CoverageWarning):  # a table works too
        assert xembed.check_coverage(table)[["site_id", "year"]].values.tolist() == [[3106, 2019]]


@pytest.mark.parametrize("bad", [1.5, -0.1, "0.9", True, np.nan])
def test_min_valid_outside_0_1_is_refused_everywhere(bad, site_3106):
    cube = _holed_cube()
    message = "min_valid must be a fraction between 0 and 1"
    with pytest.raises(ValueError, match=message):
        ops.polygon_mean(cube, min_valid=bad)
    with pytest.raises(ValueError, match=message):
        ops.to_frame(cube, min_valid=bad)
    with pytest.raises(ValueError, match=message):
        ops.zonal_mean(cube, [shapely.from_wkt(cube.attrs["site_geometry_wkt"])], min_valid=bad)
    with pytest.raises(ValueError, match=message):
        xembed.extract([site_3106], [2020], progress=False, min_valid=bad)


def test_check_coverage_needs_coverage():
    plain = ops.polygon_mean(make_cube(shape=(8, 8))).drop_vars(["valid_fraction", "valid_ha"])
    with pytest.raises(ValueError, match="no 'valid_fraction' coordinate"):
        xembed.check_coverage(plain)
    table = xembed.to_frame(plain)  # means without coverage: NaN columns, no warning
    assert table["valid_fraction"].isna().all()


# --- the floor: no valid pixel ------------------------------------------------------------


@pytest.fixture(scope="module")
def gap_site(cube_3106):
    """A 4 m square in the middle of a pixel whose 2019 data (and its neighbours') is nodata."""
    missing = cube_3106["embeddings"].sel(year=2019, band="A00").isnull().values
    inner = missing[:-2, :-2] & missing[1:-1, 1:-1] & missing[2:, 2:]
    inner &= missing[:-2, 2:] & missing[2:, :-2]
    rows, cols = np.nonzero(inner)
    row, col = rows[len(rows) // 2] + 1, cols[len(cols) // 2] + 1
    x, y = float(cube_3106["x"][col]), float(cube_3106["y"][row])
    to_ll = pyproj.Transformer.from_crs(cube_3106.rio.crs, "EPSG:4326", always_xy=True)
    square = shapely.box(x - 2, y - 2, x + 2, y + 2)
    return xembed.Site("gap", None, shapely.transform(square, lambda c: np.column_stack(
        to_ll.transform(*c.T))))  # fmt: skip


def test_a_site_year_without_a_valid_pixel_is_nan_and_named(gap_site):
    cube = xembed.open_embeddings(gap_site, (2019, 2020))
    means = cube.embed.polygon_mean().compute()
    assert means["valid_fraction"].values.tolist() == [0.0, 1.0]
    assert np.isnan(means.sel(year=2019)).all() and np.isfinite(means.sel(year=2020)).all()
    with pytest.warns(xembed.CoverageWarning, match=r"site 'gap' in 2019: valid_fraction 0\.000"):
        table = xembed.to_frame(cube)
    assert table["valid_ha"].tolist()[0] == 0.0


def test_extract_lists_a_site_year_without_a_valid_pixel_as_an_error(gap_site, site_3106):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        table = xembed.extract([gap_site, site_3106], (2019, 2020), progress=False)
    (failure,) = [w for w in record if w.category is UserWarning]
    assert "1 of 2 sites failed (0 entirely" in str(failure.message)
    errors = table.attrs["errors"]
    assert errors[["site_id", "year"]].values.tolist() == [["gap", 2019]]
    assert "no valid pixel under the site in 2019" in errors["error"].iloc[0]
    assert table[["site_id", "year"]].values.tolist() == [
        ["gap", 2020],
        [3106, 2019],
        [3106, 2020],
    ]
    # the partial site-year is a warning, not an error: it has a number
    (coverage,) = _coverage_warnings(record)
    assert "site 3106 in 2019: valid_fraction 0.620" in str(coverage.message)
