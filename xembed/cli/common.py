"""What every subcommand shares: years, sites, sources, tables, errors, common options."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from xembed._util import atomic_write


class UsageError(Exception):
    """Bad usage or input: exit code 2."""


class SiteFailure(Exception):
    """A site failed: exit code 1."""


def parse_years(text: str) -> list[int]:
    """Years from ``"2018-2024"``, ``"2018,2020,2022"`` or ``"2020"``.

    Examples
    --------
    >>> parse_years("2018-2021")
    [2018, 2019, 2020, 2021]
    >>> parse_years("2017,2024")
    [2017, 2024]
    """
    years: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                start, end = (int(p) for p in part.split("-", 1))
                if end < start:
                    raise UsageError(f"--years range {part!r} runs backwards; write e.g. 2018-2024")
                years.extend(range(start, end + 1))
            elif part:
                years.append(int(part))
    except ValueError as err:
        raise UsageError(
            f"--years {text!r} is not a year list; write e.g. 2018-2024 or 2018,2020"
        ) from err
    if not years:
        raise UsageError("--years is empty; write e.g. 2018-2024")
    return years


def sites_of(args: argparse.Namespace) -> list[Any]:
    import xembed

    if args.sites == "demo":
        sites = xembed.demo_sites()
    else:
        if not Path(args.sites).exists():
            raise UsageError(f"site file {args.sites!r} does not exist")
        try:
            sites = xembed.load_sites(
                args.sites,
                id_field=args.id_field,
                start_year_field=args.start_year_field,
                layer=args.layer,
            )
        except (xembed.SiteError, OSError) as err:
            raise UsageError(str(err)) from err
    if args.site:
        wanted = {str(s) for s in args.site}
        sites = [s for s in sites if str(s.id) in wanted]
        missing = wanted - {str(s.id) for s in sites}
        if missing:
            raise UsageError(f"--site {sorted(missing)} not in {args.sites!r}")
    return sites


def source_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"source": args.source}
    if args.root:
        kwargs["root"] = args.root
    if args.project:
        kwargs["project"] = args.project
    return kwargs


def each_site(
    args: argparse.Namespace,
    sites: Sequence[Any],
    work: Callable[[Any], Any],
    desc: str,
    failed: list[str] | None = None,
) -> Iterator[tuple[Any, Any]]:
    """Run ``work`` per site with a progress bar; name the site on failure.

    A failing site raises :class:`SiteFailure`, or with a ``failed`` list is
    recorded there (one line naming it) and skipped.
    """
    from tqdm.auto import tqdm

    import xembed

    for site in tqdm(sites, desc=desc, unit="site", disable=args.quiet, file=sys.stderr):
        try:
            result = work(site)
        except UsageError:
            raise
        except (xembed.SourceError, NotImplementedError) as err:
            raise UsageError(str(err)) from err
        except Exception as err:
            if isinstance(err, ValueError) and "years" in str(err):
                raise UsageError(str(err)) from err
            detail = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            if failed is None:
                raise SiteFailure(f"site {site.id}: {detail}") from err
            failed.append(f"site {site.id}: {detail}")
            continue
        yield site, result


def table_path(text: str) -> Path:
    """``--out`` of a table, checked before any work."""
    if Path(text).suffix not in (".csv", ".parquet"):
        raise UsageError(f"--out {text!r} must end in .csv or .parquet")
    return Path(text)


def atomic_table(table: Any, path: Path) -> None:
    """Write ``table`` as CSV or Parquet (by suffix) without its index; never half-written."""
    write = {".parquet": table.to_parquet, ".csv": table.to_csv}.get(path.suffix)
    if write is None:  # checked before anything is written
        raise UsageError(f"--out {str(path)!r} must end in .csv or .parquet")
    atomic_write(path, lambda tmp: write(tmp, index=False))


def open_site(site: Any, args: argparse.Namespace, **kwargs: Any) -> Any:
    import xembed

    return xembed.open_embeddings(site, parse_years(args.years), **source_kwargs(args), **kwargs)


def add_common(p: argparse.ArgumentParser, *, out: str, years: bool = True) -> None:
    p.add_argument(
        "sites", metavar="SITES", help="site file (GeoJSON, GeoPackage, Shapefile) or 'demo'"
    )
    if years:
        p.add_argument("--years", required=True, help="e.g. 2018-2024 or 2018,2020")
    p.add_argument("--out", required=True, help=out)
    p.add_argument(
        "--source",
        default="sample",
        help="sample (default), cog (public mirror), ee (Earth Engine) or a mirror folder",
    )
    p.add_argument("--root", help="mirror location for --source cog/sample (folder or URL)")
    p.add_argument("--project", help="Google Cloud project for --source ee")
    p.add_argument("--site", action="append", help="only this site id (repeatable)")
    p.add_argument("--id-field", help="column holding site ids (default: rid, id or site_id)")
    p.add_argument(
        "--start-year-field",
        default="start_year",
        help="column holding each site's start year (default: %(default)s)",
    )
    p.add_argument("--layer", help="layer of a multi-layer site file (e.g. a GeoPackage)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_min_valid(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--min-valid",
        type=float,
        default=0.9,
        help="warn about site-years with data under less than this share of the site "
        "(0..1, default: %(default)s; 0 never warns)",
    )
