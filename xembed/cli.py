"""The ``xembed`` command line.

Subcommands: ``extract`` (yearly polygon means), ``similarity`` (per-site
matrices), ``cube`` (Zarr export), ``render`` (frames, strips, GIFs) and
``demo`` (all of it on the bundled sample). ``SITES`` is a GeoJSON,
GeoPackage or Shapefile, or the word ``demo`` for the demo sites.

Exit codes: 0 ok, 2 bad usage or input (one-line reason), 1 a failure with
the site named.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from xembed._util import atomic_write

__all__ = ["main", "parse_years"]


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


def _sites(args: argparse.Namespace) -> list[Any]:
    import xembed

    if args.sites == "demo":
        sites = xembed.demo_sites()
    else:
        if not Path(args.sites).exists():
            raise UsageError(f"site file {args.sites!r} does not exist")
        try:
            sites = xembed.load_sites(args.sites, id_field=args.id_field)
        except (xembed.SiteError, OSError) as err:
            raise UsageError(str(err)) from err
    if args.site:
        wanted = {str(s) for s in args.site}
        sites = [s for s in sites if str(s.id) in wanted]
        missing = wanted - {str(s.id) for s in sites}
        if missing:
            raise UsageError(f"--site {sorted(missing)} not in {args.sites!r}")
    return sites


def _source_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"source": args.source}
    if args.root:
        kwargs["root"] = args.root
    if args.project:
        kwargs["project"] = args.project
    return kwargs


def _each_site(
    args: argparse.Namespace, sites: Sequence[Any], work: Callable[[Any], Any], desc: str
) -> Iterator[tuple[Any, Any]]:
    """Run ``work`` per site with a progress bar; name the site on failure."""
    from tqdm.auto import tqdm

    import xembed

    for site in tqdm(sites, desc=desc, unit="site", disable=args.quiet, file=sys.stderr):
        try:
            yield site, work(site)
        except UsageError:
            raise
        except (xembed.SourceError, NotImplementedError) as err:
            raise UsageError(str(err)) from err
        except ValueError as err:
            if "years" in str(err):
                raise UsageError(str(err)) from err
            raise SiteFailure(f"site {site.id}: {err}") from err
        except Exception as err:
            raise SiteFailure(f"site {site.id}: {type(err).__name__}: {err}") from err


def _atomic_table(table: Any, path: Path) -> None:
    """Write ``table`` as CSV or Parquet (by suffix) without its index; never half-written."""
    write = {".parquet": table.to_parquet, ".csv": table.to_csv}.get(path.suffix)
    if write is None:  # checked before anything is written
        raise UsageError(f"--out {str(path)!r} must end in .csv or .parquet")
    atomic_write(path, lambda tmp: write(tmp, index=False))


def _open(site: Any, args: argparse.Namespace, **kwargs: Any) -> Any:
    import xembed

    return xembed.open_embeddings(site, parse_years(args.years), **_source_kwargs(args), **kwargs)


# --- subcommands ----------------------------------------------------------------


def _extract(args: argparse.Namespace) -> int:
    """All sites through :func:`xembed.batch.extract`: shared reads, resumable with ``--store``.

    Writes the notebook's table (``site_id, year, A00..A63``) of every site
    that succeeded; if some failed, prints one line per failure and returns 1.
    """
    import warnings

    import pandas as pd

    import xembed
    from xembed.batch import extract

    out = Path(args.out)
    if out.suffix not in (".csv", ".parquet"):
        raise UsageError(f"--out {args.out!r} must end in .csv or .parquet")
    sites = _sites(args)
    store = getattr(args, "store", None)
    try:
        with warnings.catch_warnings():
            # The failures are summarised below, one line each.
            warnings.filterwarnings("ignore", r"xembed\.extract: ", UserWarning)
            table = extract(
                sites,
                parse_years(args.years),
                **_source_kwargs(args),
                stats=(args.reducer,),
                store=store,
                progress=not args.quiet,
            )
    except (xembed.XembedError, ValueError, NotImplementedError) as err:
        raise UsageError(str(err)) from err
    errors = table.attrs["errors"]
    means = table.drop(columns="stat")
    means.attrs = {}  # pandas cannot write a DataFrame held in attrs to Parquet
    _atomic_table(means, out)
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
        return xembed.similarity_matrix(_open(site, args), normalize=not args.raw).to_pandas()

    for site, matrix in _each_site(args, sites, work, "similarity"):
        path = out / f"similarity_{site.id}.csv"
        matrix.index.name = "year"
        atomic_write(path, matrix.to_csv)
        written.append(path)
    return written


def _similarity(args: argparse.Namespace) -> int:
    written = _similarity_tables(args, Path(args.out), _sites(args))
    print(f"wrote {len(written)} similarity matrices to {args.out}")
    return 0


def _cube(args: argparse.Namespace) -> int:
    from xembed import export

    out = Path(args.out)
    if out.suffix != ".zarr":
        raise UsageError(f"--out {args.out!r} must end in .zarr")
    sites = _sites(args)
    cubes = {
        str(site.id): cube
        for site, cube in _each_site(
            args, sites, lambda s: _open(s, args, buffer=args.buffer, clip=not args.no_clip), "open"
        )
    }
    mode: Literal["w", "w-"] = "w" if args.overwrite else "w-"
    try:
        if len(cubes) == 1:
            export.to_zarr(next(iter(cubes.values())), out, quantize=args.int8, mode=mode)
        else:
            export.write_sites_zarr(cubes, out, quantize=args.int8, mode=mode)
    except FileExistsError as err:
        raise UsageError(f"{err} (pass --overwrite to replace it)") from err
    print(f"wrote {out} ({len(cubes)} site{'s' if len(cubes) > 1 else ''})")
    return 0


def _render_site(site: Any, args: argparse.Namespace, out: Path) -> list[Path]:
    from xembed import render

    cube = _open(site, args, buffer=args.buffer, clip=False)
    if args.pca:
        image = cube.embed.pca_rgb()
        what = "PCA"
    else:
        bands = [b.strip() for b in args.bands.split(",")]
        image = cube.embed.rgb(bands)
        what = "/".join(bands)
    frames = render.frames(
        image, boundary=site, dimensions=args.dimensions, label=lambda y: f"{site.id} {y} {what}"
    )
    written = []
    years = [int(y) for y in cube["year"].values]
    if not (args.gif or args.strip):
        for year, frame in zip(years, frames, strict=True):
            path = out / f"site_{site.id}_{year}.png"
            render.save_png(frame, path)
            written.append(path)
    if args.strip:
        path = out / f"site_{site.id}_strip.png"
        render.save_strip(frames, path)
        written.append(path)
    if args.gif:
        path = out / f"site_{site.id}.gif"
        render.save_gif(frames, path, duration_ms=args.duration_ms)
        written.append(path)
    return written


def _render(args: argparse.Namespace) -> int:
    if args.pca and args.bands_given:
        raise UsageError("--bands and --pca exclude each other; pick one")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        p
        for _, paths in _each_site(
            args, _sites(args), lambda s: _render_site(s, args, out), "render"
        )
        for p in paths
    ]
    print(f"wrote {len(written)} images to {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import pandas as pd

    import xembed
    from xembed import export, render
    from xembed.sources.sample import SAMPLE_YEARS

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    root = xembed.sample_root()
    sites = xembed.demo_sites()
    years = list(SAMPLE_YEARS)
    args.years = f"{years[0]}-{years[-1]}"
    args.source, args.root, args.project = "sample", str(root), None
    args.raw = False
    written: list[Path] = []

    # Each site is read once: cubes are small, so keep them in memory for the
    # means, the matrices and the Zarr store.
    cubes, tables = {}, []
    (out / "similarity").mkdir(exist_ok=True)
    for site, cube in _each_site(args, sites, lambda s: _open(s, args).persist(), "sites"):
        cubes[str(site.id)] = cube
        mean = cube.embed.polygon_mean().compute()
        tables.append(xembed.to_frame(mean))
        matrix = xembed.similarity_matrix(mean).to_pandas()
        matrix.index.name = "year"
        path = out / "similarity" / f"similarity_{site.id}.csv"
        matrix.to_csv(path)
        written.append(path)
    means = pd.concat(tables, ignore_index=True)
    _atomic_table(means, out / "means.csv")
    written.insert(0, out / "means.csv")

    showcase = next((s for s in sites if s.id == 3110), sites[0])
    context = xembed.open_embeddings(showcase, years, root=root, buffer=500, clip=False).persist()
    frames = render.frames(context.embed.rgb(), boundary=showcase, dimensions=400)
    render.save_strip(frames, out / f"site_{showcase.id}_strip.png")
    render.save_gif(frames, out / f"site_{showcase.id}.gif", duration_ms=700)
    written += [out / f"site_{showcase.id}_strip.png", out / f"site_{showcase.id}.gif"]

    change = context.embed.change()
    last = years[-1]
    fig = render.plot_change(change, last, boundary=showcase)
    render.save_figure(fig, out / f"site_{showcase.id}_change_{last}.png")
    written.append(out / f"site_{showcase.id}_change_{last}.png")
    fig = render.plot_similarity_matrix(xembed.similarity_matrix(context))
    render.save_figure(fig, out / f"site_{showcase.id}_similarity.png")
    written.append(out / f"site_{showcase.id}_similarity.png")

    cube_path = out / "demo_sites.zarr"
    export.write_sites_zarr(cubes, cube_path, mode="w")
    written.append(cube_path)

    elapsed = time.perf_counter() - start
    print(f"xembed demo: {len(sites)} sites x {len(years)} years in {elapsed:.1f} s")
    for path in written:
        size = (
            sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            if path.is_dir()
            else path.stat().st_size
        )
        print(f"  {path}  ({size / 1e6:.2f} MB)")
    print(f"sample mirror: {root}")
    return 0


# --- parser -----------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, *, years: bool = True) -> None:
    p.add_argument(
        "sites", metavar="SITES", help="site file (GeoJSON, GeoPackage, Shapefile) or 'demo'"
    )
    if years:
        p.add_argument("--years", required=True, help="e.g. 2018-2024 or 2018,2020")
    p.add_argument(
        "--source",
        default="sample",
        help="sample (default), cog (public mirror), ee (Earth Engine) or a mirror folder",
    )
    p.add_argument("--root", help="mirror location for --source cog/sample (folder or URL)")
    p.add_argument("--project", help="Google Cloud project for --source ee")
    p.add_argument("--site", action="append", help="only this site id (repeatable)")
    p.add_argument("--id-field", help="column holding site ids (default: rid, id or site_id)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_extract(sub: Any) -> None:
    p = sub.add_parser(
        "extract",
        help="yearly polygon means of every site into one table",
        description="Coverage-weighted yearly statistic per site: site_id, year, A00..A63.",
    )
    _common(p)
    p.add_argument("--out", required=True, help="output table (.csv or .parquet)")
    p.add_argument(
        "--reducer",
        default="mean",
        choices=["mean", "median", "std", "min", "max", "count"],
        help="statistic (default: %(default)s)",
    )
    p.set_defaults(func=_extract)


def _add_similarity(sub: Any) -> None:
    p = sub.add_parser(
        "similarity",
        help="per-site year-by-year cosine similarity matrices",
        description="One CSV per site: cosine similarity between its yearly mean embeddings.",
    )
    _common(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--raw",
        action="store_true",
        help="the original notebook's raw dot product of means instead of the cosine",
    )
    p.set_defaults(func=_similarity)


def _add_cube(sub: Any) -> None:
    p = sub.add_parser(
        "cube",
        help="write site cubes to a Zarr store",
        description="One site: a cube store; several: one group per site (an xarray DataTree).",
    )
    _common(p)
    p.add_argument("--out", required=True, help="output store (.zarr)")
    p.add_argument("--buffer", type=float, default=0.0, help="metres of context (default 0)")
    p.add_argument("--no-clip", action="store_true", help="keep pixels outside the polygon")
    p.add_argument("--int8", action="store_true", help="re-quantise to int8 (4x smaller)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.set_defaults(func=_cube)


def _add_render(sub: Any) -> None:
    p = sub.add_parser(
        "render",
        help="RGB frames, strips and GIFs of every site",
        description="Frames with the site boundary and a label, per year.",
    )
    _common(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--gif", action="store_true", help="one GIF per site")
    p.add_argument("--strip", action="store_true", help="one PNG strip per site")
    p.add_argument("--bands", help="three bands for red, green, blue (default A01,A16,A09)")
    p.add_argument(
        "--pca", action="store_true", help="colour by the first three principal components"
    )
    p.add_argument("--buffer", type=float, default=500.0, help="metres of context (default 500)")
    p.add_argument("--dimensions", type=int, default=500, help="frame size in pixels (default 500)")
    p.add_argument("--duration-ms", type=int, default=700, help="GIF frame duration (default 700)")
    p.set_defaults(func=_render)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job on the bundled sample data",
        description=(
            "On the bundled sample: yearly means of every demo site, similarity matrices, "
            "a strip, a GIF, a change map and a Zarr store of all sites."
        ),
    )
    p.add_argument("--out", default="xembed-demo", help="output folder (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_demo)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xembed",
        description="AlphaEarth Foundations satellite embeddings as lazy xarray cubes.",
        epilog="Exit codes: 0 ok, 2 bad usage or input, 1 a site failed.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_extract(sub)
    _add_similarity(sub)
    _add_cube(sub)
    _add_render(sub)
    _add_demo(sub)
    return parser


def _version() -> str:
    # The package root holds the one version (and its fallback for a source tree).
    import xembed

    return f"xembed {xembed.__version__}"


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
        return int(args.func(args))
    except UsageError as err:
        print(f"xembed {args.command}: {err}", file=sys.stderr)
        return 2
    except SiteFailure as err:
        print(f"xembed {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
