"""Learning from labels: sample a cube at labelled places, map a fitted model's predictions.

- :func:`sample`: the embeddings at points (the pixel containing each point)
  and polygons (the coverage-weighted mean, or every covered pixel), one
  row per feature and year: the table a model is fitted on;
- :func:`predict`: any fitted estimator with scikit-learn's ``predict``
  applied chunk by chunk, lazily, to the pixels with data of every year;
- :func:`classify`: sample, fit, predict in one call;
- :func:`class_area`: hectares and shares of each class within the site.

scikit-learn is the ``ml`` extra (``pip install 'xembed[ml]'``), needed by
:func:`classify` (its default model) and :func:`xembed.assess`; :func:`sample`
and :func:`predict` work with any object that has ``predict``.
"""

from __future__ import annotations

import functools
import importlib
import math
import warnings
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from xembed._util import stacklevel
from xembed.errors import CoverageWarning
from xembed.ops._base import embeddings_of, spatial_coords, weights_of, year_position
from xembed.ops.reduce import pixel_area
from xembed.ops.zonal import grid_of, zonal_mean
from xembed.schema import BANDS

__all__ = ["class_area", "classify", "import_sklearn", "predict", "sample"]

_MAX_LISTED = 10  # features named in a CoverageWarning
_ALLOWED_TYPES = ("Point", "Polygon", "MultiPolygon")


def import_sklearn(module: str) -> Any:
    """``sklearn.<module>``, or an :class:`ImportError` saying how to install it.

    Examples
    --------
    >>> import_sklearn("neighbors").__name__
    'sklearn.neighbors'
    """
    try:
        return importlib.import_module(f"sklearn.{module}")
    except ImportError as exc:
        raise ImportError(
            f"this needs scikit-learn (sklearn.{module}), which is not installed; install "
            "xembed's ml extra: pip install 'xembed[ml]' (or pip install scikit-learn)"
        ) from exc


# --- sample: features ---------------------------------------------------------


def _features(points: Any, crs: Any) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The input's attribute columns and geometries in the cube's CRS and in EPSG:4326."""
    import geopandas as gpd
    import shapely

    if isinstance(points, gpd.GeoDataFrame):
        # A named index (ids) is kept as a column; a plain row number is not.
        attrs = pd.DataFrame(points.drop(columns=points.geometry.name))
        attrs = attrs.reset_index(drop=any(name is None for name in attrs.index.names))
        series = points.geometry
    elif isinstance(points, gpd.GeoSeries):
        series, attrs = points, pd.DataFrame(index=range(len(points)))
    else:
        geoms = [points] if isinstance(points, shapely.Geometry) else list(points)
        wrong = [i for i, g in enumerate(geoms) if not isinstance(g, shapely.Geometry)]
        if wrong:
            raise TypeError(
                f"points must be a GeoDataFrame, a GeoSeries or shapely geometries in "
                f"EPSG:4326; items {wrong[:_MAX_LISTED]} are {type(geoms[wrong[0]]).__name__}"
            )
        series = gpd.GeoSeries(geoms, crs="EPSG:4326")
        west, south, east, north = series.total_bounds if geoms else (0, 0, 0, 0)
        if min(west, south) < -180 or east > 180 or north > 90 or south < -90:
            raise ValueError(
                f"shapely geometries must be lon/lat (EPSG:4326), but their bounds are "
                f"{(west, south, east, north)}; pass a GeoDataFrame or GeoSeries with its CRS"
            )
        attrs = pd.DataFrame(index=range(len(geoms)))
    if series.crs is None:
        raise ValueError(
            "points have no CRS; set it, e.g. points.set_crs('EPSG:4326'), or pass shapely "
            "geometries in lon/lat"
        )
    if len(series) == 0:
        raise ValueError("points is empty; pass at least one point or polygon")
    missing = np.flatnonzero((series.isna() | series.is_empty).to_numpy())
    if missing.size:
        raise ValueError(
            f"features {missing[:_MAX_LISTED].tolist()} have no geometry; drop them or give "
            "them one"
        )
    types = series.geom_type.to_numpy()
    odd = np.flatnonzero(~np.isin(types, _ALLOWED_TYPES))
    if odd.size:
        raise ValueError(
            f"sample takes points and polygons; features {odd[:_MAX_LISTED].tolist()} are "
            f"{sorted(set(types[odd]))} (explode multi-points with points.explode())"
        )
    taken = sorted({"year", "x", "y", "coverage", *BANDS} & {str(c) for c in attrs.columns})
    if taken:
        raise ValueError(
            f"the points' columns {taken} would clash with the table's own columns "
            "(year, x, y, coverage, A00..A63); rename them"
        )
    return attrs, series.to_crs(crs).to_numpy(), series.to_crs("EPSG:4326").to_numpy()


def _covered_pixels(geometry: Any, grid: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, coverage) of the pixels a polygon covers, over its own window."""
    from xembed.grid import Grid, coverage_fraction

    minx, miny, maxx, maxy = geometry.bounds
    res = grid.res
    c0 = max(math.floor((minx - grid.west) / res), 0)
    c1 = min(math.ceil((maxx - grid.west) / res), grid.width)
    r0 = max(math.floor((grid.north - maxy) / res), 0)
    r1 = min(math.ceil((grid.north - miny) / res), grid.height)
    if c0 >= c1 or r0 >= r1:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    window = Grid(grid.crs, grid.west + c0 * res, grid.north - r0 * res, c1 - c0, r1 - r0, res)
    cov = coverage_fraction(geometry, window)
    rows, cols = np.nonzero(cov)
    return rows + r0, cols + c0, cov[rows, cols].astype(np.float64)


def _units(geoms: np.ndarray, grid: Any, pixels: bool) -> dict[str, np.ndarray]:
    """What each row samples before years: its feature, x, y, coverage, pixel or mean.

    ``row``/``col`` is the pixel read (-1: none), ``mean`` the position of
    the polygon in the zonal means (-1: none), ``outside`` whether the
    feature misses the cube.
    """
    import shapely

    feature, xs, ys, cov, rows, cols, mean, outside = [], [], [], [], [], [], [], []
    n_means = 0
    extent = shapely.box(*grid.bounds)
    for i, geom in enumerate(geoms):
        if geom.geom_type == "Point":
            # floor: a point on a pixel edge takes the pixel to its east / south.
            col = math.floor((geom.x - grid.west) / grid.res)
            row = math.floor((grid.north - geom.y) / grid.res)
            inside = 0 <= col < grid.width and 0 <= row < grid.height
            r, c = (np.array([row]), np.array([col])) if inside else (np.array([-1]),) * 2
            unit_x, unit_y, w, m = np.array([geom.x]), np.array([geom.y]), np.ones(1), [-1]
        elif pixels:
            r, c, w = _covered_pixels(geom, grid)
            if r.size == 0:  # outside the cube: one NaN row
                r, c, w = np.array([-1]), np.array([-1]), np.array([np.nan])
                centre = geom.centroid
                unit_x, unit_y = np.array([centre.x]), np.array([centre.y])
            else:
                unit_x, unit_y = grid.x[c], grid.y[r]
            m = [-1] * r.size
        else:
            centre = geom.centroid
            r, c, w, m = np.array([-1]), np.array([-1]), np.array([np.nan]), [n_means]
            unit_x, unit_y = np.array([centre.x]), np.array([centre.y])
            n_means += 1
        feature.append(np.full(r.size, i))
        misses = (
            (r < 0).all() if geom.geom_type == "Point" or pixels else not geom.intersects(extent)
        )
        outside.append(np.full(r.size, misses))
        xs.append(unit_x)
        ys.append(unit_y)
        cov.append(w)
        rows.append(r)
        cols.append(c)
        mean.append(np.asarray(m, dtype=np.int64))
    names = ("feature", "x", "y", "coverage", "row", "col", "mean", "outside")
    parts: tuple[list[np.ndarray], ...] = (feature, xs, ys, cov, rows, cols, mean, outside)
    return {name: np.concatenate(part) for name, part in zip(names, parts, strict=True)}


def _read_units(
    obj: xr.Dataset | xr.DataArray, emb: xr.DataArray, units: dict[str, np.ndarray], polygons: Any
) -> np.ndarray:
    """Values (units, years, bands) float64: pixels and polygon means, one compute."""
    from xembed.sites import Site

    n_years, n_bands = emb.sizes["year"], emb.sizes["band"]
    values = np.full((units["feature"].size, n_years, n_bands), np.nan)
    has_pixel = units["row"] >= 0
    has_mean = units["mean"] >= 0
    picked: Any = None
    if has_pixel.any():
        picked = emb.isel(
            y=xr.DataArray(units["row"][has_pixel], dims="unit"),
            x=xr.DataArray(units["col"][has_pixel], dims="unit"),
        ).transpose("unit", "year", "band")
    means: Any = None
    if has_mean.any():
        sites = [Site(id=i, start_year=None, geometry=g) for i, g in enumerate(polygons)]
        means = zonal_mean(obj, sites, min_valid=0).transpose("site", "year", "band")
    picked, means = dask.compute(picked, means)
    if picked is not None:
        values[has_pixel] = np.asarray(picked, dtype=np.float64)
    if means is not None:
        values[has_mean] = np.asarray(means, dtype=np.float64)[units["mean"][has_mean]]
    return values


def _warn_missing(
    units: dict[str, np.ndarray], values: np.ndarray, years: np.ndarray, n_features: int
) -> None:
    """One CoverageWarning naming the features (and years) whose rows are NaN."""
    no_data = np.isnan(values).any(axis=-1)  # (units, years)
    if not no_data.any():
        return
    listed = []
    for i in np.unique(units["feature"][no_data.any(axis=1)]):
        mine = units["feature"] == i
        if units["outside"][mine].all():
            listed.append(f"feature {i} (outside the cube)")
            continue
        bad_years = years[no_data[mine].any(axis=0)].tolist()
        listed.append(f"feature {i} in {', '.join(map(str, bad_years))} (no data)")
    more = f"; ... ({len(listed)} in all)" if len(listed) > _MAX_LISTED else ""
    warnings.warn(
        CoverageWarning(
            f"{len(listed)} of {n_features} features have no data in some years, their rows "
            f"are NaN: {'; '.join(listed[:_MAX_LISTED])}{more}. Drop those rows "
            "(table.dropna(subset=['A00'])) or sample where the cube has data"
        ),
        stacklevel=stacklevel(),
    )


def sample(ds: xr.Dataset | xr.DataArray, points: Any, *, pixels: bool = False) -> pd.DataFrame:
    """The embeddings at labelled points and polygons: one row per feature and year.

    A point takes the pixel that contains it; a point exactly on a pixel
    edge takes the pixel to its east (on a vertical edge) or to its south
    (on a horizontal edge), so a corner takes the pixel to its south-east:
    pixels are half-open, ``[west, east) x (south, north]``. A polygon gives
    its coverage-weighted mean, the numbers of :func:`xembed.ops.zonal_mean`
    and :func:`xembed.polygon_mean`, or with ``pixels=True`` one row per
    pixel it covers, with that pixel's ``coverage`` (to train on every pixel
    of a labelled polygon). Computes once (its job is to return numbers).

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
        A cube with a CRS (any clipping: masked pixels read as NaN).
    points : GeoDataFrame, GeoSeries or list of shapely geometries
        Points and (multi)polygons; GeoPandas objects in any CRS, shapely
        geometries in EPSG:4326 lon/lat.
    pixels : bool
        Polygons give one row per covered pixel instead of their mean.

    Returns
    -------
    pandas.DataFrame
        The input's non-geometry columns (labels, ids; a named index
        becomes a column too), then ``year``,
        ``x``, ``y`` (where the row was sampled, in the cube's CRS: the
        point itself, the polygon's centroid, or the pixel's centre),
        ``coverage`` (only with ``pixels=True``: 1 for points) and
        ``A00..A63`` (float64). Rows are ordered by feature (then pixel),
        then year.

    Warns
    -----
    xembed.CoverageWarning
        Once, naming the features outside the cube or on pixels without
        data (their rows are NaN).

    Examples
    --------
    >>> import numpy as np
    >>> import shapely
    >>> from xembed.testing import make_cube, planted_vector
    >>> cube = make_cube(years=(2020, 2021), shape=(8, 8))
    >>> site = shapely.from_wkt(cube.attrs["site_geometry_wkt"])  # lon/lat
    >>> table = sample(cube, [site.centroid, site])
    >>> table.shape, table.columns[:4].tolist()
    ((4, 67), ['year', 'x', 'y', 'A00'])
    >>> bool(np.allclose(table.loc[:, "A00":], planted_vector()))  # the planted vector
    True
    >>> len(sample(cube, [site], pixels=True))  # 2 years x the pixels it covers
    32
    """
    emb = embeddings_of(ds)
    grid = grid_of(ds)
    attrs, geoms, lonlat = _features(points, grid.crs)
    units = _units(geoms, grid, pixels)
    polygons = [lonlat[i] for i in units["feature"][units["mean"] >= 0]]
    values = _read_units(ds, emb, units, polygons)
    years = emb["year"].to_numpy().astype(int)
    _warn_missing(units, values, years, len(geoms))
    n_units, n_years = values.shape[:2]
    each = np.repeat(np.arange(n_units), n_years)
    table = attrs.iloc[units["feature"][each]].reset_index(drop=True)
    table["year"] = np.tile(years, n_units)
    table["x"] = units["x"][each]
    table["y"] = units["y"][each]
    if pixels:
        table["coverage"] = units["coverage"][each]
    bands = [str(b) for b in emb["band"].to_numpy()]
    vectors = pd.DataFrame(values.reshape(n_units * n_years, -1), columns=bands)
    return pd.concat([table, vectors], axis=1)


# --- predict ------------------------------------------------------------------


def _predict_block(
    block: np.ndarray,
    model: Any,
    kind: str,
    columns: Any,
    classes: Any,
    batch: int,
) -> np.ndarray:
    """(years, bands, h, w) -> (years, h, w) codes or values, or (years, classes, h, w)."""
    n_years, _, h, w = block.shape
    flat = np.moveaxis(block, 1, -1).reshape(n_years * h * w, -1)
    valid = np.flatnonzero(~np.isnan(flat).any(axis=1))
    out: np.ndarray
    if kind == "proba":
        out = np.full((flat.shape[0], len(classes)), np.nan, dtype=np.float32)
    elif kind == "class":
        out = np.full(flat.shape[0], -1, dtype=np.int16)
    else:
        out = np.full(flat.shape[0], np.nan, dtype=np.float32)
    for start in range(0, valid.size, batch):
        rows = valid[start : start + batch]
        x: Any = flat[rows]
        if columns is not None:  # the band columns the model was fitted on, by name
            x = pd.DataFrame(x[:, columns[1]], columns=columns[0])
        if kind == "proba":
            out[rows] = model.predict_proba(x)
        elif kind == "class":
            out[rows] = pd.Index(classes).get_indexer(np.asarray(model.predict(x)))
        else:
            predicted = np.asarray(model.predict(x))
            if predicted.size != rows.size:
                raise ValueError(
                    f"model.predict returned shape {predicted.shape} for {rows.size} pixels; "
                    "predict maps single-output models (one value per pixel)"
                )
            out[rows] = predicted.reshape(-1)
    if kind == "proba":
        return np.moveaxis(out.reshape(n_years, h, w, -1), -1, 1)
    return out.reshape(n_years, h, w)


def _check_model(model: Any, emb: xr.DataArray, proba: bool) -> Any:
    """The model's feature columns: None (all bands in order) or (names, band positions)."""
    if not callable(getattr(model, "predict", None)):
        raise TypeError(
            f"model must be a fitted estimator with a predict method (scikit-learn API), "
            f"got {type(model).__name__}"
        )
    if proba and not (hasattr(model, "classes_") and hasattr(model, "predict_proba")):
        raise ValueError(
            f"proba=True needs a fitted classifier with predict_proba and classes_; "
            f"{type(model).__name__} has not; pass proba=False"
        )
    try:
        validation = import_sklearn("utils.validation")
        if hasattr(model, "get_params"):
            validation.check_is_fitted(model)
    except ImportError:
        pass
    except Exception as exc:  # sklearn's NotFittedError
        raise ValueError(
            f"{type(model).__name__} is not fitted; fit it first, e.g. "
            "model.fit(table[xembed.BANDS], table[label]), or use ds.embed.classify"
        ) from exc
    bands = [str(b) for b in emb["band"].to_numpy()]
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        names = [str(n) for n in names]
        unknown = [n for n in names if n not in bands]
        if unknown:
            raise ValueError(
                f"the model was fitted on columns {unknown[:5]} that are not bands of the "
                f"cube; fit it on band columns (A00..A63) of a table from ds.embed.sample"
            )
        return names, [bands.index(n) for n in names]
    n_in = getattr(model, "n_features_in_", len(bands))
    if n_in != len(bands):
        raise ValueError(
            f"the model takes {n_in} features but the cube has {len(bands)} bands; fit it on "
            "the bands A00..A63 of a table from ds.embed.sample"
        )
    return None


def _flag_attrs(classes: np.ndarray) -> dict[str, Any]:
    """CF flag attributes naming the classes (blanks in labels become underscores)."""
    meanings = ["_".join(str(c).split()) or "_" for c in classes]
    return {
        "long_name": "predicted class (index into flag_meanings; -1 where no data)",
        "flag_values": np.arange(len(classes), dtype=np.int16),
        "flag_meanings": " ".join(meanings),
        "missing_value": np.int16(-1),
    }


def predict(
    ds: xr.Dataset | xr.DataArray,
    model: Any,
    *,
    proba: bool = False,
    batch_pixels: int = 65_536,
) -> xr.DataArray:
    """A fitted model's prediction for every pixel and year, chunk by chunk.

    ``model`` is any fitted estimator with scikit-learn's ``predict``, fed
    ``(pixels, bands)`` arrays (a DataFrame of the band columns it was
    fitted on if it has ``feature_names_in_``) of the pixels with data only:
    masked (NaN) pixels are never passed to it. The result equals
    ``model.predict`` on the same pixels as a numpy array, exactly for
    models that predict each pixel on its own (trees, forests, neighbours);
    linear models go through BLAS, whose float32 rounding depends on how
    many rows a call gets, so theirs agree to the last bit or two.

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
        A cube (all bands of a pixel in one chunk, as ``open_embeddings``
        makes them; others are rechunked lazily).
    model : fitted estimator
        A classifier (it has ``classes_``) or a regressor.
    proba : bool
        Class probabilities (``predict_proba``) instead of classes.
    batch_pixels : int
        Pixels per ``predict`` call within a chunk: bounds the model's memory.

    Returns
    -------
    xarray.DataArray
        Lazy if the cube is (nothing computes until asked). Classifiers:
        ``(year, y, x)`` int16 codes, the index into ``model.classes_``,
        ``-1`` where the pixel has no data, with CF ``flag_values`` and
        ``flag_meanings`` naming the classes. Regressors: ``(year, y, x)``
        float32, NaN where no data. ``proba=True``: ``(year, class, y, x)``
        float32 with a ``class`` coordinate, NaN where no data.

    Examples
    --------
    >>> from sklearn.neighbors import KNeighborsClassifier
    >>> from xembed.testing import make_cube
    >>> cube = make_cube(years=(2020, 2021), shape=(8, 8), clip=True)
    >>> pixels = cube.embeddings.isel(year=0, y=slice(2, 6), x=4).T.values  # 4 pixels
    >>> model = KNeighborsClassifier(1).fit(pixels, ["site"] * 4)
    >>> classes = predict(cube, model)
    >>> classes.dims, classes.dtype, classes.attrs["flag_meanings"]
    (('year', 'y', 'x'), dtype('int16'), 'site')
    >>> sorted(set(classes.values.ravel().tolist()))  # -1: outside the clipped site
    [-1, 0]
    """
    if int(batch_pixels) < 1:
        raise ValueError(f"batch_pixels must be a positive number of pixels, got {batch_pixels!r}")
    emb = embeddings_of(ds)
    columns = _check_model(model, emb, proba)
    classifier = hasattr(model, "classes_")
    kind = "proba" if proba else "class" if classifier else "value"
    classes = np.asarray(model.classes_) if classifier else None
    kernel = functools.partial(
        _predict_block,
        model=model,
        kind=kind,
        columns=columns,
        classes=classes,
        batch=int(batch_pixels),
    )
    dtype = np.int16 if kind == "class" else np.float32
    data = emb.data
    out: Any
    if isinstance(data, da.Array):
        data = data.rechunk({1: -1})
        if kind == "proba":
            assert classes is not None
            chunks = (data.chunks[0], (len(classes),), data.chunks[2], data.chunks[3])
            out = data.map_blocks(
                kernel, dtype=dtype, chunks=chunks, meta=np.empty((0, 0, 0, 0), dtype)
            )
        else:
            out = data.map_blocks(kernel, drop_axis=1, dtype=dtype, meta=np.empty((0, 0, 0), dtype))
    else:
        out = kernel(np.asarray(data))
    coords = {"year": emb["year"], **spatial_coords(emb)}
    if kind == "proba":
        return xr.DataArray(
            out,
            dims=("year", "class", "y", "x"),
            coords={**coords, "class": classes},
            name="proba",
            attrs={"long_name": "class probability (predict_proba)", "units": "1"},
        )
    attrs = _flag_attrs(classes) if classes is not None else {"long_name": "predicted value"}
    return xr.DataArray(out, dims=("year", "y", "x"), coords=coords, name="predict", attrs=attrs)


def classify(
    ds: xr.Dataset | xr.DataArray,
    training: Any,
    label: str,
    *,
    model: Any = None,
    years: Sequence[int] | None = None,
) -> xr.DataArray:
    """Sample labelled points or polygons, fit a model, map its classes across years.

    :func:`sample` reads ``training`` from this cube (from ``years`` only,
    if given; one compute), a copy of ``model`` (scikit-learn's ``clone``:
    your object stays unfitted; default ``KNeighborsClassifier(n_neighbors=3)``,
    as in Earth Engine's tutorials) is fitted on its rows with data, and
    :func:`predict` maps it lazily over every year of the cube.

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
        A cube.
    training : GeoDataFrame, GeoSeries or list of shapely geometries
        Labelled points or polygons (see :func:`sample`).
    label : str
        The column of ``training`` holding the class.
    model : estimator, optional
        Any scikit-learn classifier (or regressor, for a continuous label).
    years : years, optional
        The cube's years to take the training pixels from.

    Returns
    -------
    xarray.DataArray
        As :func:`predict`; ``attrs["model"]`` holds the fitted model and
        ``attrs["training"]`` the training table (:func:`sample`'s, NaN rows
        included). Objects in attrs do not survive export (NetCDF, Zarr and
        GeoTIFF take numbers and text): drop them first
        (``classes.attrs.pop("model")``, ``classes.attrs.pop("training")``).

    Examples
    --------
    >>> import shapely
    >>> import geopandas as gpd
    >>> from sklearn.neighbors import KNeighborsClassifier
    >>> from xembed.testing import make_cube
    >>> cube = make_cube(years=(2020, 2021), shape=(8, 8))
    >>> site = shapely.from_wkt(cube.attrs["site_geometry_wkt"])
    >>> corner = shapely.box(*site.bounds).exterior.coords[0]  # off the planted vector
    >>> training = gpd.GeoDataFrame(
    ...     {"cover": ["site", "other"]}, geometry=[site, shapely.Point(corner)], crs=4326
    ... )
    >>> classes = classify(cube, training, "cover", model=KNeighborsClassifier(1), years=[2020])
    >>> classes.attrs["flag_meanings"], len(classes.attrs["training"])
    ('other site', 2)
    >>> int(classes.sel(year=2021).values[4, 4])  # the site's centre: 'site'
    1
    """
    emb = embeddings_of(ds)
    cube = ds
    if years is not None:
        positions = [year_position(emb, y, "training year") for y in years]
        cube = ds.isel(year=positions)
    table = sample(cube, training)
    if label not in table.columns:
        names = [c for c in table.columns if c not in BANDS]
        raise ValueError(f"label {label!r} is not a column of training (columns: {names})")
    bands = [str(b) for b in emb["band"].to_numpy()]
    usable = table.dropna(subset=[*bands, label])
    if usable.empty:
        raise ValueError(
            "no training feature has data in the cube; sample inside the cube's data "
            "(see the CoverageWarning) or choose other years"
        )
    base = import_sklearn("base")
    if model is None:
        model = import_sklearn("neighbors").KNeighborsClassifier(n_neighbors=3)
    fitted = base.clone(model) if hasattr(model, "get_params") else model
    fitted.fit(usable[bands].to_numpy(), usable[label].to_numpy())
    out = predict(ds, fitted)
    out.attrs["model"] = fitted
    out.attrs["training"] = table
    return out


# --- class areas --------------------------------------------------------------


def _class_names(classes: xr.DataArray, codes: np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """The codes to report and their names (``flag_meanings`` if any, else the codes)."""
    flags = classes.attrs.get("flag_values")
    meanings = classes.attrs.get("flag_meanings")
    if flags is not None and meanings is not None:
        values = np.atleast_1d(np.asarray(flags)).astype(np.int64)
        names = str(meanings).split()
        if len(names) == values.size:
            return values, names
    present = np.unique(codes[codes >= 0]).astype(np.int64)
    return present, present.tolist()


def class_area(ds: xr.Dataset | xr.DataArray, classes: xr.DataArray) -> pd.DataFrame:
    """Hectares and share of each class within the site, per year.

    Each pixel counts with its ``coverage`` (the fraction inside the site;
    1 everywhere for a cube without it), so the areas of a year add up to
    the site's area with data that year (``valid_ha`` of
    :func:`xembed.polygon_mean`) and the fractions to 1. Computes the class
    map once (its job is to return numbers).

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
        The cube the classes were predicted on (for its coverage).
    classes : xarray.DataArray
        ``(year, y, x)`` integer classes, ``-1`` (or any negative) where no
        data, e.g. from :func:`predict` or :func:`classify` (their
        ``flag_meanings`` name the classes, and every class gets a row).

    Returns
    -------
    pandas.DataFrame
        Columns ``year, class, ha, fraction``, one row per year and class.

    Examples
    --------
    >>> from xembed.testing import make_cube
    >>> cube = make_cube(years=(2020, 2021), shape=(8, 8))
    >>> inside = (cube.coverage > 0).astype("int16").expand_dims(year=cube.year)
    >>> class_area(cube, inside)  # the site's pixels are class 1, the others 0
       year  class        ha  fraction
    0  2020      0  0.000000       0.0
    1  2020      1  0.151156       1.0
    2  2021      0  0.000000       0.0
    3  2021      1  0.151156       1.0
    """
    emb = embeddings_of(ds)
    if not isinstance(classes, xr.DataArray) or set(classes.dims) != {"year", "y", "x"}:
        raise ValueError(
            "classes must be a (year, y, x) DataArray of integer classes, e.g. "
            "ds.embed.predict(model) or ds.embed.classify(...)"
        )
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(
            f"classes must hold integer class codes, not {classes.dtype} values; "
            "class_area counts classes (a regressor's map has none)"
        )
    weights = weights_of(ds, emb).astype(np.float64)
    codes, w = dask.compute(classes.transpose("year", "y", "x"), weights)
    codes = np.asarray(codes)
    w = np.asarray(w.transpose("y", "x")) * (pixel_area(emb) / 10_000.0)
    values, names = _class_names(classes, codes)
    if codes.shape[1:] != w.shape:
        raise ValueError(
            f"classes cover {codes.shape[1:]} pixels (y, x) but the cube {w.shape}; "
            "predict them on this cube"
        )
    rows = []
    for i, year in enumerate(classes["year"].to_numpy()):
        year_codes = codes[i]
        valid = year_codes >= 0
        total = float(w[valid].sum())
        for value, name in zip(values, names, strict=True):
            ha = float(w[year_codes == value].sum())
            rows.append((int(year), name, ha, ha / total if total > 0 else np.nan))
    return pd.DataFrame(rows, columns=["year", "class", "ha", "fraction"])
