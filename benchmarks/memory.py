"""Peak memory of reducing one site much larger than a chunk: bounded by chunks, not the cube.

A synthetic mirror in the public mirror's on-disk format (bottom-up int8
GeoTIFFs, band-separate planes, nodata -128, ZSTD, tiled; an
``aef_index.parquet`` written by :func:`xembed.sources.mirror.write_index`;
no overviews, which no read uses) is written once to a cache folder: a square
of ``--mirror-km`` in UTM zone 22S, files of 2048 x 2048 px with 256 x 256 px
internal tiles (the real mirror's layout at a quarter of its scale), smooth
fields plus per-pixel noise (so ZSTD has realistic work, ~2x). One square site
of ``--km`` per side is then opened with :func:`xembed.open_embeddings` and
reduced with ``.embed.polygon_mean()`` (and with :func:`xembed.extract`),
while a background thread samples the process's resident set size.

The cube of a 20 km x 20 km site over 8 years is 2000 x 2000 px x 64 bands x
8 years of float32 = 8.2 GB (a 35.8 km site makes the 26 GB of the issue);
the default chunks hold 8 years x 64 bands x 256 x 256 px = 134 MB each.

Usage::

    python -m benchmarks.memory                 # 20 km site, 8 years
    python -m benchmarks.memory --km 35.8       # ~26 GB cube
    python -m benchmarks.memory --quick         # 5 km, 2 years

The mirror writer here (:func:`write_synthetic_mirror`) is shared with
``benchmarks.batch``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._util import PeakRSS, command_line, dask_threads, machine, mib, table

ZONE = "22S"
CRS = "EPSG:32722"
# North-west corner of the synthetic mirror (UTM 22S, about -48.6 deg, -22.6 deg):
# on the 10 m lattice, deliberately not on a multiple of the 2.56 km tiles.
WEST, NORTH = 700_130.0, 7_510_270.0
FILE_PX = 2048
BLOCK_PX = 256
RES = 10.0
#: The full benchmark mirror: 4096 px = 40.96 km square, 2017-2024 (2 x 2 files a year).
FULL_PX, FULL_YEARS = 4096, tuple(range(2017, 2025))
#: The --quick mirror: 1024 px = 10.24 km square, 2017-2018.
QUICK_PX, QUICK_YEARS = 1024, (2017, 2018)


def default_cache() -> Path:
    base = os.environ.get("XEMBED_BENCH_CACHE")
    if base:
        return Path(base)
    return Path(__file__).resolve().parent.parent / ".cache" / "benchmarks"


def write_synthetic_mirror(
    root: Path,
    *,
    size_px: int,
    years: Sequence[int],
    file_px: int = FILE_PX,
    block_px: int = BLOCK_PX,
    noise: int = 3,
    seed: int = 0,
) -> Path:
    """Write a square mirror of ``size_px`` pixels per side (files of ``file_px``).

    Values are int8 ``round(40 * smooth + noise)``: ``smooth`` a per-band random
    field on a 640 m grid (nearest-neighbour upsampled), ``noise`` uniform in
    ``-noise..noise``. Files are written band by band (4 MB in memory at a time
    for 2048 px files), so any size is cheap in memory; the folder is complete
    when ``aef_index.parquet`` exists (written last, atomically).
    """
    import rasterio
    from affine import Affine

    from xembed.schema import BANDS
    from xembed.sources import mirror

    root.mkdir(parents=True, exist_ok=True)
    n_files = -(-size_px // file_px)
    rng = np.random.default_rng(seed)
    bank = rng.integers(-noise, noise + 1, size=file_px * file_px * 4, dtype=np.int8)
    coarse_px = 64
    records = []
    t0 = time.perf_counter()
    for year in years:
        for fy in range(n_files):
            for fx in range(n_files):
                h = min(file_px, size_px - fy * file_px)
                w = min(file_px, size_px - fx * file_px)
                west = WEST + fx * file_px * RES
                north = NORTH - fy * file_px * RES
                south = north - h * RES
                image = mirror.ee_image_id("xembed-bench", year, fy, fx)
                rel = mirror.tile_path(year, ZONE, image, fy * file_px, fx * file_px)
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                profile = {
                    "driver": "GTiff",
                    "width": w,
                    "height": h,
                    "count": len(BANDS),
                    "dtype": "int8",
                    "nodata": -128,
                    "crs": CRS,
                    "transform": Affine(RES, 0.0, west, 0.0, RES, south),  # bottom-up
                    "tiled": True,
                    "blockxsize": block_px,
                    "blockysize": block_px,
                    "compress": "zstd",
                    "zstd_level": 1,
                    "interleave": "band",
                    "BIGTIFF": "IF_SAFER",
                    "NUM_THREADS": "ALL_CPUS",
                }
                cy = -(-h // coarse_px)
                cx = -(-w // coarse_px)
                with rasterio.open(tmp, "w", **profile) as dst:
                    for b in range(len(BANDS)):
                        field = rng.normal(size=(cy, cx)).astype(np.float32)
                        smooth = np.repeat(np.repeat(field, coarse_px, 0), coarse_px, 1)[:h, :w]
                        start = int(rng.integers(0, bank.size - h * w))
                        values = 40.0 * smooth + bank[start : start + h * w].reshape(h, w)
                        q = np.clip(np.rint(values), -127, 127).astype(np.int8)
                        dst.write(q[::-1], b + 1)  # north-up array, stored bottom-up
                    dst.descriptions = BANDS
                os.replace(tmp, path)
                records.append(
                    {
                        "path": rel,
                        "crs": CRS,
                        "year": int(year),
                        "utm_zone": ZONE,
                        "utm_west": west,
                        "utm_south": south,
                        "utm_east": west + w * RES,
                        "utm_north": north,
                    }
                )
        print(
            f"  wrote year {year} ({time.perf_counter() - t0:.0f} s so far)",
            file=sys.stderr,
            flush=True,
        )
    mirror.write_index(root, records)
    return root


def synthetic_mirror(size_px: int, years: Sequence[int], cache: Path | None = None) -> Path:
    """The cached synthetic mirror for these arguments (written on first use)."""
    cache = cache or default_cache()
    root = cache / f"mirror-{size_px}px-{min(years)}-{max(years)}-f{FILE_PX}-b{BLOCK_PX}"
    if not (root / "aef_index.parquet").is_file():
        print(f"writing the synthetic mirror {root} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        write_synthetic_mirror(root, size_px=size_px, years=years)
        size = sum(f.stat().st_size for f in root.rglob("*.tiff"))
        print(
            f"wrote {root} ({size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    return root


def square_site(km: float, *, inset_m: float = 1000.0) -> Any:
    """A square site of ``km`` per side, ``inset_m`` in from the mirror's north-west corner."""
    import pyproj
    import shapely

    from xembed.sites import Site

    side = km * 1000.0
    west, north = WEST + inset_m + 3.3, NORTH - inset_m - 4.4  # off the lattice
    box = shapely.box(west, north - side, west + side, north)
    to_ll = pyproj.Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    dense = shapely.segmentize(box, 500.0)
    lonlat = shapely.transform(dense, lambda xy: np.column_stack(to_ll.transform(*xy.T)))
    return Site(id=f"square-{km:g}km", start_year=None, geometry=lonlat)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--km", type=float, default=20.0, help="site side (default 20 km)")
    parser.add_argument("--years", type=int, default=8, help="years from 2017 (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="dask threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="5 km, 2 years")
    parser.add_argument("--skip-extract", action="store_true", help="only polygon_mean")
    args = parser.parse_args(argv)
    if args.quick:
        args.km, args.years = 5.0, 2

    import xembed
    from xembed.cube import DEFAULT_CHUNKS

    years = list(range(2017, 2017 + args.years))
    if args.quick:  # a small mirror of its own
        root = synthetic_mirror(QUICK_PX, QUICK_YEARS)
    else:  # the 41 km x 41 km, 8-year mirror that benchmarks.batch uses too
        if args.km * 1000 + 2000 > FULL_PX * RES or args.years > len(FULL_YEARS):
            parser.error(f"--km must be <= {FULL_PX * RES / 1000 - 2:g} and --years <= 8")
        root = synthetic_mirror(FULL_PX, FULL_YEARS)
    site = square_site(args.km)
    print(f"# Peak memory: one {args.km:g} km x {args.km:g} km site, {len(years)} years")
    print()
    print(f"`{command_line()}`")
    print()
    print(machine())
    print()
    cube = xembed.open_embeddings(site, years, source=root)
    cube_bytes = cube["embeddings"].nbytes
    chunk = cube["embeddings"].data.chunksize
    chunk_bytes = int(np.prod(chunk)) * 4
    print(
        f"cube {dict(cube['embeddings'].sizes)} float32 = {cube_bytes / 1e9:.2f} GB in "
        f"{cube['embeddings'].data.npartitions} chunks of {chunk} = {chunk_bytes / 1e6:.0f} MB "
        f"(DEFAULT_CHUNKS = {DEFAULT_CHUNKS}); {args.threads} dask threads"
    )
    print()
    rows = []
    runs: list[tuple[str, Any]] = [
        ("open_embeddings(...).embed.polygon_mean().compute()", None),
    ]
    if not args.skip_extract:
        runs.append(("xembed.extract([site], years, source=mirror)", None))
    for name, _ in runs:
        with dask_threads(args.threads), PeakRSS(interval=0.005) as peak:
            t0 = time.perf_counter()
            if name.startswith("open"):
                result = (
                    xembed.open_embeddings(site, years, source=root).embed.polygon_mean().compute()
                )
                finite = bool(np.isfinite(result.values).all())
            else:
                frame = xembed.batch.extract([site], years, source=root, progress=False)
                finite = bool(np.isfinite(frame.iloc[:, 3:].to_numpy()).all())
            elapsed = time.perf_counter() - t0
        assert finite, "the site's means should all be finite"
        rows.append(
            [
                name,
                f"{elapsed:.1f}",
                f"{mib(peak.increase):,.0f}",
                f"{cube_bytes / max(peak.increase, 1):,.0f}x",
                f"{peak.increase / chunk_bytes:.1f}",
            ]
        )
        print(
            f"  {name}: {elapsed:.1f} s, peak RSS +{mib(peak.increase):,.0f} MiB", file=sys.stderr
        )
    print(
        table(
            ["run", "time (s)", "peak RSS increase (MiB)", "cube / peak", "peak in chunks"],
            rows,
        )
    )
    print()
    print(f"cube size: {mib(cube_bytes):,.0f} MiB; one chunk: {mib(chunk_bytes):,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
