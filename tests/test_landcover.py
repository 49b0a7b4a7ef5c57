"""The sample's truth: ``landcover`` and ``tree_cover`` agree with the generated embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

import xembed
from xembed.sources.sample import (
    CLASS_NAMES,
    DETAIL_NAMES,
    landcover,
    sample_events,
    tree_cover,
)

FOREST, PASTURE, BARE = (CLASS_NAMES.index(n) for n in ("forest", "pasture", "bare"))


def _site(rid: int) -> xembed.Site:
    return next(s for s in xembed.demo_sites() if s.id == rid)


def _inside(cube: object) -> np.ndarray:
    return (cube.coverage == 1).values


def test_attrs_and_shapes() -> None:
    cube = xembed.open_embeddings(_site(3101), [2020, 2021])
    truth = landcover(cube)
    assert truth.dims == ("year", "y", "x") and truth.dtype == np.int8
    assert truth.attrs["flag_meanings"].split() == list(CLASS_NAMES)
    assert truth.attrs["flag_values"].tolist() == list(range(6))
    assert truth.rio.crs == cube.rio.crs
    np.testing.assert_array_equal(truth["x"], cube["x"])
    one = landcover(_site(3101), 2020)  # a Site: the grid open_embeddings gives it
    assert one.dims == ("y", "x")
    np.testing.assert_array_equal(one.values, truth.sel(year=2020).values)
    detail = landcover(cube, 2020, detail=True)
    assert detail.attrs["flag_meanings"].split() == list(DETAIL_NAMES)


def test_restoration_turns_pasture_to_forest() -> None:
    """Site 3102 (start 2018): pasture to 2019, forest from 2020; tree cover (year - 2018) / 3."""
    site = _site(3102)
    inside = _inside(xembed.open_embeddings(site, 2017))
    years = list(range(2017, 2023))
    truth = landcover(site, years).values[:, inside]
    cover = tree_cover(site, years).values[:, inside]
    assert [int(np.median(t)) for t in truth] == [PASTURE] * 3 + [FOREST] * 3
    np.testing.assert_allclose(np.median(cover, axis=1), [0, 0, 1 / 3, 2 / 3, 1, 1], atol=1e-6)
    assert (
        landcover(site, 2017, detail=True).values[inside] == DETAIL_NAMES.index("restoration")
    ).all()


def test_deforestation_cleared_in_2021() -> None:
    """The patch: forest to 2020, bare in 2021, pasture after; tree cover 1, then 0."""
    patch, _ = sample_events()["deforestation"]
    centre = patch.representative_point()
    where = shapely.Point(centre.x, centre.y).buffer(0.001)
    truth = landcover(where, [2020, 2021, 2022])
    inside = shapely.contains_xy(patch, *_lonlat(truth))
    assert inside.sum() > 50
    values = truth.values[:, inside]
    assert (values[0] == FOREST).all() and (values[1] == BARE).all()
    assert (values[2] == PASTURE).all()
    cover = tree_cover(where, [2020, 2022]).values[:, inside]
    assert (cover[0] == 1).all() and (cover[1] == 0).all()


def _lonlat(arr: object) -> tuple[np.ndarray, np.ndarray]:
    from xembed._util import transformer

    xs, ys = np.meshgrid(arr["x"].values, arr["y"].values)
    return transformer(arr.rio.crs, "EPSG:4326").transform(xs, ys)


def test_truth_is_what_the_embeddings_were_made_from() -> None:
    """Class means of the data, by true class, classify the pixels nearly perfectly."""
    cube = xembed.open_embeddings(
        shapely.box(-48.018, -22.612, -48.002, -22.585), [2018, 2023], clip=False
    ).compute()
    for year in (2018, 2023):
        x = cube.embeddings.sel(year=year).values.reshape(64, -1).T
        t = landcover(cube, year).values.ravel()
        ok = ~np.isnan(x).any(axis=1)
        x, t = x[ok], t[ok]
        present = np.unique(t)
        assert len(present) >= 4
        means = np.stack([x[t == c].mean(axis=0) for c in present])
        nearest = present[np.argmax(x @ means.T / np.linalg.norm(means, axis=1), axis=1)]
        assert (nearest == t).mean() > 0.95


def test_tree_cover_is_a_fraction_where_forest_is_one() -> None:
    cube = xembed.open_embeddings(_site(3110), [2019, 2024])
    cover, truth = tree_cover(cube).values, landcover(cube, detail=True).values
    assert cover.dtype == np.float32 and cover.min() >= 0 and cover.max() <= 1
    forest = np.isin(truth, [DETAIL_NAMES.index(n) for n in ("forest", "riparian", "remnant")])
    assert (cover[forest] == 1).all()
    other = np.isin(truth, [DETAIL_NAMES.index(n) for n in ("pasture", "crop", "water", "urban")])
    assert (cover[other] == 0).all()


def test_bad_years_are_refused() -> None:
    with pytest.raises(ValueError, match="outside the sample"):
        landcover(_site(3101), 2030)
    with pytest.raises(ValueError, match="year is missing"):
        tree_cover(_site(3101))
