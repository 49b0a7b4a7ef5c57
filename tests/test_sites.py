"""Tests of xembed.sites: Site, load_sites and as_site (offline, fixture files in tmp_path)."""

from __future__ import annotations

import json
import math
import pickle
import warnings
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import pytest
import shapely
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box, mapping

from xembed.errors import SiteError
from xembed.sites import Site, as_site, as_sites, load_sites

# A ~1 km square near the Brazilian restoration sites the original notebook used.
LONLAT = box(-48.0, -22.6, -47.99, -22.59)
OTHER = box(-47.9, -22.6, -47.89, -22.59)
BOWTIE = Polygon([(-48.0, -22.6), (-47.99, -22.59), (-47.99, -22.6), (-48.0, -22.59)])


def feature(geometry: Any, properties: dict[str, Any] | None = None, **extra: Any) -> dict:
    geom = mapping(geometry) if isinstance(geometry, shapely.Geometry) else geometry
    return {"type": "Feature", "properties": properties or {}, "geometry": geom, **extra}


def write_geojson(path: Path, features: list[dict], crs: str | None = None) -> Path:
    fc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if crs is not None:
        fc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(fc))
    return path


def frame(geoms: list[Any], crs: Any = "EPSG:4326", **columns: list[Any]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(columns, geometry=geoms, crs=crs)


# ----------------------------------------------------------------------------- Site


def test_repr_matches_the_original_notebook() -> None:
    assert repr(Site(3107, 2016, LONLAT)) == "Site(id=3107, start_year=2016)"
    assert str(Site(3107, 2016, LONLAT)) == "Site(id=3107, start_year=2016)"
    assert repr(Site("a", None, LONLAT)) == "Site(id='a', start_year=None)"


def test_site_normalises_numpy_and_pandas_values() -> None:
    site = Site(np.int64(3107), np.float64(2016.0), LONLAT, {"k": 1})
    assert site.id == 3107 and type(site.id) is int
    assert site.start_year == 2016 and type(site.start_year) is int
    assert Site(3107.0, float("nan"), LONLAT).id == 3107
    assert Site(np.str_("a"), pd.NA, LONLAT).start_year is None
    assert type(Site(np.str_("a"), None, LONLAT).id) is str


def test_site_is_frozen_hashable_comparable_and_picklable() -> None:
    props = {"name": "x"}
    a, b = Site(1, 2016, LONLAT, props), Site(1, 2016, box(-48.0, -22.6, -47.99, -22.59), props)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Site(1, 2017, LONLAT, props)
    with pytest.raises(AttributeError):
        a.id = 2  # type: ignore[misc]
    props["name"] = "changed"  # the site keeps its own copy
    assert a.properties == {"name": "x"}
    assert pickle.loads(pickle.dumps(a)) == a


def test_site_drops_z() -> None:
    poly3d = Polygon([(-48.0, -22.6, 5), (-47.99, -22.6, 5), (-47.99, -22.59, 5)])
    assert not Site(1, None, poly3d).geometry.has_z


@pytest.mark.parametrize(
    ("geometry", "match"),
    [
        (None, r"site 7 has no geometry"),
        (Point(-48, -22.6), r"site 7: geometry is a Point.*Polygon or MultiPolygon"),
        (LineString([(-48, -22.6), (-47, -22)]), r"site 7: geometry is a LineString"),
        (Polygon(), r"site 7: geometry is empty"),
        (box(500_000, 7_500_000, 501_000, 7_501_000), r"site 7: .*look projected"),
    ],
)
def test_site_rejects_unusable_geometries(geometry: Any, match: str) -> None:
    with pytest.raises(SiteError, match=match):
        Site(7, None, geometry)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"id": True}, r"site id True is a boolean"),
        ({"id": 1.5}, r"site id 1.5 is not a whole number"),
        ({"id": None}, r"site id None is a NoneType"),
        ({"start_year": 2016.5}, r"site 1: start_year 2016.5 is not a year"),
        ({"start_year": "soon"}, r"site 1: start_year 'soon' is not a year"),
        ({"properties": [1, 2]}, r"site 1: properties must be a mapping"),
    ],
)
def test_site_rejects_bad_ids_years_and_properties(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(SiteError, match=match):
        Site(**{"id": 1, "start_year": None, "geometry": LONLAT, **kwargs})


def test_site_repairs_a_bowtie_with_a_warning() -> None:
    with pytest.warns(UserWarning, match=r"site 'bow': invalid geometry \(Self-intersection"):
        site = Site("bow", None, BOWTIE)
    assert site.geometry.is_valid and isinstance(site.geometry, MultiPolygon)
    assert site.geometry.area == pytest.approx(BOWTIE.buffer(0).area * 2)


def test_warning_points_at_the_callers_line() -> None:
    with pytest.warns(UserWarning) as record:
        Site("bow", None, BOWTIE)
    assert record[0].filename == __file__


def test_site_geo_interface_round_trips_through_as_site() -> None:
    site = Site("a", 2019, LONLAT, {"state": "SP"})
    assert as_site(site.__geo_interface__) == site
    assert gpd.GeoDataFrame.from_features([site]).geometry[0].equals(LONLAT)


# ----------------------------------------------------------------------------- files


def test_geojson_legacy_crs_member_is_honoured(tmp_path: Path) -> None:
    # Brazilian restoration-site files carry SIRGAS 2000 / Brazil Polyconic in the
    # pre-RFC 7946 "crs" member; project a known lon/lat square into it.
    to_poly = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:5880", always_xy=True)
    projected = shapely.transform(LONLAT, lambda c: np.column_stack(to_poly.transform(*c.T)))
    assert projected.bounds[0] > 5_000_000  # really metres, not degrees
    path = write_geojson(
        tmp_path / "restoration_sites.geojson",
        [feature(projected, {"rid": 3107, "start_year": 2016, "uf": "SP"})],
        crs="urn:ogc:def:crs:EPSG::5880",
    )
    [site] = load_sites(path)
    assert repr(site) == "Site(id=3107, start_year=2016)"
    assert site.properties == {"uf": "SP"}
    got = np.asarray(site.geometry.exterior.coords)
    want = np.asarray(LONLAT.exterior.coords)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)


def test_geojson_without_crs_is_lonlat_and_str_paths_work(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "s.geojson", [feature(LONLAT, {"id": "a"})])
    [site] = load_sites(str(path))
    assert site.id == "a" and site.start_year is None
    assert site.geometry.equals(LONLAT)


@pytest.mark.parametrize("crs", ["urn:ogc:def:crs:EPSG::4326", "urn:ogc:def:crs:OGC:1.3:CRS84"])
def test_geojson_lonlat_crs_members_keep_lon_first(tmp_path: Path, crs: str) -> None:
    # EPSG:4326 is lat/lon by the book; GeoJSON files still store lon first.
    [site] = load_sites(write_geojson(tmp_path / "s.geojson", [feature(LONLAT, id=1)], crs=crs))
    assert site.geometry.normalize().equals_exact(LONLAT.normalize(), 1e-12)


def test_geojson_without_crs_but_metres_is_caught(tmp_path: Path) -> None:
    utm = frame([LONLAT], rid=[3107]).to_crs("EPSG:32722").geometry[0]
    path = write_geojson(tmp_path / "utm.geojson", [feature(utm, {"rid": 3107})])
    with pytest.raises(
        SiteError, match=r"utm\.geojson is declared EPSG:4326.*look projected.*set_crs"
    ):
        load_sites(path)


@pytest.mark.parametrize(("name", "driver"), [("sites.gpkg", "GPKG"), ("sites.shp", None)])
def test_geopackage_and_shapefile_round_trip(tmp_path: Path, name: str, driver: str | None) -> None:
    gdf = frame(
        [LONLAT, OTHER], crs="EPSG:4326", rid=[3107, 3108], start_year=[2016, 2018], uf=["SP", "MG"]
    )
    # Written in UTM 22S so the reader must reproject back to lon/lat.
    gdf.to_crs("EPSG:32722").to_file(tmp_path / name, driver=driver)
    sites = load_sites(tmp_path / name)
    assert [(s.id, s.start_year, s.properties) for s in sites] == [
        (3107, 2016, {"uf": "SP"}),
        (3108, 2018, {"uf": "MG"}),
    ]
    for site, want in zip(sites, [LONLAT, OTHER], strict=True):
        assert site.geometry.normalize().equals_exact(want.normalize(), 1e-7)


def test_geopackage_layer_can_be_chosen(tmp_path: Path) -> None:
    path = tmp_path / "multi.gpkg"
    frame([LONLAT], rid=[1]).to_file(path, layer="first")
    frame([OTHER], rid=[2]).to_file(path, layer="second")
    assert [s.id for s in load_sites(path, layer="second")] == [2]


def test_geojson_feature_ids_are_used_when_no_id_column(tmp_path: Path) -> None:
    feats = [feature(LONLAT, id=3107), feature(OTHER, id=12)]
    assert [s.id for s in load_sites(write_geojson(tmp_path / "a.geojson", feats))] == [3107, 12]
    # A property column wins over the Feature member, as for as_site.
    feats = [feature(LONLAT, {"rid": 1}, id="x"), feature(OTHER, {"rid": 2}, id="y")]
    assert [s.id for s in load_sites(write_geojson(tmp_path / "b.geojson", feats))] == [1, 2]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.geojson"
    with pytest.raises(FileNotFoundError, match=r"nope\.geojson.*GeoJSON.*GeoPackage"):
        load_sites(path)


def test_unreadable_file_names_the_path_and_formats(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a vector file")
    with pytest.raises(SiteError, match=r"cannot read sites from .*notes\.txt.*GeoPackage"):
        load_sites(path)


def test_empty_file_names_the_path(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "empty.geojson", [])
    with pytest.raises(SiteError, match=r"empty\.geojson contains no features"):
        load_sites(path)


def test_shapefile_without_prj_asks_for_a_crs(tmp_path: Path) -> None:
    frame([LONLAT], rid=[1]).to_file(tmp_path / "noprj.shp")
    (tmp_path / "noprj.prj").unlink()
    with pytest.raises(SiteError, match=r"noprj\.shp.*declares no CRS.*set_crs"):
        load_sites(tmp_path / "noprj.shp")


def test_null_geometry_names_the_ids_and_says_drop(tmp_path: Path) -> None:
    feats = [feature(LONLAT, {"rid": 1}), feature(None, {"rid": 12}), feature(None, {"rid": 13})]
    path = write_geojson(tmp_path / "nulls.geojson", feats)
    with pytest.raises(SiteError, match=r"sites 12, 13 have no geometry.*drop them"):
        load_sites(path)


def test_point_geometry_names_the_id_and_type(tmp_path: Path) -> None:
    feats = [feature(LONLAT, {"rid": 1}), feature(Point(-48, -22.6), {"rid": 2})]
    path = write_geojson(tmp_path / "points.geojson", feats)
    with pytest.raises(SiteError, match=r"site 2 \(Point\) is not a polygon"):
        load_sites(path)


def test_invalid_bowtie_in_a_file_is_repaired_with_a_warning(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "bow.geojson", [feature(BOWTIE, {"rid": 3107})])
    with pytest.warns(UserWarning, match=r"site 3107: invalid geometry .*make_valid"):
        [site] = load_sites(path)
    assert site.geometry.is_valid and site.geometry.area == pytest.approx(BOWTIE.buffer(0).area * 2)


def test_unrepairable_geometry_names_the_id() -> None:
    flat = Polygon([(-48.0, -22.6), (-47.99, -22.6), (-47.98, -22.6), (-48.0, -22.6)])
    with pytest.raises(SiteError, match=r"site 5: invalid geometry .*no area left"):
        load_sites(frame([flat], rid=[5]))


def test_valid_files_raise_no_warnings(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "ok.geojson", [feature(LONLAT, {"rid": 1})])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_sites(path)


# ----------------------------------------------------------------------------- GeoDataFrames


def test_geodataframe_input_is_reprojected() -> None:
    gdf = frame([LONLAT], rid=[3107], start_year=[2016]).to_crs("EPSG:32722")
    [site] = load_sites(gdf)
    assert repr(site) == "Site(id=3107, start_year=2016)"
    assert site.geometry.normalize().equals_exact(LONLAT.normalize(), 1e-7)


def test_geoseries_and_named_index_input() -> None:
    with pytest.warns(UserWarning, match=r"GeoSeries has no site ids.*numbered by row"):
        sites = load_sites(gpd.GeoSeries([LONLAT, OTHER], crs=4326))
    assert [s.id for s in sites] == [0, 1]
    gdf = frame([LONLAT, OTHER], rid=[7, 8], start_year=[2016, 2017]).set_index("rid")
    assert [s.id for s in load_sites(gdf)] == [7, 8]


def test_geodataframe_without_crs_says_set_crs() -> None:
    with pytest.raises(SiteError, match=r"GeoDataFrame has no CRS.*\.set_crs\("):
        load_sites(frame([LONLAT], crs=None))


def test_projected_coordinates_declared_lonlat_are_caught() -> None:
    utm = frame([LONLAT], rid=[3107]).to_crs("EPSG:32722").set_crs(4326, allow_override=True)
    with pytest.raises(
        SiteError, match=r"declared EPSG:4326 .*site 3107 has coordinates beyond.*look projected"
    ):
        load_sites(utm)


def test_properties_are_plain_python_scalars() -> None:
    gdf = frame(
        [LONLAT, OTHER],
        rid=[1, 2],
        area=np.array([1.5, np.nan]),
        n=np.array([3, 4], dtype=np.int32),
        name=["a", None],
        ok=[True, False],
        when=pd.to_datetime(["2020-01-01", None]),
    )
    props = [s.properties for s in load_sites(gdf)]
    assert props[0] == {
        "area": 1.5,
        "n": 3,
        "name": "a",
        "ok": True,
        "when": pd.Timestamp(2020, 1, 1),
    }
    assert props[1] == {"area": None, "n": 4, "name": None, "ok": False, "when": None}
    for value in props[0].values():
        assert type(value).__module__ in ("builtins", "datetime"), value


# ----------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    ("columns", "want"),
    [
        ({"rid": [10, 11], "id": [20, 21], "site_id": [30, 31]}, [10, 11]),
        ({"id": [20, 21], "site_id": [30, 31]}, [20, 21]),
        ({"site_id": [30, 31]}, [30, 31]),
    ],
)
def test_id_column_order(columns: dict[str, list[Any]], want: list[int]) -> None:
    sites = load_sites(frame([LONLAT, OTHER], **columns))
    assert [s.id for s in sites] == want
    assert all(type(s.id) is int for s in sites)


def test_id_field_overrides_and_leaves_other_columns_as_properties() -> None:
    sites = load_sites(frame([LONLAT, OTHER], rid=[1, 2], code=["a", "b"]), id_field="code")
    assert [s.id for s in sites] == ["a", "b"]
    assert [s.properties for s in sites] == [{"rid": 1}, {"rid": 2}]


def test_missing_id_field_lists_columns() -> None:
    with pytest.raises(SiteError, match=r"id_field 'plot' is not a column.*\['rid', 'uf'\]"):
        load_sites(frame([LONLAT], rid=[1], uf=["SP"]), id_field="plot")


def test_integral_float_ids_become_int() -> None:
    # pandas stores an int column with a missing value as float.
    sites = load_sites(frame([LONLAT, OTHER], rid=np.array([3107.0, 3108.0])))
    assert [s.id for s in sites] == [3107, 3108] and type(sites[0].id) is int


def test_duplicate_ids_are_named() -> None:
    gdf = frame([LONLAT, OTHER, LONLAT, OTHER], rid=[1, 2, 2, 1])
    with pytest.raises(SiteError, match=r"duplicate site ids 1, 2 in column 'rid'"):
        load_sites(gdf)


def test_partly_missing_geojson_feature_ids_are_named(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "m.geojson", [feature(LONLAT, id=5), feature(OTHER)])
    with pytest.raises(SiteError, match=r"row 1 has no site id in GeoJSON Feature 'id'"):
        load_sites(path)


def test_duplicate_geojson_feature_ids_are_named(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "d.geojson", [feature(LONLAT, id=5), feature(OTHER, id=5)])
    with pytest.raises(SiteError, match=r"duplicate site ids 5 in GeoJSON Feature 'id'"):
        load_sites(path)


def test_missing_ids_name_the_rows() -> None:
    with pytest.raises(SiteError, match=r"row 1 has no site id in column 'rid'"):
        load_sites(frame([LONLAT, OTHER], rid=[1.0, np.nan]))


# Issue 12, item 2: ids never silently become row numbers.


def test_a_named_index_is_the_id() -> None:
    gdf = frame([LONLAT, OTHER], plot_id=["A1", "B7"], id=[1, 2], uf=["SP", "SP"])
    sites = load_sites(gdf.set_index("plot_id"))
    assert [s.id for s in sites] == ["A1", "B7"]
    # The index wins over the default columns, which stay properties.
    assert sites[0].properties == {"id": 1, "uf": "SP"}
    # id_field= still picks a column; the index then becomes a property.
    by_column = load_sites(gdf.set_index("plot_id"), id_field="id")
    assert [s.id for s in by_column] == [1, 2] and by_column[0].properties["plot_id"] == "A1"
    # An index kept as a column too (set_index(..., drop=False)) is used once.
    assert [s.id for s in load_sites(gdf.set_index("plot_id", drop=False))] == ["A1", "B7"]


def test_a_one_row_frame_keeps_its_id() -> None:
    gdf = frame([LONLAT, OTHER], plot_id=["A1", "B7"]).set_index("plot_id")
    assert as_site(gdf.iloc[[1]]).id == "B7"
    assert [s.id for s in load_sites(gdf.iloc[[0]])] == ["A1"]
    one = frame([OTHER], plot_id=["B7"], uf=["SP"])
    assert as_site(one, id_field="plot_id").id == "B7"
    assert load_sites(one, id_field="plot_id")[0].properties == {"uf": "SP"}


def test_row_numbers_as_ids_warn_naming_the_columns_and_the_fix(tmp_path: Path) -> None:
    feats = [feature(LONLAT, {"plot_id": "A1", "uf": "SP"}), feature(OTHER, {"plot_id": "B7"})]
    path = write_geojson(tmp_path / "plots.geojson", feats)
    with pytest.warns(
        UserWarning,
        match=r"plots\.geojson has no site ids \(no column rid, id or site_id, no named index, "
        r"no GeoJSON Feature 'id'\), so its sites are numbered by row: 0, 1; its columns are "
        r"\['plot_id', 'uf'\]: pass id_field= naming the column that holds the ids, e.g. "
        r"load_sites\(\.\.\., id_field='plot_id'\)",
    ) as record:
        sites = load_sites(path)
    assert [s.id for s in sites] == [0, 1]
    assert record[0].filename == __file__  # points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [s.id for s in load_sites(path, id_field="plot_id")] == ["A1", "B7"]
    # A frame with no columns at all says so.
    with pytest.warns(UserWarning, match=r"GeoDataFrame has no site ids .*no columns but the geo"):
        load_sites(frame([LONLAT]))


def test_one_feature_without_an_id_warns_too() -> None:
    with pytest.warns(UserWarning, match=r"GeoJSON mapping has no site ids.*\['plot_id'\]"):
        site = as_site(feature(LONLAT, {"plot_id": "A1"}))
    assert site.id == 0
    assert as_site(feature(LONLAT, {"plot_id": "A1"}), id_field="plot_id").id == "A1"


def test_bare_geometries_are_numbered_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert as_site(LONLAT).id == 0
        assert as_site(mapping(LONLAT)).id == 0
        assert [s.id for s in as_sites([LONLAT, OTHER])] == [0, 1]
        assert as_site(feature(LONLAT, {"plot_id": "A1"}), id="mine").id == "mine"


def test_id_field_works_on_as_sites(tmp_path: Path) -> None:
    feats = [feature(LONLAT, {"plot_id": "A1"}), feature(OTHER, {"plot_id": "B7"})]
    path = write_geojson(tmp_path / "plots.geojson", feats)
    gdf = frame([LONLAT, OTHER], plot_id=["A1", "B7"])
    fc = {"type": "FeatureCollection", "features": feats}
    for sites in (path, str(path), gdf, fc, feats):
        assert [s.id for s in as_sites(sites, id_field="plot_id")] == ["A1", "B7"], sites
    with pytest.raises(SiteError, match=r"id_field 'plot' is not a column.*\['plot_id'\]"):
        as_sites(gdf, id_field="plot")


# ----------------------------------------------------------------------------- start years


def test_start_year_float_becomes_int_and_nan_none() -> None:
    sites = load_sites(frame([LONLAT, OTHER], rid=[1, 2], start_year=[2016.0, np.nan]))
    assert [s.start_year for s in sites] == [2016, None]
    assert type(sites[0].start_year) is int
    assert all("start_year" not in s.properties for s in sites)


def test_start_year_absent_or_disabled() -> None:
    assert load_sites(frame([LONLAT], rid=[1]))[0].start_year is None
    [site] = load_sites(frame([LONLAT], rid=[1], start_year=[2016]), start_year_field=None)
    assert site.start_year is None and site.properties == {"start_year": 2016}


def test_start_year_field_override_and_missing() -> None:
    gdf = frame([LONLAT], rid=[1], ano_inicio=[2019])
    assert load_sites(gdf, start_year_field="ano_inicio")[0].start_year == 2019
    with pytest.raises(SiteError, match=r"start_year_field 'year' is not a column.*'ano_inicio'"):
        load_sites(gdf, start_year_field="year")


def test_start_years_typed_as_text() -> None:
    sites = load_sites(frame([LONLAT, OTHER], rid=[1, 2], start_year=[" 2016", ""]))
    assert [s.start_year for s in sites] == [2016, None]


def test_bad_start_year_names_the_site() -> None:
    with pytest.raises(SiteError, match=r"site 3107: start_year 'late' is not a year"):
        load_sites(frame([LONLAT], rid=[3107], start_year=["late"]))


# ----------------------------------------------------------------------------- mappings, as_site


def test_load_sites_from_a_feature_collection_mapping() -> None:
    fc = {"type": "FeatureCollection", "features": [feature(LONLAT, {"start_year": 2020}, id=9)]}
    assert repr(load_sites(fc)) == "[Site(id=9, start_year=2020)]"


def test_as_site_on_a_shapely_geometry() -> None:
    assert as_site(LONLAT) == Site(0, None, LONLAT)
    assert as_site(LONLAT, id="farm").id == "farm"
    assert isinstance(as_site(MultiPolygon([LONLAT, OTHER])).geometry, MultiPolygon)


def test_as_site_on_a_geometry_mapping() -> None:
    assert as_site(mapping(LONLAT)).geometry.equals(LONLAT)
    assert as_site(mapping(LONLAT)).id == 0


def test_as_site_on_a_feature() -> None:
    site = as_site(feature(LONLAT, {"rid": 3107, "start_year": 2016.0, "uf": "SP"}, id="f1"))
    assert (site.id, site.start_year, site.properties) == (3107, 2016, {"uf": "SP"})
    assert as_site(feature(LONLAT, id="f1")).id == "f1"
    assert as_site(feature(LONLAT, {"site_id": 4})).id == 4
    assert as_site(feature(LONLAT, {"site_id": 4}), id=99).id == 99


def test_as_site_honours_a_legacy_crs_member() -> None:
    to_poly = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:5880", always_xy=True)
    projected = shapely.transform(LONLAT, lambda c: np.column_stack(to_poly.transform(*c.T)))
    fc = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::5880"}},
        "features": [feature(projected, id=1)],
    }
    assert as_site(fc).geometry.normalize().equals_exact(LONLAT.normalize(), 1e-7)


def test_as_site_on_a_site_and_geo_interface_objects() -> None:
    site = Site(3107, 2016, LONLAT)
    assert as_site(site) is site
    assert as_site(site, id=1) == Site(1, 2016, LONLAT)

    class HasGeoInterface:
        __geo_interface__ = feature(LONLAT, {"id": "gi"})

    assert as_site(HasGeoInterface()).id == "gi"
    assert as_site(frame([LONLAT], rid=[3]).to_crs("EPSG:32722")).id == 3


def test_as_site_errors() -> None:
    with pytest.raises(SiteError, match=r"site 0: geometry is a Point"):
        as_site(Point(-48, -22.6))
    with pytest.raises(
        SiteError, match=r"GeoJSON mapping holds 2 sites, but one site is expected.*load_sites"
    ):
        as_site({"type": "FeatureCollection", "features": [feature(LONLAT), feature(OTHER)]})
    with pytest.raises(SiteError, match=r"not a GeoJSON object \(type='Circle'\)"):
        as_site({"type": "Circle", "radius": 3})
    with pytest.raises(SiteError, match=r"site 0 has no geometry \(null or empty\); drop"):
        as_site(feature(None))
    with pytest.raises(SiteError, match=r"unsupported GeoJSON 'crs' member"):
        as_site({**feature(LONLAT), "crs": {"type": "link", "properties": {"href": "x"}}})
    with pytest.raises(TypeError, match=r"as_site expects a Site"):
        as_site(42)
    with pytest.raises(TypeError, match=r"load_sites expects a path"):
        load_sites(42)  # type: ignore[arg-type]


def test_as_site_bare_geometry_with_projected_coordinates() -> None:
    with pytest.raises(SiteError, match=r"look projected"):
        as_site(box(500_000, 7_500_000, 501_000, 7_501_000))
    assert math.isclose(as_site(LONLAT).geometry.area, LONLAT.area)


@pytest.mark.parametrize(
    ("crs", "match"),
    [
        ("EPSG:5880", r"unsupported GeoJSON 'crs' member 'EPSG:5880'"),
        ({"type": "name", "properties": {"name": "EPSG:999999"}}, r"unknown CRS 'EPSG:999999'"),
    ],
)
def test_bad_crs_members_are_named(crs: Any, match: str) -> None:
    with pytest.raises(SiteError, match=match):
        load_sites({"type": "FeatureCollection", "crs": crs, "features": [feature(LONLAT)]})


# ----------------------------------------------------------------------------- messages


def test_swapped_coordinates_suggest_shapely_transform() -> None:
    """Issue 12, item 13: no shapely.ops.transform (deprecated in shapely 2.2)."""
    swapped = shapely.transform(box(150.0, -30.01, 150.01, -30.0), lambda xy: xy[:, ::-1])
    gdf = frame([swapped], rid=[7])
    with pytest.raises(SiteError) as info:
        load_sites(gdf)
    message = str(info.value)
    assert "shapely.ops" not in message
    # The suggested fixes run as written and give lon/lat sites.
    one = message.split("e.g. ")[1].split(", or for")[0]
    assert one == "shapely.transform(geometry, lambda xy: xy[:, ::-1])"
    fixed = eval(one, {"shapely": shapely, "geometry": swapped})
    assert Site(7, None, fixed).geometry.bounds[0] == 150.0
    many = message.split("for a GeoDataFrame ")[1]
    exec(many, {"shapely": shapely, "gdf": gdf})
    assert load_sites(gdf)[0].geometry.bounds[0] == 150.0
    reproject = r"look projected.*GeoSeries\.set_crs\(.*\)\.to_crs\('EPSG:4326'\)"
    with pytest.raises(SiteError, match=reproject) as info:
        Site(1, None, box(500_000, 7_500_000, 501_000, 7_501_000))
    assert "shapely.ops" not in str(info.value)
