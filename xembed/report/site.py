"""One site's page: its pictures, change table, map and downloads, from one read.

A site's cube (the polygon plus :data:`CONTEXT_M` metres around it, not
clipped) is read once and held in memory (``persist``); every picture, the
change table, the interactive map and the exports are cut from it. The
yearly means come from the batch table (:func:`xembed.extract`), not from
this read, so the numbers of the index and of the page are the batch's.
"""

from __future__ import annotations

import html
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xembed import export, render
from xembed._util import atomic_write
from xembed.cube import open_embeddings
from xembed.ops import change_summary, similarity_matrix
from xembed.report.html import Column, page, table
from xembed.schema import BANDS
from xembed.sites import Site

__all__ = ["CONTEXT_M", "SiteFiles", "build_site", "means_of", "slug"]

CONTEXT_M = 300.0  # metres of landscape drawn around each site

_CHANGE_COLUMNS = [
    Column("year", "year"),
    Column("baseline", "baseline"),
    Column("changed ha", "changed_ha", ".2f"),
    Column("changed fraction", "changed_fraction", ".3f"),
    Column("valid ha", "valid_ha", ".2f"),
    Column("mean similarity", "mean_similarity", ".3f"),
    Column("similarity p10", "similarity_p10", ".3f"),
    Column("similarity p50", "similarity_p50", ".3f"),
    Column("similarity p90", "similarity_p90", ".3f"),
]


@dataclass
class SiteFiles:
    """What a site's page holds: files (relative to the report folder) and its change table."""

    page: str
    files: dict[str, str] = field(default_factory=dict)
    change: pd.DataFrame | None = None

    @property
    def changed_ha(self) -> float:
        """Area changed since the baseline in the last year (NaN without a table)."""
        if self.change is None or self.change.empty:
            return float("nan")
        return float(self.change["changed_ha"].iloc[-1])


def slug(site_id: Any) -> str:
    """A file name for a site id: the id where it is safe, else a readable hash-tagged form.

    Examples
    --------
    >>> slug(3101), slug("a b/c")
    ('3101', 'a_b_c-...')
    """
    text = str(site_id)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", text).strip(".") or "site"
    if safe == text:
        return text
    return f"{safe}-{zlib.crc32(text.encode()):08x}"


def means_of(rows: pd.DataFrame) -> xr.DataArray:
    """A site's yearly means ``(year, band)`` from its rows of the batch table.

    Examples
    --------
    >>> rows = pd.DataFrame({"year": [2020], **{b: [1.0] for b in BANDS}})
    >>> means_of(rows).dims
    ('year', 'band')
    """
    return xr.DataArray(
        rows[list(BANDS)].to_numpy(dtype=np.float64),
        dims=("year", "band"),
        coords={"year": rows["year"].to_numpy(dtype=np.int64), "band": list(BANDS)},
    )


def _site_cube(context: xr.Dataset) -> xr.Dataset:
    """The site itself: ``context`` cropped to the polygon's pixels, outside masked."""
    cov = context["coverage"].values
    rows = np.flatnonzero((cov > 0).any(axis=1))
    cols = np.flatnonzero((cov > 0).any(axis=0))
    window = context.isel(
        y=slice(int(rows[0]), int(rows[-1]) + 1), x=slice(int(cols[0]), int(cols[-1]) + 1)
    )
    return window.assign(embeddings=window["embeddings"].where(window["coverage"] > 0))


def _pictures(
    site: Site, context: xr.Dataset, means: xr.DataArray, folder: Path, dimensions: int
) -> dict[str, Path]:
    """Strip, GIF, similarity heat-map and change map of the last year."""
    frames = render.frames(
        context.embed.rgb(), boundary=site, dimensions=dimensions, label=f"{site.id} {{year}}"
    )
    last = int(context["year"].values[-1])
    files = {
        "strip": render.save_strip(frames, folder / "strip.png"),
        "gif": render.save_gif(frames, folder / "years.gif", duration_ms=700),
    }
    fig = render.plot_similarity_matrix(similarity_matrix(means))
    files["similarity"] = render.save_figure(fig, folder / "similarity.png")
    fig = render.plot_change(context.embed.change(), last, boundary=site)
    files["change"] = render.save_figure(fig, folder / "change.png")
    return files


def _interactive_map(context: xr.Dataset, path: Path) -> Path:
    from xembed.maps import explore

    m = explore(context, ["rgb", "change"])
    return atomic_write(path, lambda tmp: m.save(str(tmp)))


def _exports(site_cube: xr.Dataset, rows: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """The means CSV (the batch rows), a Zarr store and per-year GeoTIFFs of the site."""
    csv = atomic_write(folder / "means.csv", lambda tmp: rows.to_csv(tmp, index=False))
    # int8 codes: exact for the mirror's int8 data, 4x smaller than float32
    store = export.to_zarr(site_cube, folder / "cube.zarr", mode="w", quantize=True)
    tiffs = export.to_geotiff(site_cube, folder / "geotiff", mode="w")
    files = {"means": csv, "zarr": store}
    for tif in sorted(tiffs.iterdir()):
        files[f"geotiff {tif.stem.rsplit('_', 1)[-1]}"] = tif
    return files


def build_site(
    site: Site,
    rows: pd.DataFrame,
    out: Path,
    *,
    source: dict[str, Any],
    dimensions: int,
    buffer: float = CONTEXT_M,
) -> SiteFiles:
    """Read ``site`` once and write its pictures, map, exports and page under ``out``.

    ``rows`` are the site's rows of the batch table (its years with data);
    ``source`` the keyword arguments of :func:`xembed.open_embeddings`.
    """
    name = slug(site.id)
    folder = out / "sites" / name
    years = [int(y) for y in rows["year"]]
    context = open_embeddings(site, years, buffer=buffer, clip=False, **source).persist()
    means = means_of(rows)
    files = _pictures(site, context, means, folder, dimensions)
    files["map"] = _interactive_map(context, folder / "map.html")
    files.update(_exports(_site_cube(context), rows, folder))
    change = change_summary(context)
    result = SiteFiles(
        page=f"sites/{name}.html",
        files={k: p.relative_to(out).as_posix() for k, p in files.items()},
        change=change,
    )
    atomic_write(out / result.page, lambda tmp: tmp.write_text(site_page(site, result, years)))
    return result


def site_page(site: Site, result: SiteFiles, years: list[int]) -> str:
    """The HTML of a site's page (links relative to ``sites/``)."""

    def rel(key: str) -> str:
        return html.escape(result.files[key].removeprefix("sites/"))

    ident = html.escape(str(site.id))
    start = "not given" if site.start_year is None else site.start_year
    baseline = "" if result.change is None else int(result.change["baseline"].iloc[0])
    downloads = "".join(
        f'<li><a href="{rel(key)}">{html.escape(label)}</a></li>'
        for key, label in [("means", "yearly means (CSV)"), ("zarr", "cube (Zarr, int8 codes)")]
        + [(k, f"embeddings {k.split()[1]} (GeoTIFF)") for k in result.files if "geotiff" in k]
    )
    rows = [] if result.change is None else result.change.to_dict("records")
    body = f"""<p><a href="../index.html">&larr; all sites</a></p>
<h1>Site {ident}</h1>
<p>Start year {start}; years {years[0]}&ndash;{years[-1]};
change measured against {baseline} (the start year, or the first year with data).</p>
<h2>Yearly composites</h2>
<p><img src="{rel("strip")}" alt="yearly composites of site {ident}"></p>
<p><img src="{rel("gif")}" alt="animation of site {ident}"></p>
<h2>Change since {baseline}</h2>
<p><img src="{rel("change")}" alt="change map of site {ident}"></p>
{table(_CHANGE_COLUMNS, rows)}
<h2>Similarity between years</h2>
<p><img src="{rel("similarity")}" alt="similarity matrix of site {ident}"></p>
<h2>Interactive map</h2>
<iframe src="{rel("map")}" title="map of site {ident}"></iframe>
<h2>Downloads</h2>
<ul>{downloads}</ul>"""
    return page(f"Site {site.id}", body)
