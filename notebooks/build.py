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
        """# xembed quickstart

The original Earth Engine notebook's tutorial, replayed on the bundled sample
(no account, no internet): load sites, extract yearly means, render years and
band combinations, a strip and a GIF, and the similarity between years, done
right. Change one argument (`source="ee"` or `source="cog"`) to run it on the
real data.""",
    ),
    (
        "code",
        """import xembed

sites = xembed.demo_sites()  # or xembed.load_sites("my_sites.geojson")
site = next(s for s in sites if s.id == 3107)
print(site)""",
    ),
    ("md", "## Yearly mean embeddings: the notebook's table"),
    (
        "code",
        """ds = xembed.open_embeddings(site, range(2020, 2024))  # lazy (year, band, y, x) cube
ds""",
    ),
    (
        "code",
        """df = ds.embed.to_frame()
print(f"Shape: {df.shape}")
df.head()""",
    ),
    (
        "md",
        """The notebook's own call works too (`extract_continuous`, also a method of the
sites `xembed.compat.load_sites` returns), on whatever source
`xembed.compat.use_source(...)` points at (the sample by default):""",
    ),
    (
        "code",
        """from xembed.compat import ALPHA_EMBEDDINGS, EMBEDDING_BANDS, extract_continuous

same = extract_continuous(
    site, ALPHA_EMBEDDINGS, start_date="2020-01-01", end_date="2023-12-31",
    reducer="mean", frequency="yearly",
)
embedding_2023 = same[same["year"] == 2023][EMBEDDING_BANDS].values[0]
print(f"2023 embedding shape: {embedding_2023.shape}")
print("identical to to_frame():", same.equals(df))""",
    ),
    ("md", "## Render years with the site boundary (500 m of context)"),
    (
        "code",
        """years = range(2018, 2025)
context = xembed.open_embeddings(site, years, buffer=500, clip=False)
frames = xembed.render.frames(context.embed.rgb(), boundary=site, dimensions=300)
xembed.render.save_strip(frames, "outputs/embedding_2018_2024.png")
xembed.render.save_gif(frames, "outputs/embedding_2018_2024.gif", duration_ms=700)
frames[-1]""",
    ),
    (
        "code",
        """from IPython.display import Image

Image("outputs/embedding_2018_2024.png")""",
    ),
    ("md", "## Band combinations, and a PCA composite with colours comparable across years"),
    (
        "code",
        """combos = [(("A01", "A16", "A09"), "Default"), (("A00", "A32", "A63"), "Spread"),
          (("A05", "A25", "A45"), "Alt")]
last = context.sel(year=[2024])
band_frames = [
    xembed.render.render(last.embed.rgb(bands), boundary=site, label=name, dimensions=300)
    for bands, name in combos
]
band_frames.append(
    xembed.render.frames(context.embed.pca_rgb(), boundary=site, dimensions=300,
                         label="PCA {year}")[-1]
)
xembed.render.save_strip(band_frames, "outputs/embedding_band_combos.png")
Image("outputs/embedding_band_combos.png")""",
    ),
    (
        "md",
        """## Similarity between years

The original notebook computed `embeddings @ embeddings.T` on the yearly
means. Means of unit vectors are shorter than 1, so that "similarity" had
about 0.92 on its diagonal and mixed the site's heterogeneity into the
comparison. `similarity_matrix()` normalises the means first (the cosine):
the diagonal is exactly 1. `normalize=False` reproduces the old numbers.""",
    ),
    (
        "code",
        """means = xembed.open_embeddings(site, years).embed.polygon_mean().compute()
cosine = xembed.similarity_matrix(means)
raw = xembed.similarity_matrix(means, normalize=False)
print("diagonal, cosine:", cosine.values.diagonal().round(3))
print("diagonal, raw dot product:", raw.values.diagonal().round(3))
cosine.to_pandas().round(3)""",
    ),
    ("code", """xembed.render.plot_similarity_matrix(cosine)"""),
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
own 2024 mean and map the cosine.""",
    ),
    (
        "code",
        """hits = ds.embed.search(site.geometry, year=2024)
xembed.render.plot_change(1 - hits, 2024, boundary=site,
                          title="1 - cosine with the site's 2024 mean (dark = similar)")""",
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
print("max abs difference:", float(np.abs(ee_means.iloc[:, 2:] - cog_means.iloc[:, 2:]).max().max()))
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

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_change_detection.ipynb": CHANGE,
    "03_earth_engine.ipynb": EARTH_ENGINE,
    "04_scale.ipynb": SCALE,
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
