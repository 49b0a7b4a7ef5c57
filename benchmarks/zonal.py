"""Polygon means of many sites: ``xembed.ops.zonal_mean`` vs exactextract, same GeoTIFF.

A synthetic ``(64, size, size)`` float32 raster (10 m UTM pixels, a few NaN
holes) is written once to a cache directory as a tiled GeoTIFF (512 x 512
blocks, band-separate planes as in the public COG mirror, no compression)
and reused by later runs. ``--polygons`` random star-shaped sites (30 m to
1 km across, some overlapping, a few crossing the raster's edge) are drawn
in the raster's CRS and handed to xembed in EPSG:4326; exactextract gets the
same polygons projected back with :func:`xembed.grid.project`, so both see
the same vertices.

Methods (interleaved rounds, best counts):

- ``exactextract``: ``exact_extract(path, polygons, "mean")``, the coverage-
  weighted mean, reading the file itself (GDAL; one pass per band), with its
  default ``strategy="feature-sequential"`` (a window per polygon) and with
  ``"raster-sequential"`` (a pass over the raster's chunks); the faster is
  the reference;
- ``xembed``: ``rioxarray.open_rasterio(path, chunks=..., lock=False)`` with
  a ``year`` dimension and band names A00..A63, then ``zonal_mean(cube,
  sites).compute()`` on 2 dask threads: the time includes the sites'
  coverage fractions, reading and the reduction;
- ``read once (floor)``: every block of the file read once by 2 threads
  into preallocated buffers, no arithmetic: the floor for any method that
  reads the file; ``read once, fresh arrays`` allocates a new array per
  block, as a dask reader does.

The page cache holds the file (it was just written or read), so these are
CPU and memory timings, not disk timings.

Usage::

    python -m benchmarks.zonal            # 1000 polygons, (64, 4000, 4000): a 4.1 GB file
    python -m benchmarks.zonal --quick    # 100 polygons, (64, 1000, 1000)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._util import (
    Measurement,
    add_idle_timeout,
    command_line,
    dask_threads,
    machine,
    mib,
    table,
)

CRS = "EPSG:32722"
WEST, NORTH, RES = 600_000.0, 7_500_000.0, 10.0
N_BANDS = 64


# --- data ----------------------------------------------------------------------------


def raster_path(cache: Path, size: int, block: int) -> Path:
    return cache / f"zonal_{N_BANDS}x{size}x{size}_f32_tile{block}.tif"


def write_raster(path: Path, size: int, block: int, seed: int = 0) -> None:
    """The test raster, written band by band (one band in memory at a time)."""
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.tif")
    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": N_BANDS,
        "dtype": "float32",
        "crs": CRS,
        "transform": from_origin(WEST, NORTH, RES, RES),
        "nodata": float("nan"),
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "interleave": "band",
        "compress": "none",
        "BIGTIFF": "YES",
    }
    # Smooth-ish fields: a coarse random pattern plus pixel noise, so polygon
    # means differ from site to site.
    coarse_n = max(2, size // 200)
    yy = np.linspace(0, coarse_n - 1, size)
    t0 = time.perf_counter()
    with rasterio.open(tmp, "w", **profile) as dst:
        for b in range(N_BANDS):
            coarse = rng.standard_normal((coarse_n, coarse_n)).astype(np.float32)
            rows = np.array(
                [np.interp(yy, np.arange(coarse_n), coarse[:, j]) for j in range(coarse_n)]
            )
            field = np.array([np.interp(yy, np.arange(coarse_n), rows[:, i]) for i in range(size)])
            band = rng.standard_normal((size, size), dtype=np.float32)
            band *= 0.05
            band += field.astype(np.float32)
            band *= 0.125
            # No data: a square hole in every 8th band, a strip in band 1.
            if b % 8 == 0:
                band[size // 3 : size // 3 + size // 20, size // 2 : size // 2 + size // 20] = (
                    np.nan
                )
            if b == 1:
                band[:, : size // 50] = np.nan
            dst.write(band, b + 1)
    os.replace(tmp, path)
    print(
        f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
        flush=True,
    )


def make_polygons(n: int, size: int, seed: int = 1) -> list[Any]:
    """Random star-shaped (simple) polygons in the raster's CRS."""
    import shapely

    rng = np.random.default_rng(seed)
    extent = size * RES
    out = []
    for _ in range(n):
        r = float(np.clip(rng.lognormal(np.log(150.0), 0.6), 15.0, 500.0))
        # Centres may lie up to half a radius outside: some sites cross the edge.
        cx = WEST + rng.uniform(-0.5 * r, extent + 0.5 * r)
        cy = NORTH - rng.uniform(-0.5 * r, extent + 0.5 * r)
        k = int(rng.integers(8, 40))
        # Jittered, increasing angles and radii > 0: star-shaped around the centre, so simple.
        angles = (np.arange(k) + rng.uniform(0.0, 0.8, k)) * (2 * np.pi / k)
        radii = r * rng.uniform(0.6, 1.0, k)
        out.append(shapely.Polygon(np.c_[cx + radii * np.cos(angles), cy + radii * np.sin(angles)]))
    return out


# --- the methods ----------------------------------------------------------------------


def run_exactextract(path: Path, gdf_utm: Any, strategy: str = "feature-sequential") -> np.ndarray:
    from exactextract import exact_extract

    df = exact_extract(str(path), gdf_utm, "mean", output="pandas", strategy=strategy)
    cols = [f"band_{b + 1}_mean" for b in range(N_BANDS)]
    return df[cols].to_numpy(dtype=np.float64)


def open_cube(path: Path, chunk: int) -> Any:
    import rioxarray

    from xembed.schema import BANDS

    raster = rioxarray.open_rasterio(path, chunks={"band": -1, "y": chunk, "x": chunk}, lock=False)
    return raster.assign_coords(band=list(BANDS)).expand_dims(year=[2024])


def run_xembed(path: Path, sites_gdf: Any, chunk: int, timing: dict[str, float]) -> np.ndarray:
    from xembed.ops import zonal_mean

    t0 = time.perf_counter()
    lazy = zonal_mean(open_cube(path, chunk), sites_gdf)
    t1 = time.perf_counter()
    means = lazy.compute()
    timing.setdefault("graph", []).append(t1 - t0)  # type: ignore[attr-defined]
    timing.setdefault("compute", []).append(time.perf_counter() - t1)  # type: ignore[attr-defined]
    return means.isel(year=0).to_numpy()


def read_once(path: Path, block: int, threads: int, preallocated: bool) -> None:
    """Every block (all bands) read once; per-thread file handles."""
    import threading

    import rasterio
    from rasterio.windows import Window

    local = threading.local()
    with rasterio.open(path) as src:
        height, width = src.height, src.width
    windows = [
        Window(c, r, min(block, width - c), min(block, height - r))
        for r in range(0, height, block)
        for c in range(0, width, block)
    ]

    def work(win: Window) -> None:
        if not hasattr(local, "src"):
            local.src = rasterio.open(path)
            local.buf = np.empty((N_BANDS, block, block), np.float32)
        if preallocated:
            out = local.buf[:, : win.height, : win.width]
            if win.height == block and win.width == block:
                local.src.read(window=win, out=local.buf)
            else:
                local.src.read(window=win, out=np.empty_like(out))
        else:
            local.src.read(window=win)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, windows))


# --- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4000, help="pixels per side (default 4000)")
    parser.add_argument("--polygons", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=512, help="dask chunk of the cube (y, x)")
    parser.add_argument("--block", type=int, default=512, help="GeoTIFF block size")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; best counts (default 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XEMBED_BENCH_CACHE", "/tmp/xembed-bench")),
        help="where the raster is written once (default /tmp/xembed-bench)",
    )
    parser.add_argument(
        "--gdal-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="GDAL configuration for every method (global, so the dask threads see it too), "
        "e.g. GTIFF_DIRECT_IO=YES; repeatable (default: GDAL's defaults)",
    )
    add_idle_timeout(parser)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: --size 1000 --polygons 100 --repeat 1 --idle-timeout 0",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.polygons, args.repeat, args.idle_timeout = 1000, 100, 1, 0.0

    import geopandas as gpd
    import pyproj
    import rasterio
    import shapely

    from xembed.grid import project

    path = raster_path(args.cache_dir, args.size, args.block)
    if not path.exists():
        write_raster(path, args.size, args.block)
    polys_utm = make_polygons(args.polygons, args.size)
    to_lonlat = pyproj.Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    polys_ll = [
        shapely.transform(p, lambda x, y: to_lonlat.transform(x, y), interleaved=False)
        for p in polys_utm
    ]
    ids = np.arange(args.polygons)
    sites_gdf = gpd.GeoDataFrame({"id": ids}, geometry=polys_ll, crs="EPSG:4326")
    # exactextract: the same lon/lat vertices, projected as xembed projects them.
    gdf_utm = gpd.GeoDataFrame(
        {"id": ids}, geometry=[project(p, "EPSG:4326", CRS) for p in polys_ll], crs=CRS
    )
    file_gb = path.stat().st_size / 1e9
    # Warm the page cache so that the first method does not pay for the disk.
    read_once(path, args.block, args.threads, preallocated=True)

    timing: dict[str, Any] = {}
    results: dict[str, np.ndarray] = {}
    methods = [
        (
            "exactextract",
            lambda: results.__setitem__("exactextract", run_exactextract(path, gdf_utm)),
        ),
        (
            "exactextract, raster-sequential",
            lambda: results.__setitem__(
                "exactextract, raster-sequential",
                run_exactextract(path, gdf_utm, "raster-sequential"),
            ),
        ),
        (
            "xembed",
            lambda: results.__setitem__("xembed", run_xembed(path, sites_gdf, args.chunk, timing)),
        ),
        ("read once (floor)", lambda: read_once(path, args.block, args.threads, True)),
        ("read once, fresh arrays", lambda: read_once(path, args.block, args.threads, False)),
    ]
    measured = {name: Measurement(name) for name, _ in methods}
    gdal_config = dict(item.split("=", 1) for item in args.gdal_config)
    with dask_threads(args.threads), rasterio.Env(**gdal_config):
        for round_ in range(args.repeat):
            print(f"round {round_ + 1}/{args.repeat}", file=sys.stderr, flush=True)
            for name, fn in methods:
                measured[name].record(fn, args.idle_timeout)

    xe = results["xembed"]
    diff, nan_agree = 0.0, True
    for ee in (results["exactextract"], results["exactextract, raster-sequential"]):
        both = ~np.isnan(ee) & ~np.isnan(xe)
        diff = max(diff, float(np.abs(ee[both] - xe[both]).max()))
        nan_agree &= bool(np.array_equal(np.isnan(ee), np.isnan(xe)))
    n_entries_sites = int((~np.isnan(xe).all(axis=1)).sum())
    x_best = measured["xembed"].best
    rows = []
    for name, m in measured.items():
        rows.append(
            [
                name,
                f"{m.best:.2f}",
                f"{m.best / x_best:.2f}",
                f"{file_gb / m.best:.2f}",
                f"{m.best_cpu:.2f}",
                f"{m.best_others:.2f}",
                f"{mib(m.peak):,.0f}",
            ]
        )
    fastest = measured["xembed"].times.index(min(measured["xembed"].times))
    graph, compute = timing["graph"][fastest], timing["compute"][fastest]
    # exactextract's faster strategy is the reference
    ee_name = min(
        ("exactextract", "exactextract, raster-sequential"), key=lambda n: measured[n].best
    )
    ratio = measured[ee_name].best / x_best
    print(f"Command: `{command_line()}`")
    print(f"Machine: {machine()}")
    print(
        f"Raster: ({N_BANDS}, {args.size}, {args.size}) float32 GeoTIFF, {file_gb:.2f} GB, "
        f"{args.block}x{args.block} tiles, band-separate, uncompressed, in the page cache; "
        f"{args.polygons} polygons ({n_entries_sites} with data); xembed dask chunks "
        f"(1, 64, {args.chunk}, {args.chunk}) = {N_BANDS * args.chunk**2 * 4 / 2**20:,.0f} MiB; "
        f"{args.threads} threads; best of {args.repeat} interleaved rounds; GDAL "
        + (
            "configuration " + ", ".join(f"{k}={v}" for k, v in gdal_config.items())
            if gdal_config
            else "defaults"
        )
        + f" (GDAL {rasterio.__gdal_version__}, rasterio {rasterio.__version__})."
    )
    print()
    print(
        table(
            [
                "method",
                "best s",
                "time / xembed",
                "GB/s of file",
                "CPU s",
                "others' CPUs",
                "peak RSS +MiB",
            ],
            rows,
        )
    )
    print()
    print(
        f"{ee_name} / xembed = {ratio:.2f} "
        f"(target >= 1.5: {'met' if ratio >= 1.5 else 'NOT met'}); "
        f"max |xembed - exactextract| (both strategies) = {diff:.1e} (target <= 1e-5: "
        f"{'met' if diff <= 1e-5 else 'NOT met'}), NaN sites/bands agree: {nan_agree}. "
        f"xembed's fastest run: {graph:.2f} s building (sites, coverage, graph), "
        f"{compute:.2f} s computing (read + gather + reduce)."
    )


if __name__ == "__main__":
    main()
