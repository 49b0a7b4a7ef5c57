"""Learning from labels (:mod:`xembed.ops.learn`, :mod:`xembed.ops.assess`).

``sample`` is checked against the pixel that contains each point (centres,
corners, edges, the grid's own edges, nodata, outside) and against
``polygon_mean``; ``predict`` against ``model.predict`` on the same pixels as
a numpy array, exactly; ``class_area`` against the site's valid area; spatial
cross-validation against the blocks it is made of.
"""

from __future__ import annotations

import warnings

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import xarray as xr
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

import xembed
from xembed import ops
from xembed.schema import BANDS
from xembed.testing import make_cube, raise_if_dask_computes

YEARS = (2020, 2021, 2022)
SHAPE = (12, 10)  # rows, columns
CRS = "EPSG:32722"
WEST, NORTH = 600_000.0, 7_500_000.0  # make_cube's default origin
NODATA = (1, 4, 6)  # (year index, row, column) without data


def random_cube(chunks: dict | None = None, seed: int = 3) -> xr.Dataset:
    """make_cube's grid and site with random values everywhere and one nodata pixel."""
    cube = make_cube(years=YEARS, shape=SHAPE, seed=seed)
    values = np.random.default_rng(seed).normal(size=cube["embeddings"].shape)
    t, r, c = NODATA
    values[t, :, r, c] = np.nan
    cube["embeddings"] = cube["embeddings"].copy(data=values.astype(np.float32))
    return cube.chunk(chunks) if chunks else cube


def site_lonlat(cube: xr.Dataset) -> shapely.Geometry:
    return shapely.from_wkt(cube.attrs["site_geometry_wkt"])


def pixels_of(cube: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(year, y, x, band) pixels flattened to (n, bands), and their validity."""
    flat = np.moveaxis(cube["embeddings"].values, 1, -1).reshape(-1, 64)
    return flat, ~np.isnan(flat).any(axis=1)


# --- sample: points -----------------------------------------------------------

# (name, x, y, expected (row, column) or None outside), in the cube's CRS.
POINTS = [
    ("centre", WEST + 35.0, NORTH - 25.0, (2, 3)),
    ("corner", WEST + 30.0, NORTH - 20.0, (2, 3)),  # takes the pixel to its south-east
    ("vertical edge", WEST + 30.0, NORTH - 25.0, (2, 3)),  # east
    ("horizontal edge", WEST + 35.0, NORTH - 20.0, (2, 3)),  # south
    ("grid north-west corner", WEST, NORTH, (0, 0)),
    ("grid east edge", WEST + 100.0, NORTH - 25.0, None),  # the next pixel is outside
    ("grid south edge", WEST + 35.0, NORTH - 120.0, None),
    ("last pixel", WEST + 99.99, NORTH - 119.99, (11, 9)),
    ("nodata in 2021", WEST + 65.0, NORTH - 45.0, (4, 6)),
    ("far away", WEST - 5_000.0, NORTH + 5_000.0, None),
]


def points_frame() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"name": [p[0] for p in POINTS], "id": np.arange(len(POINTS))},
        geometry=[shapely.Point(p[1], p[2]) for p in POINTS],
        crs=CRS,
    )


@pytest.mark.parametrize("chunks", [None, {"y": 5, "x": 4}, {"year": 1}], ids=str)
def test_sample_points_take_the_containing_pixel(chunks):
    cube = random_cube(chunks)
    values = random_cube()["embeddings"].values
    with pytest.warns(xembed.CoverageWarning) as caught:
        with raise_if_dask_computes(max_computes=1):
            table = ops.sample(cube, points_frame())
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "4 of 10 features" in message
    for i in (5, 6, 9):
        assert f"feature {i} (outside the cube)" in message
    assert "feature 8 in 2021 (no data)" in message
    assert table.columns[:5].tolist() == ["name", "id", "year", "x", "y"]
    assert table.columns[5:].tolist() == list(BANDS)
    assert len(table) == len(POINTS) * len(YEARS)
    for i, (name, x, y, pixel) in enumerate(POINTS):
        rows = table[table["id"] == i]
        assert rows["name"].tolist() == [name] * 3 and rows["year"].tolist() == list(YEARS)
        np.testing.assert_array_equal(rows[["x", "y"]].to_numpy(), [[x, y]] * 3)
        got = rows[list(BANDS)].to_numpy()
        if pixel is None:
            assert np.isnan(got).all(), name
            continue
        expected = values[:, :, pixel[0], pixel[1]].astype(np.float64)
        np.testing.assert_array_equal(got, expected, err_msg=name)  # NaN where no data
    assert np.isnan(table.loc[table["id"] == 8, "A00"]).tolist() == [False, True, False]


def test_sample_keeps_a_named_index_as_a_column():
    cube = random_cube()
    frame = points_frame().iloc[:2].set_index("name")
    table = ops.sample(cube, frame)
    assert table.columns[:3].tolist() == ["name", "id", "year"]
    assert table["name"].tolist() == ["centre"] * 3 + ["corner"] * 3
    assert ops.sample(cube, frame.reset_index(drop=True)).columns[0] == "id"


def test_sample_lonlat_shapely_points_and_geoseries_agree():
    cube = random_cube()
    centres = [shapely.Point(WEST + 35.0, NORTH - 25.0), shapely.Point(WEST + 95.0, NORTH - 5.0)]
    lonlat = gpd.GeoSeries(centres, crs=CRS).to_crs(4326)
    a = ops.sample(cube, list(lonlat))
    b = ops.sample(cube, lonlat.to_crs("EPSG:3857"))  # any CRS
    assert a.columns[0] == "year"
    pd.testing.assert_frame_equal(a[list(BANDS)], b[list(BANDS)])
    values = cube["embeddings"].values
    np.testing.assert_array_equal(a[list(BANDS)].to_numpy()[:3], values[:, :, 2, 3])
    np.testing.assert_array_equal(a[list(BANDS)].to_numpy()[3:], values[:, :, 0, 9])


def test_sample_input_errors():
    cube = random_cube()
    with pytest.raises(ValueError, match="sample takes points and polygons"):
        ops.sample(cube, [shapely.LineString([(-51, -22), (-51.1, -22.1)])])
    with pytest.raises(ValueError, match="must be lon/lat"):
        ops.sample(cube, [shapely.Point(WEST, NORTH)])
    with pytest.raises(ValueError, match=r"columns \['year'\] would clash"):
        ops.sample(cube, points_frame().assign(year=1))
    with pytest.raises(ValueError, match="points have no CRS"):
        ops.sample(cube, gpd.GeoSeries([shapely.Point(WEST, NORTH)]))


# --- sample: polygons ---------------------------------------------------------


@pytest.mark.parametrize("chunks", [None, {"y": 5, "x": 4}], ids=str)
def test_sample_polygon_rows_equal_polygon_mean(chunks):
    cube = random_cube(chunks)
    inner = shapely.box(WEST + 12.5, NORTH - 77.0, WEST + 48.0, NORTH - 31.0)  # partial pixels
    frame = gpd.GeoDataFrame(
        {"label": ["site", "box"]},
        geometry=[*gpd.GeoSeries([site_lonlat(cube)], crs=4326).to_crs(CRS), inner],
        crs=CRS,
    )
    with raise_if_dask_computes(max_computes=1):
        table = ops.sample(cube, frame)
    means = ops.polygon_mean(cube).compute()
    site_rows = table[table["label"] == "site"]
    np.testing.assert_allclose(site_rows[list(BANDS)], means.values, rtol=1e-6, atol=1e-7)
    # polygon_mean works in float32: equal to its rounding
    # the box: polygon_mean of a cube whose coverage is the box's
    from xembed.grid import coverage_fraction

    boxed = cube.copy()
    boxed["coverage"] = cube["coverage"].copy(
        data=coverage_fraction(inner, ops.grid_of(cube)).astype(np.float32)
    )
    box_means = ops.polygon_mean(boxed).compute()
    box_rows = table[table["label"] == "box"]
    np.testing.assert_allclose(box_rows[list(BANDS)], box_means.values, rtol=1e-6, atol=1e-7)
    assert box_rows["x"].iloc[0] == pytest.approx(inner.centroid.x)


def test_sample_polygon_pixels_carry_their_coverage():
    cube = random_cube()
    site = site_lonlat(cube)
    with pytest.warns(xembed.CoverageWarning, match=r"1 of 1 features .* feature 0 in 2021"):
        pixels = ops.sample(cube, [site], pixels=True)
    coverage = cube["coverage"].values
    rows, cols = np.nonzero(coverage)
    assert len(pixels) == rows.size * len(YEARS)
    first = pixels[pixels["year"] == 2020]
    np.testing.assert_allclose(first["coverage"], coverage[rows, cols], rtol=1e-6)
    np.testing.assert_array_equal(first["x"], cube["x"].values[cols])
    np.testing.assert_array_equal(first["y"], cube["y"].values[rows])
    values = cube["embeddings"].values
    np.testing.assert_array_equal(first[list(BANDS)].to_numpy(), values[0][:, rows, cols].T)
    # their coverage-weighted mean is the polygon's mean row
    mean = ops.sample(cube, [site]).set_index("year")[list(BANDS)]
    for year, rows_of_year in pixels.groupby("year"):
        ok = rows_of_year.dropna(subset=["A00"])
        weighted = np.average(ok[list(BANDS)], axis=0, weights=ok["coverage"])
        np.testing.assert_allclose(weighted, mean.loc[year], rtol=1e-5, atol=1e-7)


def test_sample_polygon_outside_gives_nan_rows():
    cube = random_cube()
    far = shapely.box(WEST - 9000, NORTH + 1000, WEST - 8000, NORTH + 2000)
    frame = gpd.GeoDataFrame({"k": [1]}, geometry=[far], crs=CRS)
    for pixels in (False, True):
        with pytest.warns(xembed.CoverageWarning, match=r"feature 0 \(outside the cube\)"):
            table = ops.sample(cube, frame, pixels=pixels)
        assert len(table) == len(YEARS) and table["A00"].isna().all()


# --- predict ------------------------------------------------------------------


class NoNaNModel:
    """Wraps a model and fails if it is ever given a pixel without data."""

    def __init__(self, model):
        self.model = model
        self.classes_ = model.classes_
        self.seen = 0

    def predict(self, x):
        assert not np.isnan(np.asarray(x)).any(), "a masked pixel reached the model"
        self.seen += len(x)
        return self.model.predict(x)


def fitted_models(cube: xr.Dataset) -> dict:
    flat, valid = pixels_of(cube)
    train = flat[valid][::7]
    rng = np.random.default_rng(0)
    labels = np.array(["forest", "crop land", "water"])[rng.integers(0, 3, len(train))]
    target = train[:, 0] * 2 + rng.normal(size=len(train))
    return {
        "knn": KNeighborsClassifier(3).fit(train, labels),
        "forest": RandomForestClassifier(10, random_state=0).fit(train, labels),
        "knn-regressor": KNeighborsRegressor(3).fit(train, target),
        "forest-regressor": RandomForestRegressor(10, random_state=0).fit(train, target),
        "ridge": Ridge().fit(train, target),
    }


CHUNKINGS = {"numpy": None, "yx": {"y": 5, "x": 3}, "years": {"year": 1, "y": 7}}


@pytest.fixture(scope="module")
def models():
    return fitted_models(random_cube())


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("name", ["knn", "forest", "knn-regressor", "forest-regressor"])
def test_predict_equals_model_predict_exactly(name, chunking, models):
    model = models[name]
    cube = random_cube(CHUNKINGS[chunking])
    with raise_if_dask_computes():
        out = ops.predict(cube, model, batch_pixels=50)
    assert out.dims == ("year", "y", "x")
    flat, valid = pixels_of(random_cube())
    expected = model.predict(flat[valid])
    got = out.values.reshape(-1)
    if hasattr(model, "classes_"):
        assert got.dtype == np.int16
        np.testing.assert_array_equal(model.classes_[got[valid]], expected)
        np.testing.assert_array_equal(got[~valid], -1)
        assert out.attrs["flag_values"].tolist() == [0, 1, 2]
        assert out.attrs["flag_meanings"] == "crop_land forest water"
    else:
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got[valid], expected.astype(np.float32))
        assert np.isnan(got[~valid]).all()


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_predict_linear_model_equals_to_float32_rounding(chunking, models):
    # A linear model's X @ coef in float32 goes through BLAS, whose rounding
    # depends on how many rows it is given: equal up to the last bit or two.
    model = models["ridge"]
    with raise_if_dask_computes():
        out = ops.predict(random_cube(CHUNKINGS[chunking]), model, batch_pixels=50)
    flat, valid = pixels_of(random_cube())
    got = out.values.reshape(-1)
    np.testing.assert_allclose(got[valid], model.predict(flat[valid]), rtol=2e-6, atol=1e-6)
    assert np.isnan(got[~valid]).all()


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_predict_proba_equals_predict_proba(chunking, models):
    model = models["forest"]
    cube = random_cube(CHUNKINGS[chunking])
    with raise_if_dask_computes():
        out = ops.predict(cube, model, proba=True)
    assert out.dims == ("year", "class", "y", "x") and out.dtype == np.float32
    assert out["class"].values.tolist() == model.classes_.tolist()
    flat, valid = pixels_of(random_cube())
    got = np.moveaxis(out.values, 1, -1).reshape(-1, 3)
    np.testing.assert_array_equal(got[valid], model.predict_proba(flat[valid]).astype(np.float32))
    assert np.isnan(got[~valid]).all()


def test_predict_never_passes_masked_pixels(models):
    cube = random_cube({"y": 4}).copy()
    cube["embeddings"] = cube["embeddings"].where(cube["coverage"] > 0)  # clipped
    model = NoNaNModel(models["knn"])
    out = ops.predict(cube, model).compute()
    inside = int((cube["coverage"] > 0).sum()) * len(YEARS) - 1  # one nodata pixel inside
    assert model.seen == inside == int((out >= 0).sum())


def test_predict_model_fitted_on_named_band_subset():
    cube = random_cube()
    flat, valid = pixels_of(cube)
    table = pd.DataFrame(flat[valid], columns=BANDS)
    model = KNeighborsRegressor(2).fit(table[["A05", "A01"]], table["A00"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "X does not have valid feature names"
        out = ops.predict(cube, model).values.reshape(-1)
    np.testing.assert_array_equal(out[valid], model.predict(table[["A05", "A01"]]).astype("f4"))


def test_predict_errors(models):
    cube = random_cube()
    with pytest.raises(ValueError, match="is not fitted; fit it first"):
        ops.predict(cube, KNeighborsClassifier())
    with pytest.raises(ValueError, match="proba=True needs a fitted classifier"):
        ops.predict(cube, models["ridge"], proba=True)
    with pytest.raises(TypeError, match="with a predict method"):
        ops.predict(cube, object())
    small = KNeighborsRegressor(1).fit(np.zeros((2, 3)), [0.0, 1.0])
    with pytest.raises(ValueError, match="takes 3 features but the cube has 64 bands"):
        ops.predict(cube, small)


# --- classify -----------------------------------------------------------------


def test_classify_fits_a_copy_and_keeps_model_and_training():
    cube = random_cube({"y": 6})
    frame = points_frame().iloc[[0, 4, 7, 8]].assign(cover=["a", "b", "a", "b"])
    model = KNeighborsClassifier(1)
    with pytest.warns(xembed.CoverageWarning, match="feature 3 in 2021"):
        classes = ops.classify(cube, frame, "cover", model=model, years=[2020, 2021])
    assert not hasattr(model, "classes_")  # the user's object is left unfitted
    fitted = classes.attrs["model"]
    training = classes.attrs["training"]
    assert training["year"].unique().tolist() == [2020, 2021] and len(training) == 8
    usable = training.dropna(subset=["A00"])
    assert len(usable) == 7
    np.testing.assert_array_equal(fitted.predict(usable[list(BANDS)].to_numpy()), usable["cover"])
    assert classes.sizes["year"] == 3  # mapped over every year of the cube
    flat, valid = pixels_of(random_cube())
    expected = fitted.predict(flat[valid])
    np.testing.assert_array_equal(fitted.classes_[classes.values.reshape(-1)[valid]], expected)


def test_classify_default_model_and_label_error():
    cube = random_cube()
    frame = points_frame().iloc[[0, 1, 2, 3, 4, 7]].assign(cover=list("aaabbb"))
    classes = ops.classify(cube, frame, "cover")
    assert isinstance(classes.attrs["model"], KNeighborsClassifier)
    assert classes.attrs["model"].n_neighbors == 3
    with pytest.raises(ValueError, match="label 'nope' is not a column"):
        ops.classify(cube, frame, "nope")


# --- class_area ---------------------------------------------------------------


@pytest.mark.parametrize("chunks", [None, {"y": 5}], ids=str)
def test_class_area_sums_to_the_valid_area(chunks, models):
    cube = random_cube(chunks)
    cube["embeddings"] = cube["embeddings"].where(cube["x"] > WEST + 40)  # a strip without data
    classes = ops.predict(cube, models["knn"])
    with raise_if_dask_computes(max_computes=1):
        table = ops.class_area(cube, classes)
    assert table.columns.tolist() == ["year", "class", "ha", "fraction"]
    assert table["class"].tolist() == ["crop_land", "forest", "water"] * 3
    valid_ha = ops.polygon_mean(cube).compute()["valid_ha"].values
    sums = table.groupby("year")["ha"].sum().to_numpy()
    np.testing.assert_allclose(sums, valid_ha, rtol=1e-6)
    assert valid_ha[1] < valid_ha[0]  # the nodata pixel of 2021 is inside the site
    np.testing.assert_allclose(table.groupby("year")["fraction"].sum(), 1.0)
    # by hand: coverage of the pixels of each class
    codes = classes.values
    coverage = cube["coverage"].values
    ha = [coverage[codes[t] == k].sum() / 100 for t in range(3) for k in range(3)]
    np.testing.assert_allclose(table["ha"], ha, rtol=1e-6)


def test_class_area_errors(models):
    cube = random_cube()
    with pytest.raises(ValueError, match="integer class codes"):
        ops.class_area(cube, ops.predict(cube, models["ridge"]))
    with pytest.raises(ValueError, match=r"\(year, y, x\) DataArray"):
        ops.class_area(cube, cube["coverage"])


# --- assess -------------------------------------------------------------------


def autocorrelated_table(n_fields: int = 40, per_field: int = 25, seed: int = 0) -> pd.DataFrame:
    """Pixels of square fields (each its own offset vector), classes by field.

    Fields are 200 m wide, centred in 1 km blocks (the blocks of the tests).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for f in range(n_fields):
        cx, cy = WEST + 500 + 1000 * rng.integers(0, 20), NORTH - 500 - 1000 * rng.integers(0, 20)
        label = f % 3
        offset = rng.normal(size=64)
        xy = np.column_stack([cx, cy]) + rng.uniform(-100, 100, (per_field, 2))
        vectors = offset + 0.3 * rng.normal(size=(per_field, 64)) + label * 0.2
        rows.append(
            pd.DataFrame(vectors, columns=BANDS).assign(
                field=f, cover=f"class {label}", x=xy[:, 0], y=xy[:, 1]
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_spatial_cv_never_puts_one_block_on_both_sides():
    table = autocorrelated_table()
    result = xembed.assess(KNeighborsClassifier(3), table, "cover", block_size=1000.0)
    rows = result.table
    assert rows["fold"].between(0, 4).all() and len(rows) == len(table)
    np.testing.assert_array_equal(rows["block"], ops.spatial_blocks(table, 1000.0))
    for fold in range(5):
        test_blocks = set(rows.loc[rows["fold"] == fold, "block"])
        train_blocks = set(rows.loc[rows["fold"] != fold, "block"])
        assert test_blocks and not test_blocks & train_blocks
    # a field's pixels sit in one fold; random folds split them
    assert (rows.groupby("field")["fold"].nunique() == 1).all()
    shuffled = xembed.assess(KNeighborsClassifier(3), table, "cover", cv="random")
    assert (shuffled.table.groupby("field")["fold"].nunique() > 1).any()
    # neighbours of the same field make random CV look better than it is
    assert shuffled["accuracy"] > 0.95 > result["accuracy"]


def test_assess_classifier_scores():
    table = autocorrelated_table()
    result = xembed.assess(KNeighborsClassifier(3), table, "cover", block_size=1000.0)
    rows = result.table
    assert result.kind == "classifier" and set(result.scores) == {"accuracy", "kappa"}
    assert result["accuracy"] == pytest.approx((rows["cover"] == rows["predicted"]).mean())
    confusion = result.confusion
    assert confusion.to_numpy().sum() == len(table)
    assert np.trace(confusion.to_numpy()) == (rows["cover"] == rows["predicted"]).sum()
    recall = np.diag(confusion.to_numpy()) / confusion.to_numpy().sum(axis=1)
    np.testing.assert_allclose(result.per_class["recall"], recall)
    assert result.per_class.index.tolist() == ["class 0", "class 1", "class 2"]
    assert "Assessment(classifier, cv='spatial', folds=5, n=1000" in repr(result)


def test_assess_regressor_scores_and_geometry_blocks():
    table = autocorrelated_table()
    table["cover_fraction"] = table["A00"] * 0.5
    frame = gpd.GeoDataFrame(
        table.drop(columns=["x", "y"]),
        geometry=gpd.points_from_xy(table["x"], table["y"]),
        crs=CRS,
    ).to_crs(4326)  # blocks from the geometry, projected back to UTM
    result = xembed.assess(Ridge(), frame, "cover_fraction", block_size=1000.0)
    assert result.kind == "regressor" and set(result.scores) == {"r2", "rmse", "mae"}
    rows = result.table
    truth, predicted = rows["cover_fraction"], rows["predicted"]
    assert result["r2"] == pytest.approx(r2_score(truth, predicted))
    assert result["mae"] == pytest.approx(mean_absolute_error(truth, predicted))
    assert result["rmse"] == pytest.approx(np.sqrt(((truth - predicted) ** 2).mean()))
    assert result["r2"] > 0.99
    assert (rows.groupby("field")["fold"].nunique() == 1).all()


def test_assess_errors():
    table = autocorrelated_table(n_fields=3)
    with pytest.raises(ValueError, match="fewer than folds=5; lower block_size or folds"):
        xembed.assess(KNeighborsClassifier(3), table, "cover", block_size=1e6)
    with pytest.raises(ValueError, match="needs where each row is"):
        xembed.assess(KNeighborsClassifier(3), table.drop(columns=["x"]), "cover")
    with pytest.raises(ValueError, match="cv must be 'spatial' or 'random'"):
        xembed.assess(KNeighborsClassifier(3), table, "cover", cv="blocks")


# --- accessor -----------------------------------------------------------------


def test_accessor_is_the_function(models):
    cube = random_cube()
    frame = points_frame().iloc[[0, 1]]
    pd.testing.assert_frame_equal(cube.embed.sample(frame), ops.sample(cube, frame))
    classes = cube.embed.predict(models["knn"])
    xr.testing.assert_identical(classes, ops.predict(cube, models["knn"]))
    pd.testing.assert_frame_equal(cube.embed.class_area(classes), ops.class_area(cube, classes))
    assert cube.embed.classify.__doc__.startswith("Accessor form of :func:`xembed.ops.classify`")
