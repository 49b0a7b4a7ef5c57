"""``cache info`` / ``cache clear``: what is kept of remote mirror reads."""

from __future__ import annotations

import argparse
from typing import Any

from xembed.cli.common import SiteFailure, UsageError


def _size(n: int) -> str:
    for factor, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"


def _cache(args: argparse.Namespace) -> int:
    """``xembed cache info|clear``: what is kept of remote mirror reads."""
    from xembed._util import cache_dir
    from xembed.sources import index, rangecache

    try:
        ranges = rangecache.default_cache()
    except ValueError as err:  # a bad XEMBED_CACHE_BYTES
        raise UsageError(str(err)) from err
    bound = f"of {_size(ranges.max_bytes)}" if ranges else "(disabled: XEMBED_CACHE_BYTES=0)"
    ranges = ranges or rangecache.RangeCache(cache_dir() / "ranges", 1)  # to read the folder
    copies = sorted(index.kept_folder().glob("*.index"))
    if args.action == "info":
        info = ranges.info()
        kept = sum(p.stat().st_size for p in copies)
        print(f"cache folder: {cache_dir()} (XEMBED_CACHE)")
        print(f"fetched byte ranges: {info['entries']} entries, {_size(info['bytes'])} {bound}")
        print(f"mirror indexes: {len(copies)} kept, {_size(kept)} (revalidated daily)")
        return 0
    try:
        freed = ranges.clear()
        for path in copies:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue  # another process removed it first
            freed += size
    except OSError as err:
        raise SiteFailure(f"could not clear the cache in {cache_dir()}: {err}") from err
    if not args.quiet:
        print(f"freed {_size(freed)} from {cache_dir()} (fetched byte ranges and mirror indexes)")
    return 0


def add_cache(sub: Any) -> None:
    p = sub.add_parser(
        "cache",
        help="show or clear what is kept of remote mirror reads",
        description=(
            "info: entries and size of the kept byte ranges (bound: XEMBED_CACHE_BYTES) and "
            "mirror indexes, under XEMBED_CACHE. clear: delete them (not the sample data)."
        ),
    )
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument("--quiet", action="store_true", help="clear: print nothing")
    p.set_defaults(func=_cache)
