"""The original notebook's code, with only its imports changed, on the sample data."""

from __future__ import annotations

import pickle

import imageio.v3 as iio
import numpy as np
import pytest
import shapely

import xembed
from xembed import compat
from xembed.compat import (
    ALPHA_EMBEDDINGS,
    EMBEDDING_BANDS,
    EMBEDDING_VIS_DEFAULT,
    EEGeometry,
    export_frames_as_gif,
    export_frames_as_strip,
    get_embedding_image,
    load_sites,
    render_image,
    use_source,
)
from xembed.errors import SourceError
from xembed.grid import project


@pytest.fixture(autouse=True)
def _default_source():
    """Every test starts and ends on the sample (use_source is module state)."""
    use_source("sample")
    yield
    use_source("sample")


@pytest.fixture(scope="module")
def site(sample_root):
    return load_sites(xembed.sources.sample.demo_sites_path())[6]


def test_seed_notebook_runs(tmp_path, capsys, sample_root):
    """The tutorial page, call for call. Changes: the imports, `use_source` instead of
    `ee.Initialize`, the sample's site file, `sites[6]` (the sample's rid 3107; the
    notebook's file had it first) and `outputs` under tmp_path."""
    outputs = tmp_path / "outputs"

    # --- Extracting Embedding Values
    use_source("sample")  # was: ee.Authenticate(); ee.Initialize(project='...')
    sites = load_sites(xembed.sources.sample.demo_sites_path())
    site = sites[6]
    print(site)
    assert capsys.readouterr().out == "Site(id=3107, start_year=2016)\n"

    df = site.extract_continuous(
        ALPHA_EMBEDDINGS,
        start_date="2020-01-01",
        end_date="2023-12-31",
        reducer="mean",
        frequency="yearly",
    )
    print(f"Shape: {df.shape}")
    print("Columns: site_id, year, A00-A63")
    df.head()
    # the notebook's columns, and how much of the site each row stands on (issue 12)
    assert df.shape == (4, 68)
    assert list(df.columns) == ["site_id", "year", "valid_fraction", "valid_ha", *EMBEDDING_BANDS]
    assert df["site_id"].tolist() == [3107] * 4 and df["year"].tolist() == [2020, 2021, 2022, 2023]

    embedding_2023 = df[df["year"] == 2023][EMBEDDING_BANDS].values[0]
    print(f"2023 embedding shape: {embedding_2023.shape}")
    print(f"First 10 values: {embedding_2023[:10]}")
    assert embedding_2023.shape == (64,)
    cube = xembed.open_embeddings(site, [2023])
    assert np.allclose(embedding_2023, xembed.polygon_mean(cube).values[0])

    # --- Visualization
    emb_image = get_embedding_image(site.geometry, 2023)
    img = render_image(
        image=emb_image,
        region=site.geometry.buffer(500).bounds(),
        vis_params=EMBEDDING_VIS_DEFAULT,
        dimensions=400,
        boundary=site.geometry,
        label="Embeddings 2023 (A01/A16/A09)",
    )
    img  # noqa: B018  (the notebook displays it)
    assert max(img.shape[:2]) == 400 and img.shape[2] == 3 and img.dtype == np.uint8
    assert img._repr_png_().startswith(b"\x89PNG")

    band_combos = [
        (["A01", "A16", "A09"], "Default"),
        (["A00", "A32", "A63"], "Spread"),
        (["A05", "A25", "A45"], "Alt"),
    ]
    frames = []
    for bands, name in band_combos:
        vis = {"min": -0.3, "max": 0.3, "bands": bands}
        frame = render_image(
            image=emb_image,
            region=site.geometry.buffer(500).bounds(),
            vis_params=vis,
            dimensions=500,
            boundary=site.geometry,
            label=name,
        )
        frames.append(frame)
    export_frames_as_strip(frames, str(outputs / "embedding_band_combos.png"))
    strip = iio.imread(outputs / "embedding_band_combos.png")
    height, width = frames[0].shape[:2]
    assert strip.shape == (height, 3 * width + 2 * 8, 3)
    assert not np.array_equal(frames[0], frames[1])  # other bands, other colours

    # --- Temporal Comparison
    frames = []
    for year in range(2018, 2025):
        emb_image = get_embedding_image(site.geometry, year)
        frame = render_image(
            image=emb_image,
            region=site.geometry.buffer(500).bounds(),
            vis_params=EMBEDDING_VIS_DEFAULT,
            dimensions=500,
            boundary=site.geometry,
            label=str(year),
        )
        frames.append(frame)
    export_frames_as_strip(frames, str(outputs / "embedding_2018_2024.png"))
    export_frames_as_gif(frames, str(outputs / "embedding_2018_2024.gif"), duration_ms=700)
    assert iio.imread(outputs / "embedding_2018_2024.png").shape == (height, 7 * width + 6 * 8, 3)
    movie = iio.imread(outputs / "embedding_2018_2024.gif", index=None)
    assert movie.shape == (7, height, width, 3)
    assert iio.immeta(outputs / "embedding_2018_2024.gif")["duration"] == 700

    # --- Similarity Analysis
    df = site.extract_continuous(
        ALPHA_EMBEDDINGS,
        start_date="2018-01-01",
        end_date="2024-12-31",
        reducer="mean",
        frequency="yearly",
    )
    years = df["year"].values
    embeddings = df[EMBEDDING_BANDS].values
    similarity_matrix = embeddings @ embeddings.T
    print("Cosine similarity between years:")
    import pandas as pd

    sim_df = pd.DataFrame(similarity_matrix, index=years, columns=years)
    sim_df.round(3)
    assert sim_df.shape == (7, 7) and years.tolist() == list(range(2018, 2025))
    # The notebook's "similarity" is the dot product of means (diagonal < 1);
    # xembed names it and offers the cosine.
    raw = xembed.similarity_matrix(xembed.open_embeddings(site, years), normalize=False)
    assert np.allclose(similarity_matrix, raw.values)
    assert (np.diag(similarity_matrix) < 1).all()


def test_render_image_matches_a_buffered_cube(site, monkeypatch):
    """The context view through compat equals render() on a cube opened with the same window."""
    region = site.geometry.buffer(500).bounds()
    frame = render_image(get_embedding_image(site.geometry, 2022), region=region, dimensions=None)
    cube = xembed.open_embeddings(region.shapely, [2022], clip=False)
    assert np.array_equal(
        frame, xembed.render.render(cube, boundary=False, label=False, dimensions=None)
    )
    # A region inside the image's window is cut out of it, no new read.
    image = get_embedding_image(site.geometry, 2022)
    opened = []
    monkeypatch.setattr(compat.notebook, "open_with_source", lambda *a, **k: opened.append(a))
    inner = site.geometry.buffer(-50).bounds()
    small = render_image(image, region=inner, dimensions=None)
    assert opened == []
    assert small.shape[0] < frame.shape[0] - 100


def test_get_embedding_image(site):
    img = get_embedding_image(site.geometry, 2023, bands=["A01", "A16", "A09"])
    assert img.sizes["year"] == 1 and [str(b) for b in img.band.values] == ["A01", "A16", "A09"]
    assert int(img.attrs["clipped"]) == 0  # an Earth Engine image is not clipped
    same = get_embedding_image(site.geometry.shapely, 2023)
    assert same.sizes["band"] == 64 and same.rio.crs == img.rio.crs
    assert get_embedding_image(site, 2023).attrs["site_id"] == "3107"
    with pytest.raises(ValueError, match="before the collection, which starts in 2017"):
        get_embedding_image(site.geometry, 2016)
    with pytest.raises(ValueError, match=r"unknown band names \['B4'\]"):
        get_embedding_image(site.geometry, 2023, bands=["B4"])


def test_extract_continuous_errors(site):
    with pytest.raises(ValueError, match=r"frequency='monthly' is not supported.*'yearly'"):
        site.extract_continuous(ALPHA_EMBEDDINGS, "2020-01-01", "2021-01-01", frequency="monthly")
    with pytest.raises(ValueError, match="before the collection, which starts in 2017"):
        site.extract_continuous(ALPHA_EMBEDDINGS, "2015-01-01", "2020-12-31")
    with pytest.raises(ValueError, match="no annual image between"):
        site.extract_continuous(ALPHA_EMBEDDINGS, "2020-02-01", "2020-12-31")
    with pytest.raises(ValueError, match="is not after start_date"):
        site.extract_continuous(ALPHA_EMBEDDINGS, "2021-01-01", "2020-01-01")
    with pytest.raises(ValueError, match="not a date"):
        site.extract_continuous(ALPHA_EMBEDDINGS, "last year", "2020-01-01")
    with pytest.raises(ValueError, match="collection 'COPERNICUS/S2' is not supported"):
        site.extract_continuous("COPERNICUS/S2", "2020-01-01", "2021-01-01")
    with pytest.raises(ValueError, match="reducer 'sum' is not supported"):
        site.extract_continuous(ALPHA_EMBEDDINGS, "2020-01-01", "2021-01-01", reducer="sum")
    with pytest.raises(ValueError, match=r"years \[2025\] are not in source"):
        site.extract_continuous(ALPHA_EMBEDDINGS, "2024-01-01", "2025-06-01")
    with pytest.raises(TypeError):
        site.extract_continuous(ALPHA_EMBEDDINGS, "2020-01-01", "2021-01-01", scale=10)


def test_extract_continuous_dates_and_reducers(site):
    # [start, end) on the images' 1 January dates, as Earth Engine's filterDate.
    df = compat.extract_continuous(site, ALPHA_EMBEDDINGS, "2020-01-01", "2022-01-01")
    assert df["year"].tolist() == [2020, 2021]
    import datetime

    df = site.extract_continuous(
        ALPHA_EMBEDDINGS, datetime.date(2019, 6, 1), "2021-01-02", reducer="median"
    )
    assert df["year"].tolist() == [2020, 2021]
    cube = xembed.open_embeddings(site, [2020, 2021])
    expected = xembed.polygon_mean(cube, reducer="median").values
    assert np.allclose(df[EMBEDDING_BANDS].values, expected)
    plain = xembed.Site(site.id, site.start_year, site.geometry.shapely)
    assert compat.extract_continuous(plain, ALPHA_EMBEDDINGS, "2020-01-01", "2020-12-31").shape == (
        1,
        68,
    )


def test_render_image_errors(site):
    img = get_embedding_image(site.geometry, 2023, bands=["A01", "A16", "A09"])
    with pytest.raises(ValueError, match=r"keys \['palette'\] are not supported"):
        render_image(img, vis_params={"min": 0, "max": 1, "palette": ["red", "blue"]})
    with pytest.raises(ValueError, match=r"bands \['A00', 'A02'\] are not in the image"):
        render_image(img, vis_params={"bands": ["A00", "A01", "A02"]})
    with pytest.raises(ValueError, match="needs three bands"):
        render_image(img, vis_params={"bands": ["A01"]})
    with pytest.raises(ValueError, match="dimensions='400x300' is not supported"):
        render_image(img, dimensions="400x300")
    two = xembed.open_embeddings(site, [2022, 2023])
    with pytest.raises(ValueError, match=r"holds the years \[2022, 2023\]"):
        render_image(two)
    with pytest.raises(TypeError, match="image must be a cube"):
        render_image(img.embeddings)
    # vis_params as Earth Engine also writes them: comma strings; missing keys from the default.
    a = render_image(img, vis_params={"bands": "A01,A16,A09", "min": "-0.3", "max": 0.3})
    assert np.array_equal(a, render_image(img, vis_params=None))
    assert max(render_image(img, dimensions="120").shape[:2]) == 120


def test_ee_geometry(site):
    g = site.geometry
    assert isinstance(g, EEGeometry) and isinstance(site, xembed.Site)
    # shapely's tuple, and Earth Engine's callable bounds() rectangle
    minx, miny, maxx, maxy = g.bounds
    assert g.bounds == g.shapely.bounds
    rect = g.bounds()
    assert isinstance(rect, EEGeometry) and rect.equals(shapely.box(minx, miny, maxx, maxy))
    # buffer in metres, in the UTM zone
    utm = xembed.grid.utm_crs(g.shapely)
    near = project(g.shapely, "EPSG:4326", utm)
    far = project(g.buffer(500).shapely, "EPSG:4326", utm)
    assert far.hausdorff_distance(near) == pytest.approx(500, abs=1)
    assert far.area == pytest.approx(near.buffer(500).area, rel=1e-3)
    assert g.buffer(-10).area < g.area
    # everything else is shapely's, with EEGeometry arguments unwrapped
    assert g.wkt == g.shapely.wkt and g.geom_type == "Polygon"
    assert g.intersects(rect) and g.within(g.buffer(1)) and str(g) == g.wkt
    assert shapely.geometry.shape(g).equals(g.shapely)
    assert g == g.shapely and g == EEGeometry(g.shapely) and hash(g) == hash(g.shapely)
    assert pickle.loads(pickle.dumps(site)) == site
    with pytest.raises(AttributeError, match="immutable"):
        g.foo = 1
    with pytest.raises(ValueError, match=r"buffer\(proj=\.\.\.\) is not supported"):
        g.buffer(500, proj="EPSG:4326")
    with pytest.raises(TypeError, match="number of metres"):
        g.buffer("far")
    # the core accepts compat sites and their geometries
    assert xembed.sites.as_site(site) is site
    assert xembed.open_embeddings(g, [2020]).attrs["site_geometry_wkt"] == g.wkt


def test_use_source(tmp_path, site):
    assert compat.current_source() == {"source": "sample"}
    with use_source(tmp_path, chunks=64):
        assert compat.current_source() == {"source": str(tmp_path), "chunks": 64}
        with pytest.raises(SourceError):  # an empty folder is no mirror
            get_embedding_image(site.geometry, 2020)
    assert compat.current_source() == {"source": "sample"}
    with pytest.raises(SourceError, match="unknown source 'gcs'"):
        use_source("gcs")
    with pytest.raises(TypeError, match=r"unknown options \['token'\]"):
        use_source("ee", token="x")
    with pytest.raises(TypeError, match="project= is only for source='ee'"):
        use_source("cog", project="p")
    assert repr(use_source("ee", project="p")) == "use_source('ee', project='p')"
