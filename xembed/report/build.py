"""Building the report: one batch pass for the numbers, one read per site for its page."""

from __future__ import annotations

import datetime as dt
import html
import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xembed._util import atomic_write, stacklevel
from xembed.batch import extract
from xembed.grid import project, utm_crs
from xembed.ops.reduce import MIN_VALID
from xembed.report.html import Column, page, sortable_table, table
from xembed.report.site import CONTEXT_M, SiteFiles, build_site, means_of
from xembed.sites import Site, as_sites
from xembed.sources.common import normalize_years

__all__ = ["Built", "build_report", "report"]

_INDEX_COLUMNS = [
    Column("site", "site_id", text=True),
    Column("start year", "start_year"),
    Column("baseline", "baseline"),
    Column("area ha", "area_ha", ".2f"),
    Column("valid fraction (lowest year)", "valid_fraction", ".3f"),
    Column("change since baseline", "change", ".4f"),
    Column("changed ha", "changed_ha", ".2f"),
    Column("page", "page", text=True),
]
_POPUP = {  # summary columns shown in the overview map's popups, and their names there
    "baseline": "baseline",
    "valid_fraction": "valid_fraction",
    "change": "change_since_baseline",
    "changed_ha": "changed_ha",
}
_ERROR_COLUMNS = [
    Column("site", "site_id", text=True),
    Column("year", "year"),
    Column("error", "error", text=True),
]


def report(
    sites: Any,
    years: int | Iterable[int],
    out: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] = "sample",
    root: str | os.PathLike[str] | None = None,
    project: str | None = None,
    progress: bool = True,
    client: Any = None,
    min_valid: float = MIN_VALID,
    dimensions: int = 300,
    buffer: float = CONTEXT_M,
) -> Path:
    """Write a static HTML report of many sites: an index and one page per site.

    The folder opens from disk in any browser, offline (no server, no CDN):
    ``index.html`` holds a table of all sites (sortable by clicking a
    header) and a map of their outlines; ``sites/<id>.html`` a site's
    yearly composites (strip and GIF), its change map and change table, the
    similarity between its years, an interactive map and links to its
    yearly means (CSV), its cube (Zarr) and GeoTIFFs. See
    :mod:`xembed.report` for the layout and how reads are shared.

    Parameters
    ----------
    sites : list of Site, GeoDataFrame, path, ...
        Anything :func:`xembed.sites.as_sites` reads.
    years : int or iterable of int
        The years, e.g. ``range(2017, 2025)``.
    out : path
        The report folder (created; files in it are replaced).
    source, root, project
        As for :func:`xembed.open_embeddings`.
    progress : bool
        Progress bars (tqdm): the batch pass, then the site pages.
    client : distributed.Client, optional
        For the batch pass, as for :func:`xembed.extract`.
    min_valid : float, default 0.9
        Warn about site-years with less valid data (:class:`xembed.CoverageWarning`).
    dimensions : int, default 300
        Size of each yearly picture in pixels (its longer side).
    buffer : float, default 300
        Metres of landscape drawn around each site.

    Returns
    -------
    pathlib.Path
        The report's ``index.html``.

    Warns
    -----
    UserWarning
        Naming the sites that failed (they are listed on the index page with
        their error; the other sites are complete).

    Examples
    --------
    >>> import tempfile, xembed
    >>> index = report(xembed.demo_sites()[:1], [2023, 2024], tempfile.mkdtemp(),
    ...                progress=False, dimensions=64)
    >>> index.name, sorted(p.name for p in (index.parent / "sites").glob("*.html"))
    ('index.html', ['3101.html'])
    """
    built = build_report(
        sites,
        years,
        out,
        source=source,
        root=root,
        project=project,
        progress=progress,
        client=client,
        min_valid=min_valid,
        dimensions=dimensions,
        buffer=buffer,
    )
    if built.failures:
        warnings.warn(
            f"xembed.report: {built.failed_text()}; they are listed in {built.index}, "
            "the other sites are complete",
            UserWarning,
            stacklevel=stacklevel(),
        )
    return built.index


@dataclass
class Built:
    """What :func:`build_report` wrote: the index page and the failures listed on it."""

    index: Path
    failures: list[dict[str, Any]]

    def failed_text(self) -> str:
        """The failures in one line: how many sites, then each with its error."""
        sites = len({f["site_id"] for f in self.failures})
        listed = "; ".join(
            f"site {f['site_id']}{'' if f['year'] is None else ' ' + str(f['year'])}: {f['error']}"
            for f in self.failures[:5]
        )
        more = f"; ... ({len(self.failures)} in all)" if len(self.failures) > 5 else ""
        return f"{sites} site{'s' if sites != 1 else ''} failed: {listed}{more}"


def build_report(
    sites: Any,
    years: int | Iterable[int],
    out: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] = "sample",
    root: str | os.PathLike[str] | None = None,
    project: str | None = None,
    progress: bool = True,
    client: Any = None,
    min_valid: float = MIN_VALID,
    dimensions: int = 300,
    buffer: float = CONTEXT_M,
) -> Built:
    """:func:`report` without the warning: returns the failures as well (for the CLI).

    Examples
    --------
    >>> import tempfile
    >>> from shapely.geometry import box
    >>> far = Site(1, 2020, box(10.0, 50.0, 10.001, 50.001))  # outside the sample
    >>> built = build_report([far], [2024], tempfile.mkdtemp(), progress=False)
    >>> built.index.name, built.failures[0]["error"].split(":")[0]
    ('index.html', 'DataNotFoundError')
    """
    site_list = as_sites(sites)
    years = normalize_years(years)
    folder = Path(out).absolute()  # files are linked relative to it
    folder.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"source": source, "root": root, "project": project}
    with warnings.catch_warnings():
        # the batch's failures are listed on the index page (and warned once, below)
        warnings.filterwarnings("ignore", message=r"xembed\.extract: \d+ of \d+ sites failed")
        table_ = extract(
            site_list, years, progress=progress, client=client, min_valid=min_valid, **kwargs
        )
    atomic_write(folder / "means.csv", lambda tmp: table_.to_csv(tmp, index=False))
    failures = _batch_failures(table_.attrs["errors"])
    pages = _site_pages(site_list, table_, folder, failures, kwargs, dimensions, buffer, progress)
    summary = _summary(site_list, table_, pages)
    overview = _overview(site_list, summary, folder)
    text = _index_page(summary, failures, years, overview)
    index = atomic_write(folder / "index.html", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return Built(index, failures)


def _batch_failures(errors: pd.DataFrame) -> list[dict[str, Any]]:
    """The batch's failures as rows ``site_id, year, error`` (year ``None``: whole site)."""
    return [
        {
            "site_id": str(row.site_id),
            "year": None if pd.isna(row.year) else int(row.year),
            "error": str(row.error),
        }
        for row in errors.itertuples(index=False)
    ]


def _site_pages(
    sites: list[Site],
    table_: pd.DataFrame,
    out: Path,
    failures: list[dict[str, Any]],
    source: dict[str, Any],
    dimensions: int,
    buffer: float,
    progress: bool,
) -> dict[str, SiteFiles]:
    """Each site's page (failures are appended to ``failures``; the others complete)."""
    from tqdm.auto import tqdm

    failed = {f["site_id"] for f in failures if f["year"] is None}
    ids = table_["site_id"].astype(str)
    pages: dict[str, SiteFiles] = {}
    for site in tqdm(sites, desc="pages", unit="site", disable=not progress, file=sys.stderr):
        key = str(site.id)
        rows = table_[ids == key]
        if key in failed or rows.empty:
            continue  # the batch named its errors already
        try:
            pages[key] = build_site(
                site, rows, out, source=source, dimensions=dimensions, buffer=buffer
            )
        except Exception as err:  # listed on the index page; the other sites complete
            failures.append({"site_id": key, "year": None, "error": f"{type(err).__name__}: {err}"})
    return pages


def _area_ha(site: Site) -> float:
    return float(project(site.geometry, "EPSG:4326", utm_crs(site.geometry)).area / 1e4)


def _numbers(site: Site, rows: pd.DataFrame) -> dict[str, Any]:
    """Baseline, lowest valid fraction and change of the site's mean since the baseline."""
    if rows.empty:  # the site failed in the batch pass
        return {"baseline": None, "valid_fraction": np.nan, "change": np.nan}
    years = [int(y) for y in rows["year"]]
    start = site.start_year
    baseline = start if start is not None and start in years else years[0]
    means = means_of(rows)
    a, b = means.sel(year=baseline).values, means.isel(year=-1).values
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return {
        "baseline": baseline,
        "valid_fraction": float(rows["valid_fraction"].min()),
        "change": 1.0 - cosine,
    }


def _summary(sites: list[Site], table_: pd.DataFrame, pages: dict[str, SiteFiles]) -> pd.DataFrame:
    """One row per site: the index table's columns (NaN where a site failed)."""
    ids = table_["site_id"].astype(str)
    records = []
    for site in sites:
        key = str(site.id)
        done = pages.get(key)
        record = {
            "site_id": key,
            "start_year": site.start_year,
            "area_ha": _area_ha(site),
            **_numbers(site, table_[ids == key]),
            "changed_ha": np.nan if done is None else done.changed_ha,
            "page": None if done is None else "page",
            "page_href": None if done is None else done.page,
        }
        records.append(record)
    return pd.DataFrame.from_records(records)


def _overview(sites: list[Site], summary: pd.DataFrame, out: Path) -> str:
    """The map of all sites (``overview.html``): popups with the numbers, links to the pages."""
    from xembed.maps import explore_sites

    popup = summary[["site_id", *_POPUP]].rename(columns=_POPUP)
    links = {
        row.site_id: row.page_href for row in summary.itertuples() if isinstance(row.page_href, str)
    }
    m = explore_sites(sites, table=popup, links=links)
    atomic_write(out / "overview.html", lambda tmp: m.save(str(tmp)))
    return "overview.html"


def _index_page(
    summary: pd.DataFrame,
    failures: list[dict[str, Any]],
    years: tuple[int, ...],
    overview: str,
) -> str:
    rows = summary.to_dict("records")
    done = sum(1 for r in rows if isinstance(r.get("page_href"), str))
    problems = ""
    if failures:
        problems = (
            f'<h2 class="error">Failures ({len(failures)})</h2>\n'
            "<p>These sites (or site-years) could not be read; the other pages are complete.</p>\n"
            + table(_ERROR_COLUMNS, failures)
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = f"""<h1>Sites {years[0]}&ndash;{years[-1]}</h1>
<p>{len(rows)} sites, {done} pages. Click a column header to sort.
<a href="means.csv">Yearly means of all sites (CSV)</a>.</p>
<p class="note">Change since baseline: 1 &minus; cosine similarity of the site's mean embedding
in the last year and in its baseline year (the start year, or the first year with data);
changed ha: pixels whose own change exceeds 0.2. Built {html.escape(stamp)} by xembed.</p>
{sortable_table(_INDEX_COLUMNS, rows)}
{problems}
<h2>Map</h2>
<iframe src="{html.escape(overview)}" title="map of all sites"></iframe>"""
    return page(f"Sites {years[0]}-{years[-1]}", body, script=True)
