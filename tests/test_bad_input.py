"""The bad-input catalogue (issue 6, part 5): one test per row.

Each row checks the error's type and that its message names the input (the
file, the site id, the value) and says what to do about it. The rows, and the
decisions where there was a choice:

- empty / unreadable site files, features without geometry: ``SiteError`` at
  ``load_sites`` (a 0-byte file is called empty, not "unrecognised");
- invalid polygons: repaired with ``shapely.make_valid`` and a ``UserWarning``
  when some area is left, else ``SiteError``;
- wrong CRS: what the numbers prove is caught at ``load_sites``/``Site``
  (projected metres, (lat, lon) pairs with a latitude past 90, 0..360
  longitudes); a (lat, lon) site whose values are all valid lon/lat is caught
  by the source's footprint at ``open_embeddings`` (``DataNotFoundError``
  saying the coordinates look swapped when the swapped site is covered, else
  to check the CRS and lon/lat order);
- sites wider than one UTM zone (6 degrees of longitude) or needing more pixels
  than one Earth Engine image, antimeridian-crossing and polar (beyond 80 S /
  84 N) sites: ``SiteError`` when the grid is chosen, telling how to split or
  clip them (cubes across 180 degrees and UPS grids are not supported);
- sites with no pixel: a point is a ``SiteError`` (buffer it); a sliver whose
  coverage is 0 in every pixel is a ``SiteError`` at open; a site smaller than
  one pixel is fine: a cube whose pixels have fractional coverage;
- duplicate ids, years, band names, source names, mirror folders and indexes:
  ``SiteError``, ``ValueError``, ``ValueError``/``SchemaError``,
  ``SourceError``, ``SourceError``;
- (issue 12) NaN vertices, unknown GeoJSON geometry types, Feature properties
  that are not objects, CSV tables, ids equal as text (``1`` and ``"1"``) and
  ids holding a NUL character: ``SiteError`` at ``load_sites`` naming the
  site, feature or file (NUL is refused rather than warned: GDAL and files cut
  the id there, so results would come back under another id); years that are
  not whole numbers, text or bytes: ``ValueError`` (never truncated).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import Point, Polygon, box, mapping

import xembed
from tests.conftest import YEARS
from xembed.errors import DataNotFoundError, SchemaError, SiteError, SourceError
from xembed.grid import target_grid
from xembed.schema import last_possible_year, validate_cube
from xembed.sites import Site, as_site, load_sites
from xembed.sources.common import normalize_years
from xembed.testing import make_cube

# Inside zone 22S's image of the mini mirror (conftest.mirror_images), ~200 x 110 m.
INSIDE = box(-48.0030, -22.6010, -48.0010, -22.6000)
# A Brazilian restoration site (Atlantic Forest, Sao Paulo) and one in New South Wales.
BRAZIL = box(-48.0, -22.6, -47.99, -22.59)
AUSTRALIA = box(150.0, -30.01, 150.01, -30.0)


def swap_xy(geometry: Any) -> Any:
    """The geometry with x and y exchanged: (lon, lat) written as (lat, lon)."""
    return shapely.transform(geometry, lambda xy: xy[:, ::-1])


def write_features(path: Path, features: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def feature(geometry: Any, **properties: Any) -> dict[str, Any]:
    geom = None if geometry is None else mapping(geometry)
    return {"type": "Feature", "properties": properties, "geometry": geom}


@pytest.fixture(scope="module")
def root(mini_mirror: tuple[Path, pd.DataFrame]) -> Path:
    return mini_mirror[0]


# ------------------------------------------------------------------ site files


def test_empty_site_file(tmp_path: Path) -> None:
    zero = tmp_path / "zero.geojson"
    zero.touch()
    with pytest.raises(SiteError, match=r"'.*zero\.geojson' is empty \(0 bytes\).*write the file"):
        load_sites(zero)
    empty = write_features(tmp_path / "empty.geojson", [])
    with pytest.raises(
        SiteError, match=r"empty\.geojson contains no features; expected at least one .*layer="
    ):
        load_sites(empty)
    with pytest.raises(SiteError, match=r"GeoDataFrame contains no features.*non-empty"):
        load_sites(gpd.GeoDataFrame(geometry=[], crs="EPSG:4326"))


def test_unreadable_site_file(tmp_path: Path) -> None:
    truncated = tmp_path / "cut.geojson"
    truncated.write_text('{"type": "FeatureCollection", "features": [{"type": "Feat')
    with pytest.raises(
        SiteError, match=r"cannot read sites from '.*cut\.geojson': .*xembed reads GeoJSON"
    ):
        load_sites(truncated)
    with pytest.raises(FileNotFoundError, match=r"No site file at '.*nope\.gpkg'; expected"):
        load_sites(tmp_path / "nope.gpkg")


def test_features_without_geometry(tmp_path: Path) -> None:
    feats = [feature(BRAZIL, rid=1), feature(None, rid=12), feature(None, rid=13)]
    path = write_features(tmp_path / "nulls.geojson", feats)
    with pytest.raises(
        SiteError, match=r"nulls\.geojson: sites 12, 13 have no geometry .*drop them first"
    ):
        load_sites(path)


def test_invalid_polygons_are_repaired_or_rejected(tmp_path: Path) -> None:
    bowtie = Polygon([(-48.0, -22.6), (-47.99, -22.59), (-47.99, -22.6), (-48.0, -22.59)])
    path = write_features(tmp_path / "bow.geojson", [feature(bowtie, rid=3107)])
    with pytest.warns(
        UserWarning,
        match=r"site 3107: invalid geometry \(Self-intersection.*repaired with "
        r"shapely\.make_valid; check the result, or fix the polygon in the site file",
    ):
        [site] = load_sites(path)
    assert site.geometry.is_valid and site.geometry.area == pytest.approx(2 * bowtie.buffer(0).area)
    collinear = Polygon([(-48.0, -22.6), (-47.99, -22.6), (-47.98, -22.6), (-48.0, -22.6)])
    with pytest.raises(
        SiteError, match=r"site 5: invalid geometry .*no area left.*fix its vertices.*or drop"
    ):
        load_sites(gpd.GeoDataFrame({"rid": [5]}, geometry=[collinear], crs="EPSG:4326"))


# ------------------------------------------------------------------ wrong CRS


def test_lonlat_swapped_beyond_90_is_caught_when_loading() -> None:
    gdf = gpd.GeoDataFrame({"rid": [7]}, geometry=[swap_xy(AUSTRALIA)], crs="EPSG:4326")
    with pytest.raises(
        SiteError,
        match=r"GeoDataFrame is declared EPSG:4326 .*site 7 has coordinates beyond.*look swapped, "
        r"\(lat, lon\) instead of \(lon, lat\); swap them",
    ):
        load_sites(gdf)
    with pytest.raises(SiteError, match=r"site 0: coordinates .* look swapped.*swap them"):
        as_site(swap_xy(AUSTRALIA))


def test_lonlat_swapped_within_range_is_caught_by_the_footprint(root: Path) -> None:
    # (-22.6, -48) is a valid lon/lat, in the South Atlantic: only the data can tell.
    swapped = Site(3107, None, swap_xy(INSIDE))
    with pytest.raises(
        DataNotFoundError,
        match=r"no embedding files .* cover the site.*Site 3107 lies outside every file, but "
        r"with its x and y swapped it lies inside: .*\(lat, lon\) pairs",
    ):
        xembed.open_embeddings(swapped, YEARS, source=root)
    # Elsewhere, and not inside when swapped either: check the CRS and the axis order.
    germany = Site("de", None, box(10.0, 50.0, 10.01, 50.01))
    with pytest.raises(
        DataNotFoundError, match=r"Site 'de' lies outside every file.*check its CRS.*lon/lat order"
    ):
        xembed.open_embeddings(germany, YEARS, source=root)


def test_projected_coordinates_declared_epsg4326(tmp_path: Path) -> None:
    utm = gpd.GeoSeries([BRAZIL], crs="EPSG:4326").to_crs("EPSG:32722")[0]
    path = write_features(tmp_path / "utm.geojson", [feature(utm, rid=3107)])  # no "crs"
    with pytest.raises(
        SiteError,
        match=r"utm\.geojson is declared EPSG:4326 \(lon/lat degrees\) but site 3107 has "
        r"coordinates beyond ±180/±90: they look projected \(metres\).*set_crs\(",
    ):
        load_sites(path)
    with pytest.raises(SiteError, match=r"site 0: coordinates .*look projected.*reproject"):
        xembed.open_embeddings(utm, YEARS)


# ------------------------------------------------------------------ extent


def test_polygon_wider_than_a_utm_zone(root: Path) -> None:
    wide = Site("wide", None, box(-52.0, -23.0, -44.5, -22.99))
    with pytest.raises(
        SiteError,
        match=r"site 'wide': the site spans 7\.5° of longitude \(-52\.\.-44\.5\), more than one "
        r"UTM zone \(6°\).*split the site into parts at most 6° wide",
    ):
        xembed.open_embeddings(wide, YEARS, source=root)
    # Narrower than a zone but bigger than one Earth Engine image: absurd, split it too.
    with pytest.raises(
        SiteError, match=r"grid of \d+ x \d+ pixels .*more than the 268,435,456.*split the site"
    ):
        target_grid(box(-51.0, -25.0, -49.0, -23.0))


def test_antimeridian_site(root: Path) -> None:
    # A Fijian site drawn across 180 degrees: shapely reads it as going round the globe.
    fiji = Site("fj", None, Polygon([(179.9, -17), (-179.9, -17), (-179.9, -16.9), (179.9, -16.9)]))
    with pytest.raises(
        SiteError,
        match=r"site 'fj': the site spans longitudes -179\.9\.\.179\.9 .*crosses the antimeridian "
        r"\(180°\).*split the site there and open each side",
    ):
        xembed.open_embeddings(fiji, YEARS, source=root)
    # The same site in 0..360 longitudes.
    with pytest.raises(
        SiteError, match=r"site 'fj': .*0\.\.360 degree longitudes; subtract 360.*antimeridian"
    ):
        Site("fj", None, box(179.9, -17.0, 180.1, -16.9))


@pytest.mark.parametrize(
    ("polygon", "where"),
    [(box(10.0, 84.5, 11.0, 85.0), r"85°N"), (box(0.0, -85.0, 1.0, -84.5), r"85°S")],
)
def test_polar_site(root: Path, polygon: Polygon, where: str) -> None:
    with pytest.raises(
        SiteError,
        match=rf"site 'pole': the site reaches {where}, beyond the latitudes of UTM zones "
        r"\(80°S to 84°N\): polar sites need UPS .*not support.*published by UTM zone.*clip",
    ):
        xembed.open_embeddings(Site("pole", None, polygon), YEARS, source=root)


def test_sites_with_zero_pixels(root: Path) -> None:
    with pytest.raises(SiteError, match=r"site 0: geometry is a Point.*buffer points"):
        xembed.open_embeddings(Point(-48.002, -22.6005), YEARS, source=root)
    # A valid polygon 1e-14 degrees wide: no pixel gets any coverage.
    sliver = Site("sliver", None, box(-48.002, -22.601, -48.002 + 1e-14, -22.600))
    assert sliver.geometry.is_valid
    with pytest.raises(
        SiteError,
        match=r"site 'sliver' covers no 10 m pixel: its coverage is 0 in every pixel of its "
        r"12 x 1 grid.*buffer it by a few metres",
    ):
        xembed.open_embeddings(sliver, YEARS, source=root)
    # Smaller than a pixel is not an error: a cube of partly covered pixels.
    x, y = INSIDE.centroid.x, INSIDE.centroid.y
    tiny = xembed.open_embeddings(box(x, y, x + 2e-5, y + 2e-5), YEARS, source=root)
    assert 0 < float(tiny.coverage.sum()) < 0.1
    assert np.isfinite(tiny.embed.polygon_mean().values).all()


def test_duplicate_site_ids(tmp_path: Path) -> None:
    gdf = gpd.GeoDataFrame({"rid": [1, 1, 2]}, geometry=[BRAZIL] * 3, crs="EPSG:4326")
    with pytest.raises(
        SiteError,
        match=r"duplicate site ids 1 in column 'rid' of GeoDataFrame; ids must be unique: "
        r"renumber or drop the duplicates, or pass id_field=",
    ):
        load_sites(gdf)
    feats = [dict(feature(BRAZIL), id=5), dict(feature(BRAZIL), id=5)]
    with pytest.raises(
        SiteError, match=r"duplicate site ids 5 in GeoJSON Feature 'id' of '?.*dups\.geojson"
    ):
        load_sites(write_features(tmp_path / "dups.geojson", feats))


# Issue 12, "hostile input that slips through": the site rows.

NAN_RING = [(-48.0, -22.6), (-47.99, float("nan")), (-47.99, -22.59), (-48.0, -22.6)]


def test_nan_vertex(tmp_path: Path, root: Path) -> None:
    nan_polygon = {"type": "Polygon", "coordinates": [[list(xy) for xy in NAN_RING]]}
    fc = {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "properties": {"rid": 5}, "geometry": nan_polygon}],
    }
    fix = r"coordinates contain NaN \(a vertex without a value.*\); fix or remove that vertex"
    with pytest.raises(SiteError, match=r"GeoJSON mapping: site 5: " + fix):
        load_sites(fc)
    path = tmp_path / "nan.geojson"
    path.write_text(json.dumps(fc))  # json writes the NaN as NaN, which GDAL reads
    with pytest.raises(SiteError, match=r"nan\.geojson: site 5: " + fix):
        load_sites(path)
    with pytest.raises(SiteError, match=r"nan\.geojson: site 5: " + fix):
        xembed.extract(path, YEARS, source=root, progress=False)
    with pytest.warns(RuntimeWarning):  # shapely's own, building the polygon
        polygon = Polygon(NAN_RING)
    with pytest.raises(SiteError, match=r"^site 'p': " + fix):
        Site("p", None, polygon)
    with pytest.raises(SiteError, match=r"^site 'p': coordinates contain infinite values"):
        Site("p", None, Polygon([(-48.0, -22.6), (-47.99, float("inf")), (-47.99, -22.59)]))


def test_unknown_geojson_geometry_type_and_list_properties(tmp_path: Path) -> None:
    circle = {"type": "Circle", "coordinates": [-48.0, -22.6], "radius": 30}
    fc = {
        "type": "FeatureCollection",
        "features": [feature(BRAZIL, rid=1), {**feature(None, rid=2), "geometry": circle}],
    }
    with pytest.raises(
        SiteError,
        match=r"GeoJSON mapping: feature 1: geometry type 'Circle' is not a GeoJSON geometry "
        r"type; expected a Polygon or MultiPolygon",
    ):
        load_sites(fc)
    with pytest.raises(SiteError, match=r"feature 0 \(id 'c'\): geometry type 'Circle'"):
        as_site({**feature(None), "id": "c", "geometry": circle})
    # GDAL reads the unknown type as no geometry (and says so): the site and file are named.
    with (
        pytest.warns(RuntimeWarning, match=r"Unsupported geometry type"),
        pytest.raises(SiteError, match=r"circle\.geojson: site 2 has no geometry"),
    ):
        load_sites(write_features(tmp_path / "circle.geojson", fc["features"]))
    listed = {**feature(BRAZIL), "properties": [["rid", 1]]}
    with pytest.raises(
        SiteError,
        match=r"GeoJSON mapping: feature 0: properties is a list; expected a JSON object "
        r"\(mapping\) of attributes, or null",
    ):
        load_sites({"type": "FeatureCollection", "features": [listed]})


def test_csv_site_files(tmp_path: Path) -> None:
    wkt = tmp_path / "plots.csv"
    wkt.write_text(f'rid,geometry\n1,"{BRAZIL.wkt}"\n')
    with pytest.raises(
        SiteError,
        match=r"'.*plots\.csv' has no geometries GDAL can read \(a CSV table\?\); xembed "
        r"needs polygons with a CRS: its column 'geometry' looks like WKT: df = pd\.read_csv",
    ) as info:
        load_sites(wkt)
    # The suggested code builds a frame load_sites reads.
    code = str(info.value).split("looks like WKT: ")[1].split(" (give the CRS")[0]
    scope = {"pd": pd, "gpd": gpd, "path": wkt}
    exec(code.replace("; ", "\n"), scope)
    assert [s.id for s in load_sites(scope["gdf"])] == [1]
    plain = tmp_path / "table.csv"
    plain.write_text("rid,lon,lat\n1,-48.0,-22.6\n")
    with pytest.raises(
        SiteError, match=r"'.*table\.csv' has no geometries GDAL can read \(a CSV table\?\).*"
    ):
        load_sites(plain)


def test_ids_equal_as_text(tmp_path: Path, root: Path) -> None:
    same = (
        r"site ids 1 and '1' .*are the same as text \(or repeated\); give every site its own "
        r"id \(load_sites\(\.\.\., id_field=\.\.\.\) picks the column\)"
    )
    feats = [dict(feature(BRAZIL), id=1), dict(feature(AUSTRALIA), id="1")]
    with pytest.raises(SiteError, match=same):
        load_sites(write_features(tmp_path / "mixed.geojson", feats))
    frame = gpd.GeoDataFrame(
        {"rid": pd.Series([1, "1"], dtype=object)}, geometry=[BRAZIL, AUSTRALIA], crs=4326
    )
    with pytest.raises(SiteError, match=same):
        load_sites(frame)
    # extract says the same of Sites built one by one.
    sites = [Site(1, None, INSIDE), Site("1", None, INSIDE)]
    with pytest.raises(ValueError, match=same):
        xembed.extract(sites, YEARS, source=root, progress=False)


def test_id_holding_a_nul_character(tmp_path: Path) -> None:
    # Refused, not warned: GDAL and every C string cut the id at the NUL, so the
    # site would be written back under another id ('plot') and mis-join.
    nul = r"site id 'plot\\x00A' contains a NUL character \('\\x00'\).*remove it"
    with pytest.raises(SiteError, match=r"nul\.geojson: row 0: " + nul):
        load_sites(write_features(tmp_path / "nul.geojson", [feature(BRAZIL, rid="plot\x00A")]))
    feats = [dict(feature(BRAZIL), id="plot\x00A")]
    with pytest.raises(SiteError, match=nul):
        load_sites(write_features(tmp_path / "nulid.geojson", feats))
    with pytest.raises(SiteError, match=nul):
        Site("plot\x00A", None, BRAZIL)
    with pytest.raises(SiteError, match=nul):
        load_sites(gpd.GeoDataFrame({"rid": ["plot\x00A"]}, geometry=[BRAZIL], crs=4326))


# ------------------------------------------------------------------ arguments and sources


def test_years_before_2017_or_in_the_future(root: Path) -> None:
    future = last_possible_year() + 1
    for years in ([2016, 2019], [future]):
        with pytest.raises(
            ValueError,
            match=rf"years \[{years[0]}\] are outside the collection, which starts in 2017 "
            rf"and cannot go past {future - 1}; pass years from 2017 on",
        ):
            xembed.open_embeddings(INSIDE, years, source=root)
    # In the collection's range but not in this source.
    with pytest.raises(
        ValueError, match=r"years \[2018\] are not in source 'cog' .*available years: \[2019, 20"
    ):
        xembed.open_embeddings(INSIDE, [2018, 2019], source=root)


@pytest.mark.parametrize(
    ("years", "match"),
    [
        ([2020.5], r"years \[2020\.5\] hold 2020\.5, which is not a whole number"),
        (
            np.array([2019.5]),
            r"years array\(\[2019\.5\]\) hold 2019\.5, which is not a whole number",
        ),
        ([b"2020"], r"years \[b'2020'\] hold b'2020', which is bytes, not a number"),
        ("2020", r"years '2020' is a str, not a number"),
        ([2020, "2021"], r"years \[2020, '2021'\] hold '2021', which is a str, not a number"),
    ],
)
def test_years_that_are_not_integers(root: Path, years: Any, match: str) -> None:
    fix = r"; years are integers, e.g\. 2020, \[2018, 2020\] or range\(2018, 2025\)"
    with pytest.raises(ValueError, match=match + fix):
        normalize_years(years)
    with pytest.raises(ValueError, match=match):
        xembed.open_embeddings(INSIDE, years, source=root)
    # Whole numbers of any numeric type are years.
    assert normalize_years(np.array([2019.0, 2020.0])) == (2019, 2020)


def test_unknown_band_names(root: Path) -> None:
    ds = xembed.open_embeddings(INSIDE, YEARS, source=root)
    with pytest.raises(
        ValueError, match=r"three band names from A00\.\.A63, got \['A01', 'B16', 'A09'\] .*'B16'"
    ):
        ds.embed.rgb(("A01", "B16", "A09"))
    cube = make_cube(shape=(4, 4))
    renamed = cube.assign_coords(band=["B16", *xembed.BANDS[1:]])
    with pytest.raises(
        SchemaError,
        match=r"unknown band names \['B16'\] in the 'band' coordinate; expected names from "
        r"A00\.\.A63.*ds\.sel\(band=",
    ):
        validate_cube(renamed)


def test_unknown_source_name() -> None:
    with pytest.raises(
        SourceError,
        match=r"unknown source 'landsat'; expected one of \['sample', 'cog', 'ee'\] or the "
        r"path of a local mirror folder",
    ):
        xembed.open_embeddings(INSIDE, YEARS, source="landsat")


def test_mirror_folder_without_index(tmp_path: Path) -> None:
    (tmp_path / "2019" / "22S").mkdir(parents=True)
    with pytest.raises(
        SourceError,
        match=r"no aef_index\.parquet or aef_index\.csv in '.*'; a mirror folder needs the index",
    ):
        xembed.open_embeddings(INSIDE, YEARS, source=tmp_path)
    with pytest.raises(SourceError, match=r"mirror folder '.*missing' does not exist"):
        xembed.open_embeddings(INSIDE, YEARS, source=tmp_path / "missing")


def test_index_without_required_columns(
    tmp_path: Path, mini_mirror: tuple[Path, pd.DataFrame]
) -> None:
    _, table = mini_mirror
    table.drop(columns=["utm_zone", "crs"]).to_parquet(tmp_path / "aef_index.parquet")
    with pytest.raises(
        SourceError,
        match=r"mirror index '.*aef_index\.parquet' lacks the columns \['crs', 'utm_zone'\]; "
        r"expected \['path', .*use the mirror's aef_index\.parquet unchanged",
    ):
        xembed.open_embeddings(INSIDE, YEARS, source=tmp_path)
    (tmp_path / "aef_index.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(SourceError, match=r"could not read the mirror index '.*aef_index\.parq"):
        xembed.open_embeddings(INSIDE, YEARS, source=tmp_path)


# ------------------------------------------------------------------ hostile indexes (issue 12)


def hostile_index(folder: Path, mini_mirror: Any, column: str, values: Any) -> Path:
    """A copy of the mini mirror whose index has ``column`` replaced by ``values``."""
    root, table = mini_mirror
    shutil.copytree(root, folder)
    table.assign(**{column: values}).to_parquet(folder / "aef_index.parquet")
    return folder


def _first(value: Any, column: pd.Series) -> list[Any]:
    return [value, *column[1:]]


@pytest.mark.parametrize(
    ("column", "hostile", "message"),
    [
        pytest.param(
            "geometry",
            lambda t: _first(b"not a geometry", t["geometry"]),
            r"column 'geometry' holds b'not a geometry' in row 0, not a WKB footprint polygon",
            id="geometry-garbage",
        ),
        pytest.param(
            "utm_west",
            lambda t: t["utm_west"].astype(str),
            r"column 'utm_west' holds '\d+\.0' \(text\) in row 0 \(and 15 more rows\), not a "
            "number",
            id="utm_west-text",
        ),
        pytest.param(
            "year",
            lambda t: _first("abc", t["year"].astype(str)),
            r"column 'year' holds 'abc' \(text\) in row 0 \(and 15 more rows\), not a whole "
            r"number \(years are integers such as 2024\)",
            id="year-abc",
        ),
        pytest.param(  # refused, not truncated to 2020
            "year",
            lambda t: t["year"].astype(float).where(t["year"] != 2020, 2020.7),
            r"column 'year' holds 2020\.7 in row \d+ \(and 7 more rows\), not a whole number "
            r"\(years are integers such as 2024\)",
            id="year-2020.7",
        ),
    ],
)
def test_index_with_hostile_columns(
    tmp_path: Path, mini_mirror: tuple[Path, pd.DataFrame], column, hostile, message
) -> None:
    mirror = hostile_index(tmp_path / "m", mini_mirror, column, hostile(mini_mirror[1]))
    with pytest.raises(
        SourceError,
        match=rf"mirror index '.*aef_index\.parquet': {message}; use the mirror's aef_index",
    ):
        xembed.open_embeddings(INSIDE, YEARS, source=mirror)


@pytest.mark.parametrize("absolute", [False, True], ids=["dot-dot", "absolute"])
def test_index_paths_leaving_the_mirror_folder_are_refused(
    tmp_path: Path, mini_mirror: tuple[Path, pd.DataFrame], absolute: bool
) -> None:
    root, table = mini_mirror
    outside = tmp_path / "outside"
    outside.mkdir()
    for path in table["path"]:  # the files exist there: today they are read
        shutil.copy(root / path, outside / Path(path).name)
    prefix = f"{outside}/" if absolute else "../outside/"
    escaping = [prefix + Path(p).name for p in table["path"]]
    mirror = hostile_index(tmp_path / "mirror", mini_mirror, "path", escaping)
    with pytest.raises(
        SourceError,
        match=r"the index of mirror '.*mirror' lists the file '.*outside/img22.*\.tiff' "
        r"\(year 20\d\d\), which lies outside the mirror folder",
    ):
        xembed.open_embeddings(INSIDE, YEARS, source=mirror)
