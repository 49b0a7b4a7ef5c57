"""``cube``, ``render`` and ``demo``: cubes, pictures, and all of it on the sample."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Literal

from xembed._util import atomic_write
from xembed.cli.common import (
    SiteFailure,
    UsageError,
    add_common,
    atomic_table,
    each_site,
    open_site,
    sites_of,
)


def _cube(args: argparse.Namespace) -> int:
    from xembed import export

    out = Path(args.out)
    if out.suffix not in (".zarr", ".nc"):
        raise UsageError(f"--out {args.out!r} must end in .zarr (Zarr) or .nc (NetCDF)")
    sites = sites_of(args)
    if out.suffix == ".nc" and len(sites) > 1:
        raise UsageError(
            f"a NetCDF file holds one site and {args.sites!r} has {len(sites)}: "
            "pick one with --site ID, or write .zarr (one group per site)"
        )
    cubes = {
        str(site.id): cube
        for site, cube in each_site(
            args,
            sites,
            lambda s: open_site(s, args, buffer=args.buffer, clip=not args.no_clip),
            "open",
        )
    }
    mode: Literal["w", "w-"] = "w" if args.overwrite else "w-"
    try:
        if len(cubes) == 1:
            write = export.to_netcdf if out.suffix == ".nc" else export.to_zarr
            write(next(iter(cubes.values())), out, quantize=args.int8, mode=mode)
        else:
            export.write_sites_zarr(cubes, out, quantize=args.int8, mode=mode)
    except FileExistsError as err:
        raise UsageError(f"{err} (pass --overwrite to replace it)") from err
    print(f"wrote {out} ({len(cubes)} site{'s' if len(cubes) > 1 else ''})")
    return 0


def _render_site(site: Any, args: argparse.Namespace, out: Path) -> list[Path]:
    from xembed import render

    cube = open_site(site, args, buffer=args.buffer, clip=False)
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
        for _, paths in each_site(
            args, sites_of(args), lambda s: _render_site(s, args, out), "render"
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
    for site, cube in each_site(args, sites, lambda s: open_site(s, args).persist(), "sites"):
        cubes[str(site.id)] = cube
        mean = cube.embed.polygon_mean().compute()
        tables.append(xembed.to_frame(mean))
        matrix = xembed.similarity_matrix(mean).to_pandas()
        matrix.index.name = "year"
        path = out / "similarity" / f"similarity_{site.id}.csv"
        atomic_write(path, matrix.to_csv)  # never a half-written table, as the others
        written.append(path)
    means = pd.concat(tables, ignore_index=True)
    atomic_table(means, out / "means.csv")
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

    from xembed.report.build import build_report

    # min_valid=0: the means above warned already; the index shows each valid fraction
    built = build_report(
        sites, years, out / "report", root=root, progress=not args.quiet, min_valid=0
    )
    if built.failures:
        raise SiteFailure(f"report: {built.failed_text()}")
    written.append(built.index)

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
    print(f"report (open it in a browser): {built.index}")
    return 0


def add_cube(sub: Any) -> None:
    p = sub.add_parser(
        "cube",
        help="write site cubes to a Zarr store or a NetCDF file",
        description=(
            "One site: a cube (.zarr or .nc; open it with xembed.open_cube); several: a Zarr "
            "store with one group per site (an xarray DataTree; xembed.open_sites)."
        ),
    )
    add_common(p, out="output store (.zarr) or file (.nc, one site)")
    p.add_argument("--buffer", type=float, default=0.0, help="metres of context (default 0)")
    p.add_argument("--no-clip", action="store_true", help="keep pixels outside the polygon")
    p.add_argument("--int8", action="store_true", help="re-quantise to int8 (4x smaller)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.set_defaults(func=_cube)


def add_render(sub: Any) -> None:
    p = sub.add_parser(
        "render",
        help="RGB frames, strips and GIFs of every site",
        description="Frames with the site boundary and a label, per year.",
    )
    add_common(p, out="output folder")
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


def add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job on the bundled sample data",
        description=(
            "On the bundled sample: yearly means of every demo site, similarity matrices, "
            "a strip, a GIF, a change map, a Zarr store of all sites and an HTML report "
            "(report/index.html)."
        ),
    )
    p.add_argument("--out", default="xembed-demo", help="output folder (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_demo)
