"""``extract``, ``change`` and ``similarity``: tables of every site."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xembed._util import atomic_write
from xembed.cli.common import (
    UsageError,
    add_common,
    add_min_valid,
    atomic_table,
    each_site,
    open_site,
    parse_years,
    sites_of,
    source_kwargs,
    table_path,
)


def _extract(args: argparse.Namespace) -> int:
    """All sites through :func:`xembed.batch.extract`: shared reads, resumable with ``--store``.

    Writes the table (``site_id, year, valid_fraction, valid_ha, A00..A63``;
    with ``--stats``, a ``stat`` column after ``year``) of every site that
    succeeded; if some failed, prints one line per failure and returns 1.
    """
    import pandas as pd

    import xembed
    from xembed.batch import extract

    out = table_path(args.out)
    if args.stats and args.reducer:
        raise UsageError("--stats and --reducer exclude each other; pick one")
    stats = [s.strip() for s in args.stats.split(",")] if args.stats else [args.reducer or "mean"]
    sites = sites_of(args)
    store = args.store
    try:
        with warnings.catch_warnings():
            # The failures are summarised below, one line each.
            warnings.filterwarnings("ignore", r"xembed\.extract: ", UserWarning)
            table = extract(
                sites,
                parse_years(args.years),
                **source_kwargs(args),
                stats=stats,
                store=store,
                progress=not args.quiet,
                min_valid=args.min_valid,
            )
    except (xembed.XembedError, ValueError, NotImplementedError) as err:
        raise UsageError(str(err)) from err
    errors = table.attrs["errors"]
    means = table if args.stats else table.drop(columns="stat")
    means.attrs = {}  # pandas cannot write a DataFrame held in attrs to Parquet
    atomic_table(means, out)
    n_sites = means["site_id"].nunique()
    print(f"wrote {out} ({len(means)} rows, {means.shape[1]} columns, {n_sites} sites)")
    if errors.empty:
        return 0
    failed = errors["site_id"].nunique()
    for row in errors.itertuples():
        when = "" if pd.isna(row.year) else f" year {row.year}"
        print(f"xembed extract: site {row.site_id}{when}: {row.error}", file=sys.stderr)
    retry = f" (re-run with --store {store} to retry only them)" if store else ""
    print(
        f"xembed extract: {failed} of {len(sites)} sites failed; {out} holds the others{retry}",
        file=sys.stderr,
    )
    return 1


def _similarity_tables(args: argparse.Namespace, out: Path, sites: Sequence[Any]) -> list[Path]:
    import xembed

    out.mkdir(parents=True, exist_ok=True)
    written = []

    def work(site: Any) -> Any:
        return xembed.similarity_matrix(open_site(site, args), normalize=not args.raw).to_pandas()

    for site, matrix in each_site(args, sites, work, "similarity"):
        path = out / f"similarity_{site.id}.csv"
        matrix.index.name = "year"
        atomic_write(path, matrix.to_csv)
        written.append(path)
    return written


def _similarity(args: argparse.Namespace) -> int:
    written = _similarity_tables(args, Path(args.out), sites_of(args))
    print(f"wrote {len(written)} similarity matrices to {args.out}")
    return 0


def _change(args: argparse.Namespace) -> int:
    """:func:`xembed.change_summary` of every site into one table (``site_id`` first).

    Writes the sites that succeeded; if some failed, prints one line per
    failure and returns 1 (as ``extract``).
    """
    import pandas as pd

    import xembed

    out = table_path(args.out)
    years = parse_years(args.years)
    if args.baseline is not None and args.baseline not in years:
        raise UsageError(f"--baseline {args.baseline} is not one of --years {years}; add it")
    sites = sites_of(args)
    failed: list[str] = []

    def work(site: Any) -> Any:
        cube = open_site(site, args)
        return xembed.change_summary(cube, args.threshold, baseline=args.baseline)

    tables = [
        table.assign(site_id=site.id)[["site_id", *table.columns]]
        for site, table in each_site(args, sites, work, "change", failed)
    ]
    if tables:
        table = pd.concat(tables, ignore_index=True)
        xembed.check_coverage(table, args.min_valid)  # one warning for every site-year
        atomic_table(table, out)
        print(f"wrote {out} ({len(table)} rows, {len(tables)} sites)")
    for line in failed:
        print(f"xembed change: {line}", file=sys.stderr)
    if failed:
        held = f"{out} holds the others" if tables else "nothing written"
        print(f"xembed change: {len(failed)} of {len(sites)} sites failed; {held}", file=sys.stderr)
    return 1 if failed else 0


def add_extract(sub: Any) -> None:
    stats = ["mean", "median", "std", "min", "max", "count"]
    p = sub.add_parser(
        "extract",
        help="yearly polygon means of every site into one table",
        description="Coverage-weighted yearly statistic per site: "
        "site_id, year, valid_fraction, valid_ha, A00..A63.",
    )
    add_common(p, out="output table (.csv or .parquet)")
    p.add_argument("--reducer", choices=stats, help="one statistic (default: mean)")
    p.add_argument(
        "--stats",
        help=f"several statistics, comma-separated (some of {','.join(stats)}); "
        "the table then has a 'stat' column",
    )
    p.add_argument(
        "--store",
        help="folder to commit finished sites to (a Parquet dataset); re-running with the "
        "same arguments computes only the sites not done",
    )
    add_min_valid(p)
    p.set_defaults(func=_extract)


def add_change(sub: Any) -> None:
    p = sub.add_parser(
        "change",
        help="per-year change of every site since its start year, into one table",
        description=(
            "xembed.change_summary of every site: site_id, year, baseline, changed_ha, "
            "changed_fraction, valid_ha, valid_fraction, mean_similarity, "
            "similarity_p10/p50/p90. "
            "Each site is compared with its start year when that is one of --years; "
            "sites without a start year (or one outside --years) with the first of --years."
        ),
    )
    add_common(p, out="output table (.csv or .parquet)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.2,
        help="1 - cosine above which a pixel counts as changed (default: %(default)s)",
    )
    p.add_argument("--baseline", type=int, help="one baseline year for every site instead")
    add_min_valid(p)
    p.set_defaults(func=_change)


def add_similarity(sub: Any) -> None:
    p = sub.add_parser(
        "similarity",
        help="per-site year-by-year cosine similarity matrices",
        description="One CSV per site: cosine similarity between its yearly mean embeddings.",
    )
    add_common(p, out="output folder")
    p.add_argument(
        "--raw",
        action="store_true",
        help="the original notebook's raw dot product of means instead of the cosine",
    )
    p.set_defaults(func=_similarity)
