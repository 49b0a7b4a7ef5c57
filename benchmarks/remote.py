"""Remote reads over HTTP against the round-trip bound (issue 11).

The sample mirror (``xembed.sample_root()``) is served on 127.0.0.1 by
``xembed.testing.serve_mirror`` with a fixed delay before every reply (the
round trip to a distant bucket: ``--delays``, default 0, 30 and 100 ms). For
each demo site (``--sites``, default 3108, 3110 and 3103) over 8 years, a
fresh Python process runs ``xembed.open_embeddings(site, years, source="cog",
root=URL)`` and ``.embed.polygon_mean().compute()``, so nothing is cached
between runs (each run gets an empty ``XEMBED_CACHE``). The server counts
what the reader did: requests, body bytes, peak requests in flight and
sequential rounds (the longest chain of requests each sent after the previous
one was answered).

The minimum is computed from the local files: the index, each needed file's
header (TIFF header, first IFD and its tag values) and the compressed
internal tiles the cube's pixels fall in (tile byte counts read with
tifffile), for every (year, file, band). ``R`` is the number of byte ranges
after merging adjacent ones. With at most ``C`` requests in flight (64), the
bound is ``(2 + ceil(R / C)) x delay + minimum bytes / bandwidth``, the 2
being the index and header rounds; bandwidth is the loopback's, measured
here through the same server (or the throttle's rate when lower).

Other parts (``--parts``):

- ``batch``: ``xembed.extract`` of 100 random small sites
  (``xembed.testing.random_sites``) over 2 years at 30 ms, in a fresh process;
- ``real``: a mirror written with the real geometry (one 8192 x 8192 px file
  per year, 1024 px internal tiles, 2 years; written once into the benchmark
  cache, ~5 GB) served at 30 ms and throttled to 100 Mbit/s, where bytes
  rather than round trips set the bound; one small site (~4 ha);
- ``warm``: a second open of 3108 with the same ``XEMBED_CACHE`` (the
  persistent range cache), against a local read of the same files, both in
  fresh processes. Printed as n/a when ``open_embeddings`` has no ``cache=``.

Every process result is checked bit for bit against the same read from the
local folder (``equal`` column).

Usage::

    python -m benchmarks.remote                                 # everything
    python -m benchmarks.remote --parts sites --sites 3108 --delays 30,100
    python -m benchmarks.remote --parts batch,warm
    python -m benchmarks.remote --quick                         # 3108 at 0 and 30 ms, 20 sites
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import importlib.util
import json
import math
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import memory
from benchmarks._util import (
    add_idle_timeout,
    command_line,
    machine,
    machine_busy_seconds,
    table,
    wait_for_idle,
)

REPO = Path(__file__).resolve().parent.parent
YEARS = tuple(range(2017, 2025))
C = 64  # requests in flight the bound allows (the default)
MB = 1e6
REAL_YEARS = (2023, 2024)
REAL_FILE_PX, REAL_BLOCK_PX = 8192, 1024


# --- the minimum: what a perfect reader fetches ------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where one local file keeps its header and tiles (full resolution)."""

    header: int  # bytes: TIFF header + first IFD + its out-of-line tag values
    offsets: np.ndarray  # (bands, tiles) byte offsets of the tiles
    counts: np.ndarray  # (bands, tiles) compressed sizes
    tile: tuple[int, int]  # (rows, cols) of an internal tile
    across: int  # tiles per row
    crs: str
    transform: tuple[float, ...]  # GDAL order (c, a, b, f, d, e)
    shape: tuple[int, int]


@lru_cache(maxsize=512)
def layout(path: str) -> Layout:
    import rasterio
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        # TIFF header, IFD entries, entry count and next-IFD pointer, out-of-line values
        head, entry, ends, inline = (16, 20, 16, 8) if tif.is_bigtiff else (8, 12, 6, 4)
        header = head + len(page.tags) * entry + ends
        header += sum(t.valuebytecount for t in page.tags.values() if t.valuebytecount > inline)
        bands = page.samplesperpixel if page.planarconfig == 2 else 1
        offsets = np.asarray(page.dataoffsets, dtype=np.int64).reshape(bands, -1)
        counts = np.asarray(page.databytecounts, dtype=np.int64).reshape(bands, -1)
        tile = (page.tilelength, page.tilewidth)
        across = -(-page.imagewidth // page.tilewidth)
    with rasterio.open(path) as src:
        crs, transform, shape = src.crs.to_string(), src.transform.to_gdal(), src.shape
    return Layout(header, offsets, counts, tile, across, crs, transform, shape)


def needed_tiles(lay: Layout, xs: np.ndarray, ys: np.ndarray, grid_crs: str) -> np.ndarray:
    """Internal tile numbers holding the source pixel of any cube pixel centre.

    Nearest neighbour, as the reader does: the same CRS maps centres to
    source pixels separably, another CRS (a neighbouring UTM zone) point by point.
    """
    import pyproj

    c, a, _, f, _, e = lay.transform
    if lay.crs == grid_crs:
        rows, cols = np.floor((ys - f) / e), np.floor((xs - c) / a)
        rows = rows[(rows >= 0) & (rows < lay.shape[0])].astype(np.int64)
        cols = cols[(cols >= 0) & (cols < lay.shape[1])].astype(np.int64)
        rows, cols = (m.ravel() for m in np.meshgrid(rows, cols, indexing="ij"))
    else:
        xx, yy = np.meshgrid(xs, ys)
        sx, sy = pyproj.Transformer.from_crs(grid_crs, lay.crs, always_xy=True).transform(xx, yy)
        rows, cols = np.floor((sy - f) / e).ravel(), np.floor((sx - c) / a).ravel()
        inside = (rows >= 0) & (rows < lay.shape[0]) & (cols >= 0) & (cols < lay.shape[1])
        rows, cols = rows[inside].astype(np.int64), cols[inside].astype(np.int64)
    return np.unique(rows // lay.tile[0] * lay.across + cols // lay.tile[1])


@dataclass
class Minimum:
    """The least a reader must fetch: headers, tiles, merged ranges (R)."""

    index: int = 0
    tiles: dict[str, set[int]] = field(default_factory=dict)  # file -> tile numbers
    files_per_year: int = 0

    def add(self, other: Minimum) -> None:
        self.index = max(self.index, other.index)
        self.files_per_year = max(self.files_per_year, other.files_per_year)
        for path, tiles in other.tiles.items():
            self.tiles.setdefault(path, set()).update(tiles)

    def ranges(self) -> tuple[int, int, int]:
        """(header bytes, tile bytes, R: tile ranges after merging adjacent ones)."""
        header = tile_bytes = merged = 0
        for path, tiles in self.tiles.items():
            lay = layout(path)
            header += lay.header
            picked = np.asarray(sorted(tiles))
            offsets = lay.offsets[:, picked].ravel()
            counts = lay.counts[:, picked].ravel()
            order = np.argsort(offsets[counts > 0])
            starts, sizes = offsets[counts > 0][order], counts[counts > 0][order]
            tile_bytes += int(sizes.sum())
            # A range continues the previous one when it starts where that ended.
            if starts.size:
                merged += 1 + int(np.count_nonzero(starts[1:] != (starts + sizes)[:-1]))
        return header, tile_bytes, merged

    @property
    def bytes(self) -> int:
        header, tiles, _ = self.ranges()
        return self.index + header + tiles

    def bound(self, delay: float, bandwidth: float) -> float:
        _, _, r = self.ranges()
        return (2 + math.ceil(r / C)) * delay + self.bytes / bandwidth


def minimum(site: Any, years: Sequence[int], root: Path) -> Minimum:
    """What ``open_embeddings(site, years)`` over ``root`` needs, from the local files."""
    import xembed

    ds = xembed.open_embeddings(site, list(years), source=root)
    xs, ys = ds.x.to_numpy(), ds.y.to_numpy()
    grid_crs = _crs_string(ds.spatial_ref.attrs["crs_wkt"])
    index = _index(root)
    box = _lonlat_box(xs, ys, grid_crs)
    out = Minimum(index=(root / "aef_index.parquet").stat().st_size)
    for year in years:
        rows = index[(index["year"] == year) & index.intersects(box)]
        used = 0
        for rel in rows["path"]:
            path = str(root / rel)
            tiles = needed_tiles(layout(path), xs, ys, grid_crs)
            if tiles.size:
                out.tiles.setdefault(path, set()).update(tiles.tolist())
                used += 1
        out.files_per_year = max(out.files_per_year, used)
    return out


@lru_cache(maxsize=4)
def _index(root: Path) -> Any:
    import geopandas as gpd

    return gpd.read_parquet(root / "aef_index.parquet")


@lru_cache(maxsize=4)
def _crs_string(wkt: str) -> str:
    import pyproj

    return pyproj.CRS(wkt).to_string()


def _lonlat_box(xs: np.ndarray, ys: np.ndarray, crs: str) -> Any:
    import pyproj
    import shapely

    box = shapely.segmentize(shapely.box(xs.min(), ys.min(), xs.max(), ys.max()), 50.0)
    to_ll = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return shapely.transform(box, lambda c: np.column_stack(to_ll.transform(*c.T))).buffer(1e-4)


# --- runs in fresh processes -------------------------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measured run, in this (fresh) process; returns times for the parent."""
    import inspect

    import xembed

    kwargs: dict[str, Any] = {"source": spec["source"]}
    if spec.get("root"):
        kwargs["root"] = spec["root"]
    if spec.get("cache") is not None:
        if "cache" not in inspect.signature(xembed.open_embeddings).parameters:
            return {"error": "open_embeddings has no cache= keyword"}
        kwargs["cache"] = spec["cache"]
    with open(spec["sites"], "rb") as f:
        sites = pickle.load(f)
    t0 = time.monotonic()
    if spec["kind"] == "batch":
        table = xembed.extract(sites, spec["years"], progress=False, **kwargs)
        t1 = time.monotonic()
        table.to_pickle(spec["out"])
        errors = table.attrs.get("errors")
        return {"t0": t0, "open_end": t0, "end": t1, "errors": 0 if errors is None else len(errors)}
    ds = xembed.open_embeddings(sites[0], spec["years"], **kwargs)
    t1 = time.monotonic()
    mean = ds.embed.polygon_mean().compute()
    t2 = time.monotonic()
    np.save(spec["out"], mean.to_numpy())
    return {"t0": t0, "open_end": t1, "end": t2}


@dataclass
class Run:
    """One child run with the server's counts over it."""

    open: float = float("nan")
    compute: float = float("nan")
    requests: int = 0
    open_requests: int = 0
    rounds: int = 0
    peak: int = 0
    fetched: int = 0
    idle: float = float("nan")
    others: float = float("nan")
    equal: bool | None = None
    reference: str = ""
    errors: int = 0
    failed: str = ""

    @property
    def total(self) -> float:
        return self.open + self.compute


def run_child(
    server: Any, spec: dict[str, Any], *, idle_timeout: float, cache_dir: str | None = None
) -> tuple[Run, Path]:
    """Run :func:`child` in a fresh interpreter; the server counts its requests."""
    work = Path(tempfile.mkdtemp(prefix="xembed-remote-"))
    atexit.register(shutil.rmtree, work, True)
    out = work / ("out.pkl" if spec["kind"] == "batch" else "out.npy")
    spec = {**spec, "out": str(out)}
    env = {**os.environ, "XEMBED_CACHE": cache_dir or str(work / "cache")}
    run = Run()
    run.idle = wait_for_idle(timeout=idle_timeout) if idle_timeout > 0 else float("nan")
    if server is not None:
        server.reset()
    busy0, kids0 = machine_busy_seconds(), _children_cpu()
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.remote", "--child", json.dumps(spec)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    elapsed = time.monotonic() - start
    run.others = max(0.0, machine_busy_seconds() - busy0 - (_children_cpu() - kids0)) / elapsed
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if proc.returncode == 0 and lines else {}
    if "t0" not in result:
        run.failed = result.get("error") or (proc.stderr.strip().splitlines() or ["?"])[-1]
        return run, out
    run.open = result["open_end"] - result["t0"]
    run.compute = result["end"] - result["open_end"]
    run.errors = result.get("errors", 0)
    if server is not None:
        requests = list(server.requests)
        run.requests = len(requests)
        run.open_requests = sum(r.started < result["open_end"] for r in requests)
        run.rounds, run.peak = server.rounds(), server.peak_in_flight()
        run.fetched = server.bytes_sent()
    print(
        f"  {spec['label']}: {run.total:.2f} s (open {run.open:.2f}), {run.requests} requests, "
        f"{run.fetched / MB:.2f} MB, peak {run.peak} in flight, {run.rounds} rounds; machine "
        f"idle before {run.idle:.0%}, other processes used {run.others:.2f} CPUs meanwhile",
        file=sys.stderr,
        flush=True,
    )
    return run, out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_sites(sites: Sequence[Any]) -> str:
    fd, path = tempfile.mkstemp(prefix="xembed-remote-sites-", suffix=".pkl")
    atexit.register(os.unlink, path)
    with os.fdopen(fd, "wb") as f:
        pickle.dump(list(sites), f)
    return path


def loopback_bandwidth(size: int = 256 * 2**20) -> float:
    """Bytes per second one GET of a large file moves through ``serve_mirror`` (best of 3)."""
    from xembed.testing import serve_mirror

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "big.bin").write_bytes(os.urandom(size))
        with serve_mirror(tmp) as server:
            host, port = server.url.split("/")[2].split(":")
            best = 0.0
            for _ in range(3):
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                t0 = time.perf_counter()
                conn.request("GET", server.url.split(port, 1)[1] + "/big.bin")
                reply = conn.getresponse()
                while reply.read(1 << 20):
                    pass
                best = max(best, size / (time.perf_counter() - t0))
                conn.close()
    return best


# --- the parts ---------------------------------------------------------------------------------


def _equal(out: Path, reference: np.ndarray) -> bool | None:
    if not out.is_file():
        return None
    return bool(np.array_equal(np.load(out), reference, equal_nan=True))


def reference(args: argparse.Namespace, name: str, value: Any) -> str:
    """Compare a local read with the one an earlier run saved in ``--reference`` (or save it).

    Tables are compared on the rows both have (a newer ``extract`` may list
    nodata site-years as errors instead of NaN rows).
    """
    import pandas as pd

    if not args.reference:
        return ""
    path = Path(args.reference) / f"{name}.pkl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(value))
        return "saved"
    saved = pickle.loads(path.read_bytes())
    if not isinstance(value, pd.DataFrame):
        return "yes" if np.array_equal(saved, value, equal_nan=True) else "NO"
    keys = ["site_id", "year", "stat"]
    value, saved = value.copy(), saved.copy()
    value.attrs, saved.attrs = {}, {}  # merge compares attrs, and errors tables have no truth
    both = value.merge(saved, on=keys, suffixes=("", "_ref"))
    bands = [c for c in value.columns if c in saved.columns and c not in keys]
    same = np.array_equal(
        both[bands].to_numpy(), both[[f"{b}_ref" for b in bands]].to_numpy(), equal_nan=True
    )
    return f"{'yes' if same else 'NO'} ({len(both)} of {len(saved)} rows)"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}" if b > 0 and a == a else "n/a"


def part_sites(args: argparse.Namespace, root: Path, bandwidth: float) -> None:
    import xembed
    from xembed.testing import serve_mirror

    demo = {int(s.id): s for s in xembed.demo_sites()}
    rows = []
    with serve_mirror(root) as server:
        for delay in args.delays:
            server.latency = delay / 1000
            for rid in args.sites:
                site = demo[rid]
                mini = minimum(site, args.years, root)
                local = (
                    xembed.open_embeddings(site, list(args.years), source=root)
                    .embed.polygon_mean()
                    .compute()
                    .to_numpy()
                )
                spec = {
                    "kind": "site",
                    "label": f"{rid} at {delay} ms",
                    "sites": write_sites([site]),
                    "years": list(args.years),
                    "source": "cog",
                    "root": server.url,
                }
                run, out = run_child(server, spec, idle_timeout=args.idle_timeout)
                run.equal = _equal(out, local)
                run.reference = reference(args, f"site-{rid}", local)
                rows.append(_site_row(rid, delay, mini, run, bandwidth))
    print(f"## Demo sites over {len(args.years)} years ({args.years[0]}-{args.years[-1]})")
    print()
    print(table(SITE_HEADERS, rows))
    print()


SITE_HEADERS = [
    "site",
    "files/yr",
    "delay (ms)",
    "open (s)",
    "compute (s)",
    "requests (open)",
    "rounds",
    "peak in flight",
    "MB fetched",
    "MB minimum",
    "fetched / min",
    "R",
    "bound (s)",
    "time / bound",
    "equal (local, ref)",
    "idle before",
]


def _site_row(name: Any, delay: float, mini: Minimum, run: Run, bandwidth: float) -> list[str]:
    _, _, r = mini.ranges()
    bound = mini.bound(delay / 1000, bandwidth)
    if run.failed:
        return [str(name), str(mini.files_per_year), str(delay), "failed: " + run.failed[:60]] + [
            ""
        ] * (len(SITE_HEADERS) - 4)
    return [
        str(name),
        str(mini.files_per_year),
        f"{delay:g}",
        f"{run.open:.2f}",
        f"{run.compute:.2f}",
        f"{run.requests:,} ({run.open_requests:,})",
        f"{run.rounds:,}",
        str(run.peak),
        f"{run.fetched / MB:.2f}",
        f"{mini.bytes / MB:.2f}",
        _ratio(run.fetched, mini.bytes),
        f"{r:,}",
        f"{bound:.3f}",
        _ratio(run.total, bound),
        {True: "yes", False: "NO", None: "?"}[run.equal]
        + (f", {run.reference}" * bool(run.reference)),
        "n/a" if run.idle != run.idle else f"{run.idle:.0%}",
    ]


def part_batch(args: argparse.Namespace, root: Path, bandwidth: float) -> None:
    import pandas as pd

    import xembed
    from xembed.testing import random_sites, serve_mirror

    years = list(args.years[-2:]) if len(args.years) >= 2 else list(args.years)
    sites = random_sites(root, args.batch_sites, seed=0)
    local = xembed.extract(sites, years, source=root, progress=False)
    mini = Minimum()
    for site in sites:
        mini.add(minimum(site, years, root))
    mini.files_per_year = round(len(mini.tiles) / len(years))  # distinct files, all sites
    spec = {
        "kind": "batch",
        "label": f"batch of {len(sites)} sites at {args.batch_delay} ms",
        "sites": write_sites(sites),
        "years": years,
        "source": "cog",
    }
    with serve_mirror(root, latency=args.batch_delay / 1000) as server:
        spec["root"] = server.url
        run, out = run_child(server, spec, idle_timeout=args.idle_timeout)
    if out.is_file():
        got = pd.read_pickle(out)
        run.equal = bool(got.equals(local))
    run.reference = reference(args, f"batch-{len(sites)}", local)
    row = _site_row(f"{len(sites)} sites", args.batch_delay, mini, run, bandwidth)
    print(f"## Batch: xembed.extract of {len(sites)} random small sites over {years}")
    print()
    print(
        "Sites: xembed.testing.random_sites(sample_root(), "
        f"{len(sites)}, seed=0) (1-10 ha, 5-8 vertices); open = 0 (extract does all); "
        f"failures listed in attrs['errors']: {run.errors}."
    )
    print()
    print(table(["sites", *SITE_HEADERS[1:]], [row]))
    print()


def real_mirror() -> Path:
    """The real geometry: one 8192 px file per year, 1024 px tiles (written once)."""
    cache = memory.default_cache()
    root = cache / f"mirror-real-{REAL_FILE_PX}px-{REAL_YEARS[0]}-{REAL_YEARS[-1]}"
    if not (root / "aef_index.parquet").is_file():
        print(f"writing the real-geometry mirror {root} ...", file=sys.stderr, flush=True)
        memory.write_synthetic_mirror(
            root,
            size_px=REAL_FILE_PX,
            years=REAL_YEARS,
            file_px=REAL_FILE_PX,
            block_px=REAL_BLOCK_PX,
        )
    for path in sorted(root.rglob("*.tiff")):
        cog_layout(path)
    return root


def cog_layout(path: Path) -> None:
    """Rewrite ``path`` with its header first, as the mirror's COGs (tiles copied raw).

    GDAL writes a new GeoTIFF's header at its end; the mirror's files, like
    every COG, have it in their first bytes. Nothing is done if it is.
    """
    import rasterio
    import tifffile
    from rasterio.shutil import copy as rio_copy

    with tifffile.TiffFile(path) as tif:
        if tif.pages.first.offset < 65536:
            return
    tmp = path.with_name(f".{path.name}.cog.tmp")
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
        rio_copy(
            path,
            tmp,
            driver="GTiff",
            TILED="YES",
            BLOCKXSIZE=REAL_BLOCK_PX,
            BLOCKYSIZE=REAL_BLOCK_PX,
            COMPRESS="ZSTD",
            ZSTD_LEVEL=1,
            INTERLEAVE="BAND",
            COPY_SRC_OVERVIEWS="YES",  # header first; same compression: tiles copied raw
            BIGTIFF="IF_SAFER",
        )
    os.replace(tmp, path)


def real_site() -> Any:
    """A ~4 ha square inside one 1024 px tile of the real-geometry mirror."""
    import pyproj
    import shapely

    from xembed.sites import Site

    west = memory.WEST + (4 * REAL_BLOCK_PX + 400) * memory.RES + 3.3
    north = memory.NORTH - (3 * REAL_BLOCK_PX + 400) * memory.RES - 4.4
    box = shapely.box(west, north - 200.0, west + 200.0, north)
    to_ll = pyproj.Transformer.from_crs(memory.CRS, "EPSG:4326", always_xy=True)
    lonlat = shapely.transform(
        shapely.segmentize(box, 50.0), lambda xy: np.column_stack(to_ll.transform(*xy.T))
    )
    return Site(id="real-4ha", start_year=None, geometry=lonlat)


def part_real(args: argparse.Namespace, bandwidth: float) -> None:
    import xembed
    from xembed.testing import serve_mirror

    root = real_mirror()
    site, years = real_site(), list(REAL_YEARS)
    mini = minimum(site, years, root)
    local = xembed.open_embeddings(site, years, source=root).embed.polygon_mean().compute()
    spec = {
        "kind": "site",
        "label": "real geometry",
        "sites": write_sites([site]),
        "years": years,
        "source": "cog",
    }
    rate = args.rate_mbit * 1e6 / 8
    with serve_mirror(root, latency=args.real_delay / 1000, rate=rate) as server:
        spec["root"] = server.url
        run, out = run_child(server, spec, idle_timeout=args.idle_timeout)
    run.equal = _equal(out, local.to_numpy())
    run.reference = reference(args, "real", local.to_numpy())
    row = _site_row(site.id, args.real_delay, mini, run, min(bandwidth, rate))
    print(
        f"## Real geometry: {REAL_FILE_PX} px files, {REAL_BLOCK_PX} px tiles, "
        f"{args.rate_mbit:g} Mbit/s"
    )
    print()
    print(
        f"Mirror {root} (one file per year, {years}); site: a 200 m x 200 m square inside one "
        f"internal tile; server throttled to {args.rate_mbit:g} Mbit/s shared by all "
        f"connections, {args.real_delay} ms before every reply; the bound uses that rate."
    )
    print()
    print(table(SITE_HEADERS, [row]))
    print()


def part_warm(args: argparse.Namespace, root: Path, bandwidth: float) -> None:
    import inspect

    import xembed
    from xembed.testing import serve_mirror

    rid = args.warm_site
    site = {int(s.id): s for s in xembed.demo_sites()}[rid]
    years = list(args.years)
    print(f"## Warm open: site {rid}, {len(years)} years, second open with the range cache on")
    print()
    keyword = "cache" in inspect.signature(xembed.open_embeddings).parameters
    if not keyword and importlib.util.find_spec("xembed.sources.rangecache") is None:
        print("n/a: this xembed has no persistent range cache (xembed.sources.rangecache).")
        print()
        return
    local = xembed.open_embeddings(site, years, source=root).embed.polygon_mean().compute()
    base = {"kind": "site", "sites": write_sites([site]), "years": years}
    cache = tempfile.mkdtemp(prefix="xembed-remote-cache-")
    atexit.register(shutil.rmtree, cache, True)
    with serve_mirror(root, latency=args.warm_delay / 1000) as server:
        # cache=True where open_embeddings takes it; else the default (on), same XEMBED_CACHE
        remote = {**base, "source": "cog", "root": server.url, "cache": True if keyword else None}
        cold, _ = run_child(server, {**remote, "label": "cold (fills the cache)"},
                            idle_timeout=args.idle_timeout, cache_dir=cache)  # fmt: skip
        warm, out = run_child(server, {**remote, "label": "warm"},
                              idle_timeout=args.idle_timeout, cache_dir=cache)  # fmt: skip
    warm.equal = _equal(out, local.to_numpy())
    here, _ = run_child(None, {**base, "source": str(root), "label": "local files"},
                        idle_timeout=args.idle_timeout)  # fmt: skip
    rows = [
        [
            name,
            f"{r.total:.2f}",
            f"{r.requests:,}" if r is not here else "-",
            f"{r.fetched / MB:.2f}" if r is not here else "-",
            _ratio(r.total, here.total),
        ]
        for name, r in (("cold, cache on", cold), ("warm, cache on", warm), ("local files", here))
    ]
    print(
        f"Delay {args.warm_delay} ms; local read: source = the sample folder; equal: {warm.equal}"
    )
    print()
    print(table(["run", "open + compute (s)", "requests", "MB fetched", "time / local"], rows))
    print()
    del bandwidth


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--parts", default="sites,batch,real,warm", help="comma list of parts")
    parser.add_argument("--sites", default="3108,3110,3103", help="demo site ids")
    parser.add_argument("--delays", default="0,30,100", help="ms before every reply")
    parser.add_argument("--years", type=int, default=8, help="years from 2017 (default 8)")
    parser.add_argument("--batch-sites", type=int, default=100)
    parser.add_argument("--batch-delay", type=float, default=30)
    parser.add_argument("--real-delay", type=float, default=30)
    parser.add_argument("--rate-mbit", type=float, default=100)
    parser.add_argument("--warm-site", type=int, default=3108)
    parser.add_argument("--warm-delay", type=float, default=30)
    parser.add_argument("--quick", action="store_true", help="3108 at 0 and 30 ms, 20 sites")
    parser.add_argument(
        "--reference",
        help="folder of local results to compare with (saved there by the first run that "
        "names it, e.g. on the previous reader): the `ref` in the equal column",
    )
    add_idle_timeout(parser, default=20.0)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.quick:
        args.sites, args.delays, args.batch_sites = "3108", "0,30", 20
    args.sites = [int(s) for s in _split(args.sites)]
    args.delays = [float(d) for d in _split(args.delays)]
    args.years = list(YEARS[: args.years])
    parts = set(_split(args.parts))

    import xembed

    root = xembed.sample_root()
    print("# Remote reads: xembed over HTTP against the round-trip bound")
    print()
    print(f"`{command_line()}`")
    print()
    print(machine())
    print()
    bandwidth = loopback_bandwidth()
    print(
        f"xembed {xembed.__version__}; sample mirror {root}; loopback bandwidth through "
        f"serve_mirror {bandwidth / MB:,.0f} MB/s (one GET of 256 MiB, best of 3); bound "
        f"with C = {C} requests in flight. Started {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}"
        " UTC."
    )
    print()
    if "sites" in parts:
        part_sites(args, root, bandwidth)
    if "batch" in parts:
        part_batch(args, root, bandwidth)
    if "real" in parts:
        part_real(args, bandwidth)
    if "warm" in parts:
        part_warm(args, root, bandwidth)
    return 0


def _split(text: str) -> Iterable[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


if __name__ == "__main__":
    sys.exit(main())
