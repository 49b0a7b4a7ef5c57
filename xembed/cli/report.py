"""``report``: a static HTML report of every site, to open in a browser and send on."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from xembed.cli.common import (
    SiteFailure,
    UsageError,
    add_common,
    add_min_valid,
    parse_years,
    sites_of,
)


def _report(args: argparse.Namespace) -> int:
    import xembed
    from xembed.report.build import build_report

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is a file; the report is a folder, e.g. report/")
    sites = sites_of(args)
    try:
        built = build_report(
            sites,
            parse_years(args.years),
            out,
            source=args.source,
            root=args.root,
            project=args.project,
            progress=not args.quiet,
            min_valid=args.min_valid,
            dimensions=args.dimensions,
            buffer=args.buffer,
        )
    except (xembed.SourceError, ValueError) as err:
        raise UsageError(str(err)) from err
    print(f"wrote {built.index}")
    if built.failures:
        raise SiteFailure(f"{built.failed_text()} (listed in {built.index})")
    return 0


def add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="a static HTML report of every site (opens offline in any browser)",
        description=(
            "index.html: a sortable table of all sites and a map of them; one page per site "
            "with its yearly pictures, change map and table, similarity heat-map, an "
            "interactive map and its downloads (CSV, Zarr, GeoTIFF)."
        ),
    )
    add_common(p, out="output folder (e.g. report/)")
    p.add_argument(
        "--dimensions", type=int, default=300, help="yearly picture size in pixels (default 300)"
    )
    p.add_argument("--buffer", type=float, default=300.0, help="metres of context (default 300)")
    add_min_valid(p)
    p.set_defaults(func=_report)
