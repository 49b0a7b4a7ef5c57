"""The ``xembed`` command line.

Subcommands: ``extract`` (yearly polygon means), ``change`` (change since
each site's start year), ``similarity`` (per-site matrices), ``cube`` (Zarr or
NetCDF export), ``render`` (frames, strips, GIFs), ``report`` (a static HTML
report of every site), ``sample`` / ``classify`` (embeddings at labelled
points, class maps) and ``demo`` (all of it on the bundled sample);
``cache info`` / ``cache clear`` show or delete what is kept of remote
mirror reads. ``SITES`` is a GeoJSON, GeoPackage or
Shapefile, or the word ``demo`` for the demo sites.

Exit codes: 0 ok, 2 bad usage or input (one-line reason), 1 a failure with
the site named.
"""

from __future__ import annotations

import argparse
import functools
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from xembed.cli.cache import add_cache
from xembed.cli.common import SiteFailure, UsageError, parse_years
from xembed.cli.learn import add_classify, add_sample
from xembed.cli.pictures import add_cube, add_demo, add_render
from xembed.cli.report import add_report
from xembed.cli.tables import add_change, add_extract, add_similarity

__all__ = ["SiteFailure", "UsageError", "main", "parse_years"]


# --- subcommands ----------------------------------------------------------------


# --- parser -----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xembed",
        description="AlphaEarth Foundations satellite embeddings as lazy xarray cubes.",
        epilog="Exit codes: 0 ok, 2 bad usage or input, 1 a site failed.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_extract(sub)
    add_change(sub)
    add_similarity(sub)
    add_cube(sub)
    add_render(sub)
    add_demo(sub)
    add_report(sub)
    add_cache(sub)
    add_sample(sub)
    add_classify(sub)
    return parser


def _version() -> str:
    # The package root holds the one version (and its fallback for a source tree).
    import xembed

    return f"xembed {xembed.__version__}"


def _warn(
    show: Callable[..., None], args: argparse.Namespace, message: Any, category: Any, *rest: Any
) -> None:
    """``warnings.showwarning`` of the command: a user warning is one line naming it."""
    if issubclass(category, UserWarning):
        print(f"xembed {args.command}: warning: {message}", file=sys.stderr)
    else:
        show(message, category, *rest)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    Examples
    --------
    >>> main(["extract", "demo", "--years", "2019-2017", "--out", "x.csv"])
    2
    """
    args = _parser().parse_args(argv)
    try:
        if getattr(args, "years", None) is not None:
            parse_years(args.years)  # bad years are a usage error before any work
    except UsageError as err:
        print(f"xembed {args.command}: {err}", file=sys.stderr)
        return 2
    if args.command == "render":
        args.bands_given = args.bands is not None
        args.bands = args.bands or "A01,A16,A09"
    try:
        with warnings.catch_warnings():  # xembed's warnings as one line each, on stderr
            warnings.showwarning = functools.partial(_warn, warnings.showwarning, args)
            return int(args.func(args))
    except UsageError as err:
        print(f"xembed {args.command}: {err}", file=sys.stderr)
        return 2
    except SiteFailure as err:
        print(f"xembed {args.command}: {err}", file=sys.stderr)
        return 1
