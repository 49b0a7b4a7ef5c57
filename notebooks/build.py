"""Write the tutorial notebooks and execute them in place (outputs stored).

Run from the project root: ``.venv/bin/python notebooks/build.py``. The
test suite executes the stored notebooks again (tests/test_notebooks.py), so
a notebook that stops working fails the build.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).parent

QUICKSTART = [
    (
        "md",
        """# xembed quickstart: from your site file to files for GIS

xembed reads Google's AlphaEarth satellite embeddings (64 numbers per 10 m
pixel and year, 2017 onwards) for the places you care about, as lazy xarray
cubes. This notebook goes the whole way once: a site file, the embeddings of
the site, what changed between years, pictures, and an export you can open in
QGIS or hand to a colleague.

It runs on the **sample** that ships with xembed (a few km² of synthetic land
in the real data's format), so it needs no account and no internet. For the
real data, pass `source="cog"` (the public mirror, no account) or
`source="ee"` (Earth Engine) to `open_embeddings`; nothing else changes.""",
    ),
    (
        "md",
        """## Your site

Sites come from a GeoJSON, GeoPackage or shapefile of polygons, or a
GeoDataFrame; an id column (here `site_id`) names each site, and an optional
`start_year` column says when something started there (a restoration, a
harvest). Here we write a one-field file on the sample's land; point
`load_sites` at your own file instead.""",
    ),
    (
        "code",
        """import json
from pathlib import Path

import xembed

my_sites = {
    "type": "FeatureCollection",
    "features": [{
        "type": "Feature",
        "properties": {"site_id": "north-field", "start_year": 2018},
        "geometry": {"type": "Polygon", "coordinates": [[
            [-48.01420, -22.61201], [-48.01119, -22.61219], [-48.01104, -22.60795],
            [-48.01401, -22.60777], [-48.01420, -22.61201],
        ]]},
    }],
}
Path("outputs").mkdir(exist_ok=True)
Path("outputs/my_sites.geojson").write_text(json.dumps(my_sites, indent=1))

sites = xembed.load_sites("outputs/my_sites.geojson", id_field="site_id")
site = sites[0]
site""",
    ),
    ("md", "## The embeddings of the site"),
    (
        "code",
        """ds = xembed.open_embeddings(site, range(2017, 2025))  # lazy: nothing is read yet
ds""",
    ),
    (
        "md",
        """`embeddings(year, band, y, x)` holds the 64 bands `A00`..`A63` of every
pixel, NaN outside the polygon; `coverage(y, x)` is the share of each pixel
inside it. One row per year of coverage-weighted means:""",
    ),
    (
        "code",
        """df = ds.embed.to_frame()
print(f"Shape: {df.shape}")
df.iloc[:, :8].round(4)""",
    ),
    (
        "md",
        """## What changed between years

The cosine similarity of the yearly means: 1 means the site looked the same
(the means are normalised first, so the diagonal is exactly 1;
`normalize=False` gives the raw dot product of the means instead). The
southern third of this field was cleared in 2021: the years before and after
form two blocks.""",
    ),
    (
        "code",
        """means = ds.embed.polygon_mean().compute()
cosine = xembed.similarity_matrix(means)
cosine.to_pandas().round(3)""",
    ),
    (
        "code",
        """xembed.render.plot_similarity_matrix(cosine, title="north-field: years compared")""",
    ),
    (
        "md",
        """Per pixel, against the site's `start_year` (2018): where the field
changed, with the polygon drawn and the pixels that changed by more than 0.2
outlined in cyan; then the changed area per year.""",
    ),
    (
        "code",
        """change = ds.embed.change()
xembed.render.plot_change(change, 2021, boundary=site, threshold=0.2)""",
    ),
    ("code", """ds.embed.change_summary(threshold=0.2).round(3)"""),
    (
        "md",
        """## Pictures: three bands as RGB, with 500 m of context

`buffer=500, clip=False` widens the view around the site; the boundary is
drawn on every frame. A strip and a GIF go to `outputs/`.""",
    ),
    (
        "code",
        """from IPython.display import Image

context = xembed.open_embeddings(site, range(2018, 2025), buffer=500, clip=False)
frames = xembed.render.frames(context.embed.rgb(), boundary=site, dimensions=300)
xembed.render.save_strip(frames, "outputs/north_field_2018_2024.png")
xembed.render.save_gif(frames, "outputs/north_field_2018_2024.gif", duration_ms=700)
Image("outputs/north_field_2018_2024.png")""",
    ),
    (
        "md",
        """Other band combinations, and a PCA composite whose colours are comparable
across years (one projection fitted on all of them):""",
    ),
    (
        "code",
        """combos = [(("A01", "A16", "A09"), "A01/A16/A09"), (("A00", "A32", "A63"), "A00/A32/A63"),
          (("A05", "A25", "A45"), "A05/A25/A45")]
last = context.sel(year=[2024])
band_frames = [
    xembed.render.render(last.embed.rgb(bands), boundary=site, label=name, dimensions=300)
    for bands, name in combos
]
band_frames.append(
    xembed.render.frames(context.embed.pca_rgb(), boundary=site, dimensions=300,
                         label="PCA {year}")[-1]
)
xembed.render.save_strip(band_frames, "outputs/north_field_band_combos.png")
Image("outputs/north_field_band_combos.png")""",
    ),
    (
        "md",
        """## Code that uses `extract_continuous`

If you have scripts built on the Earth Engine AlphaEarth tutorial's
functions (`extract_continuous`, `get_embedding_image`, `render_image`),
`xembed.compat` provides them with the same arguments, on whatever source
`xembed.compat.use_source(...)` selects (the sample by default):""",
    ),
    (
        "code",
        """from xembed.compat import ALPHA_EMBEDDINGS, EMBEDDING_BANDS, extract_continuous

same = extract_continuous(
    site, ALPHA_EMBEDDINGS, start_date="2017-01-01", end_date="2024-12-31",
    reducer="mean", frequency="yearly",
)
print(same[EMBEDDING_BANDS].shape, "identical to to_frame():", same.equals(df))""",
    ),
    (
        "md",
        """## Export

- **Zarr** (or NetCDF) for Python users: the whole cube, CRS and attributes
  included; `xembed.open_cube` opens it back. `quantize=True` stores int8
  (4x smaller) as the variable `embeddings_int8`; `zarr_format=2` makes a
  store older GDAL/QGIS can read.
- **Cloud-Optimized GeoTIFFs** for GIS: one float32 file per year, bands
  described `A00`..`A63`, NaN as nodata, north up, with the CRS. Results
  (change, similarity, RGB) export the same way.""",
    ),
    (
        "code",
        """zarr_path = ds.embed.to_zarr("outputs/north-field.zarr", mode="w")
tif_folder = ds.embed.to_geotiff("outputs/north-field-cogs", mode="w")
change_tif = change.embed.to_geotiff("outputs/north-field-change-2021.tif", year=2021, mode="w")
print(sorted(p.name for p in tif_folder.iterdir()))

back = xembed.open_cube(zarr_path)
print("Zarr round trip identical:", back.identical(ds))""",
    ),
    (
        "code",
        """import rasterio

with rasterio.open(tif_folder / "embeddings_2024.tif") as src:
    print(src.count, "bands", src.dtypes[0], src.crs, "nodata", src.nodata)
    print("descriptions", src.descriptions[:3], "...", src.descriptions[-1])
    print("north up:", src.transform.e < 0, "| site", src.tags()["site_id"],
          "| year", src.tags()["year"])""",
    ),
]

CHANGE = [
    (
        "md",
        """# Change detection on a restoration site

Per-pixel cosine similarity between years shows where and when a site
changed. Site 3110 was pasture until its restoration started in 2019.""",
    ),
    (
        "code",
        """import xembed

site = next(s for s in xembed.demo_sites() if s.id == 3110)
ds = xembed.open_embeddings(site, range(2017, 2025), buffer=300, clip=False).persist()
site""",
    ),
    ("md", "Each year against the year before: the transition years stand out."),
    (
        "code",
        """step = ds.embed.similarity(reference="previous")
inside = ds.coverage > 0
step.where(inside).mean(["y", "x"]).to_pandas().round(3)""",
    ),
    (
        "md",
        """Change since the baseline (the site's `start_year`, 2019), as a map with
the boundary, and as a per-year summary inside the polygon:""",
    ),
    (
        "code",
        """change = ds.embed.change()
print("baseline:", change.attrs["baseline"])
xembed.render.plot_change(change, 2024, boundary=site, threshold=0.2)""",
    ),
    ("code", """ds.embed.change_summary(threshold=0.2).round(3)"""),
    ("md", "Every pair of years at once, averaged inside the polygon:"),
    (
        "code",
        """pairs = ds.embed.pairwise_similarity().where(inside).mean(["y", "x"])
xembed.render.plot_similarity_matrix(pairs, title="Mean per-pixel cosine inside site 3110")""",
    ),
    (
        "md",
        """## Similarity search

Which pixels in 2024 look like the restored forest? Query with the polygon's
own 2024 mean and map the cosine of every pixel with it (bright = similar).
`threshold=0.9` would outline the pixels above 0.9.""",
    ),
    (
        "code",
        """hits = ds.embed.search(site.geometry, year=2024)
xembed.render.plot_search(hits, 2024, boundary=site)""",
    ),
]

EARTH_ENGINE = [
    (
        "md",
        """# The same on Earth Engine

With Earth Engine credentials (`earthengine authenticate`, and `EE_PROJECT`
set to your Cloud project) this notebook reads the real collection through
Xee. Without them it falls back to `xembed.testing.fake_earthengine()`: a
local Earth Engine server answering from the sample, so every cell still runs
the real `earthengine-api` client and the real Xee.""",
    ),
    (
        "code",
        """import contextlib
import os

import ee

import xembed
from xembed.testing import fake_earthengine

has_credentials = os.path.exists(ee.oauth.get_credentials_path()) and "EE_PROJECT" in os.environ
if has_credentials:
    ee.Initialize(project=os.environ["EE_PROJECT"])
    server = contextlib.nullcontext()
    print("Earth Engine project", os.environ["EE_PROJECT"])
else:
    server = fake_earthengine()  # the sample, behind a local Earth Engine REST API
    print("no credentials: using the local fake Earth Engine over the sample")""",
    ),
    (
        "code",
        """site = next(s for s in xembed.demo_sites() if s.id == 3103)  # crosses UTM 22S/23S
with server as fake:
    ee_cube = xembed.open_embeddings(site, range(2018, 2025), source="ee")
    ee_means = ee_cube.embed.to_frame()
    if fake is not None:
        print("computePixels requests:", fake.compute_pixels_count)
ee_means.iloc[:, :8].round(4)""",
    ),
    (
        "md",
        """The same site from the COG mirror format (here the sample): identical
grid, identical values (the real mirror differs from Earth Engine only by
its int8 quantisation).""",
    ),
    (
        "code",
        """import numpy as np

cog_means = xembed.open_embeddings(site, range(2018, 2025)).embed.to_frame()
bands = list(xembed.BANDS)
print("max abs difference:", float(np.abs(ee_means[bands] - cog_means[bands]).max().max()))
xembed.similarity_matrix(xembed.open_embeddings(site, range(2018, 2025))).to_pandas().round(3)""",
    ),
]

SCALE = [
    (
        "md",
        """# Many sites with dask

`zonal_mean` reduces any number of polygons in one pass over a cube: their
coverage fractions become one sparse weight table, and each chunk adds its
part. Run it on a `dask.distributed` cluster (here a small local one; any
existing cluster works the same).""",
    ),
    (
        "code",
        """import shapely
from dask.distributed import Client, LocalCluster

import xembed

cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                       dashboard_address=None)
client = Client(cluster)
sites = xembed.demo_sites()
west = [s for s in sites if s.geometry.centroid.x < -48.0]  # the UTM 22S sites
print(len(west), "sites in zone 22S")""",
    ),
    (
        "code",
        """area = shapely.union_all([s.geometry for s in west]).envelope
cube = xembed.open_embeddings(area, range(2017, 2025), clip=False, chunks=128)
print(dict(cube.embeddings.sizes), "chunks:", cube.embeddings.data.npartitions)
means = xembed.zonal_mean(cube, west)  # lazy (site, year, band)
means""",
    ),
    (
        "code",
        """means = means.compute()
one = xembed.open_embeddings(west[0], range(2017, 2025)).embed.polygon_mean().compute()
print("site", west[0].id, "same as its own cube:",
      bool(abs(means.sel(site=west[0].id) - one).max() < 1e-6))
sim = xembed.similarity_matrix(means.sel(site=west[0].id))
sim.to_pandas().round(3)""",
    ),
    (
        "code",
        """client.close()
cluster.close()""",
    ),
]

CLASSIFICATION = [
    (
        "md",
        """# Land cover from a handful of labels

Embeddings make supervised mapping cheap: label a few points per class, fit
any scikit-learn model on their 64 numbers, and map every pixel of every
year. This notebook labels 20 points per land-cover class, classifies
2017-2024, measures the maps against the truth and with spatial
cross-validation, turns them into areas, follows restoration sites from
pasture to forest, and ends with a regression (tree cover).

The sample's generator knows the land cover it made every pixel from
(`xembed.sources.sample.landcover` and `tree_cover`): here it stands in for
your field visits, and tells how good the maps really are. Needs
`pip install "xembed[ml,viz]"`.""",
    ),
    (
        "code",
        """import geopandas as gpd
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import shapely
from matplotlib.colors import ListedColormap

import xembed
from xembed.sources.sample import CLASS_NAMES, landcover, tree_cover

YEARS = range(2017, 2025)
area = shapely.box(-48.0175, -22.628, -47.9822, -22.596)  # the south of the sample
cube = xembed.open_embeddings(area, YEARS, clip=False).persist()  # ~280 MB: read once
truth = landcover(cube)  # (year, y, x) true classes at the cube's pixels
print(dict(cube.embeddings.sizes), "| classes:", ", ".join(CLASS_NAMES))""",
    ),
    (
        "md",
        """## 20 labelled points per class

In 2021 every class is on the map (the deforestation is bare that year). We
pick 20 random pixels of each class there, as someone labelling points on
imagery would; with your own data this is a GeoJSON of points with a class
column (`gpd.read_file("labels.geojson")`).""",
    ),
    (
        "code",
        """rng = np.random.default_rng(0)
t2021 = truth.sel(year=2021).values
has_data = cube.embeddings.sel(year=2021, band="A00").notnull().values
points, labels = [], []
for code, name in enumerate(CLASS_NAMES):
    rows, cols = np.nonzero((t2021 == code) & has_data)
    for i in rng.choice(rows.size, 20, replace=False):
        points.append(shapely.Point(cube.x.values[cols[i]], cube.y.values[rows[i]]))
        labels.append(name)
training = gpd.GeoDataFrame({"cover": labels}, geometry=points, crs=cube.rio.crs).to_crs(4326)
training.value_counts("cover")""",
    ),
    (
        "md",
        """## Classify every year

`classify` samples the points from the 2021 embeddings (`years=[2021]`),
fits a 3-nearest-neighbour classifier (pass `model=` for any other) and
predicts every pixel of every year, chunk by chunk. The result holds class
codes with CF `flag_meanings`; the fitted model and the training table ride
along in `attrs`.""",
    ),
    (
        "code",
        """classes = cube.embed.classify(training, "cover", years=[2021]).compute()
model, table = classes.attrs["model"], classes.attrs["training"]
print(model, "|", classes.attrs["flag_meanings"])
table.iloc[:3, :7]""",
    ),
    (
        "md",
        """## How good is it?

Against the true map, pixel by pixel (the pixels with data):""",
    ),
    (
        "code",
        """names = classes.attrs["flag_meanings"].split()
to_truth = np.array([CLASS_NAMES.index(n) for n in names])  # model code -> truth code
valid = classes.values >= 0
predicted = to_truth[np.where(valid, classes.values, 0)]
right = (predicted == truth.values) & valid
accuracy = pd.Series(right.sum(axis=(1, 2)) / valid.sum(axis=(1, 2)), index=list(YEARS))
print(f"accuracy against the truth, all years: {right.sum() / valid.sum():.3f}")
accuracy.round(3).to_frame("accuracy").T""",
    ),
    (
        "md",
        """Without a truth map you estimate accuracy by cross-validation on the
labels. Neighbouring pixels look alike, so a random split flatters the
model; `xembed.assess` makes its folds of 500 m blocks instead (default
`cv="spatial"`), so no block is on both sides of a split.""",
    ),
    (
        "code",
        """labelled = table[table["year"] == 2021]
spatial = xembed.assess(model, labelled, "cover", cv="spatial", block_size=500)
shuffled = xembed.assess(model, labelled, "cover", cv="random")
print(f"spatial CV accuracy {spatial['accuracy']:.3f} (kappa {spatial['kappa']:.3f}) | "
      f"random CV {shuffled['accuracy']:.3f} | "
      f"against the truth map {right.sum() / valid.sum():.3f}")
spatial.confusion""",
    ),
    (
        "md",
        """Here both estimates say 1.000 while the map scores 0.993 against the
truth: the sample's classes are far apart, the 120 labelled pixels lie
inside fields, and the map's errors sit on field edges, where a pixel mixes
two fields. Cross-validation can only measure the labels you have: label
edges and transitions too if the map must be right there. Where classes
overlap and labels cluster (many pixels of a few polygons), the random
estimate is the one that runs high, and spatial blocks keep it honest.""",
    ),
    (
        "md",
        """## Class maps, year by year

White: no data (outside the sample's files, and the 2019 gap). The speckle
in the north-west in 2020 is site 3110 half-way through its regrowth,
neither pasture nor forest yet; the errors of 2021 sit on field edges, where
a pixel mixes two fields.""",
    ),
    (
        "code",
        """colours = ListedColormap(
    ["#1b7837", "#d9ef8b", "#fdae61", "#4575b4", "#762a83", "#8c510a"]  # in CLASS_NAMES order
)
fig, axes = plt.subplots(2, 5, figsize=(16, 6.6), constrained_layout=True)
extent = [float(cube.x[0]) - 5, float(cube.x[-1]) + 5, float(cube.y[-1]) - 5, float(cube.y[0]) + 5]
maps = [(str(y), np.where(valid[i], predicted[i], np.nan)) for i, y in enumerate(YEARS)]
maps += [("truth 2021", np.where(valid[4], truth.sel(year=2021).values, np.nan)),
         ("errors 2021 (black)", np.where(valid[4], ~right[4], np.nan))]
for ax, (title, image) in zip(axes.flat, maps):
    is_error = title.startswith("errors")
    ax.imshow(image, extent=extent, interpolation="nearest",
              cmap="Greys" if is_error else colours, vmin=0, vmax=1 if is_error else 5)
    ax.set_title(title)
    ax.set_axis_off()
handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i)) for i in range(6)]
fig.legend(handles, CLASS_NAMES, loc="lower center", ncol=6, bbox_to_anchor=(0.5, -0.05))
fig.savefig("outputs/classes.png", dpi=80, bbox_inches="tight")""",
    ),
    (
        "md",
        """## Areas

`class_area` weighs every pixel by its share of the area (here the box, all
1) and adds up hectares per class and year; each year sums to the area with
data (the 2019 gap is missing).""",
    ),
    (
        "code",
        """areas = cube.embed.class_area(classes)
areas.pivot(index="year", columns="class", values="ha")[names].round(1)""",
    ),
    (
        "md",
        """## Restoration sites: pasture to forest

The fitted model applies to any cube with the same bands. For each demo
site: the forest share of its area per year, and the first year forest
covers most of it, beside its `start_year` (the truth: pasture until the
second year after the start).""",
    ),
    (
        "code",
        """rows = []
for site in xembed.demo_sites():
    site_cube = xembed.open_embeddings(site, YEARS)
    shares = site_cube.embed.class_area(site_cube.embed.predict(model))
    forest = shares[shares["class"] == "forest"].set_index("year")["fraction"]
    true_forest = (landcover(site_cube) == 0).weighted(site_cube.coverage).mean(["y", "x"])
    first = forest.index[forest > 0.5].min() if (forest > 0.5).any() else None
    true_first = next((y for y, f in zip(YEARS, true_forest.values) if f > 0.5), None)
    rows.append({"site": site.id, "start_year": site.start_year, "forest from": first,
                 "truth: forest from": true_first, **forest.round(2).to_dict()})
years_columns = ["start_year", "forest from", "truth: forest from"]
sites = pd.DataFrame(rows).set_index("site").astype({c: "Int64" for c in years_columns})
sites""",
    ),
    (
        "code",
        """turned = sites[(sites[2017] < 0.5) & (sites[2024] > 0.5)]
print("turned from pasture to forest after their start year:",
      ", ".join(f"{i} (start {r.start_year}, forest from {r['forest from']})"
                for i, r in turned.iterrows()))""",
    ),
    (
        "md",
        """## A regression: tree cover

The same tools fit continuous targets. The sample knows each pixel's tree
cover (1 in forest, 0 in pasture, in between while a site regrows). Take 300
random points, their embeddings in every year and the tree cover there,
fit a 5-nearest-neighbour regressor, check it with spatial CV, then map a
restoration site's regrowth.""",
    ),
    (
        "code",
        """from sklearn.neighbors import KNeighborsRegressor

rows, cols = np.nonzero(cube.embeddings.isel(band=0).notnull().values.all(axis=0))
pick = rng.choice(rows.size, 300, replace=False)
spots = gpd.GeoDataFrame(geometry=gpd.points_from_xy(cube.x.values[cols[pick]],
                                                      cube.y.values[rows[pick]]), crs=cube.rio.crs)
samples = cube.embed.sample(spots)  # 300 points x 8 years
cover = tree_cover(cube)
samples["tree_cover"] = cover.values[samples["year"] - 2017, np.repeat(rows[pick], 8),
                                     np.repeat(cols[pick], 8)]
regressor = KNeighborsRegressor(5)
for cv in ("spatial", "random"):
    print(xembed.assess(regressor, samples, "tree_cover", cv=cv))
_ = regressor.fit(samples[list(xembed.BANDS)].to_numpy(), samples["tree_cover"].to_numpy())""",
    ),
    (
        "code",
        """site = next(s for s in xembed.demo_sites() if s.id == 3110)  # restoration from 2019
site_cube = xembed.open_embeddings(site, YEARS)
estimate = site_cube.embed.predict(regressor).compute()
true_cover = tree_cover(site_cube)
inside = site_cube.coverage
print(pd.DataFrame({"predicted": estimate.weighted(inside).mean(["y", "x"]).values,
                    "true": true_cover.weighted(inside).mean(["y", "x"]).values},
                   index=list(YEARS)).round(2).T)
grid = estimate.sel(year=[2019, 2020, 2021, 2022]).plot(col="year", cmap="YlGn", vmin=0,
                                                        vmax=1, size=3)
for ax in grid.axs.flat:
    ax.set_axis_off()
grid.fig.savefig("outputs/tree_cover_3110.png", dpi=80)""",
    ),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_change_detection.ipynb": CHANGE,
    "03_earth_engine.ipynb": EARTH_ENGINE,
    "04_scale.ipynb": SCALE,
    "05_classification.ipynb": CLASSIFICATION,
}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
        for kind, src in cells
    ]
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 600) -> nbformat.NotebookNode:
    (cwd / "outputs").mkdir(exist_ok=True)
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return nb


def main(names: list[str]) -> None:
    from xembed.sources.sample import sample_root

    sample_root()  # generated here, not inside a stored notebook's output
    for name, cells in NOTEBOOKS.items():
        if names and name not in names:
            continue
        nb = execute(build(name, cells), HERE)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main(sys.argv[1:])
