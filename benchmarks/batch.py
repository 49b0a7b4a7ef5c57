"""Batch extraction of many sites: ``xembed.extract`` vs a per-site loop, threads vs a cluster.

Data: the synthetic mirror of ``benchmarks.memory`` (the public mirror's
on-disk format: bottom-up int8 GeoTIFFs, ZSTD, band-separate planes; files of
2048 x 2048 px with 256 x 256 px internal tiles, the real mirror's layout at a
quarter of its scale), 40.96 km x 40.96 km in UTM 22S, 2017-2024.

Sites: ``--sites`` demo-like polygons (5-8 irregular vertices, 3-80 ha,
log-uniform; one in ten a MultiPolygon of two plots), placed in clusters as
restoration programmes are: ``--clusters`` centres spread over the mirror,
sites scattered around each with a 1.2 km standard deviation. At the
defaults (1000 sites, 100 clusters) that is 0.6 sites per km^2 over the
mirror, the density of the ten demo sites over the sample.

Methods, each timed once on an idle-ish machine:

- ``per-site loop``: ``open_embeddings(site, years, source=mirror)
  .embed.polygon_mean().compute()`` for each site (2 dask threads);
- ``extract, threads``: ``xembed.extract(sites, years, source=mirror)`` on
  the threaded scheduler (2 threads);
- ``extract, LocalCluster``: the same with ``client=`` a
  ``LocalCluster(n_workers=2, threads_per_worker=1)`` (processes; started
  before the clock, its start-up time is reported apart).

Reads are counted by wrapping ``xembed.sources.cog._read_tile`` (in every
worker for the cluster): ``window reads`` is the number of file windows read,
``window MB`` their size as int8 (bands x rows x columns), ``block MB`` the
int8 size of the internal 256 x 256 tiles those windows touch, which GDAL
decompresses whole (and which a remote read fetches whole), and ``file MB``
the bytes the processes read from disk (``rchar`` of ``/proc/<pid>/io``:
compressed tiles, headers, the index).

Usage::

    python -m benchmarks.batch            # 1000 sites x 8 years (writes a ~6 GB mirror once)
    python -m benchmarks.batch --quick    # 100 sites x 2 years on a 10 km mirror
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks import memory
from benchmarks._util import (
    Measurement,
    add_idle_timeout,
    command_line,
    dask_threads,
    machine,
    mib,
    table,
)

# --- sites ---------------------------------------------------------------------------------


def demo_like_sites(
    n: int, *, clusters: int, extent_px: int, seed: int = 0, spread_m: float = 1200.0
) -> list[Any]:
    """``n`` demo-like polygons in clusters over the synthetic mirror (EPSG:4326 Sites)."""
    import pyproj
    import shapely

    from xembed.sites import Site

    rng = np.random.default_rng(seed)
    margin = 2500.0
    extent = extent_px * memory.RES
    centres = rng.uniform(margin, extent - margin, size=(clusters, 2))
    to_ll = pyproj.Transformer.from_crs(memory.CRS, "EPSG:4326", always_xy=True)

    def polygon(cx: float, cy: float, area_m2: float) -> shapely.Polygon:
        k = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * math.pi, k))
        radii = rng.uniform(0.75, 1.25, k)
        ring = shapely.Polygon(np.column_stack([radii * np.cos(angles), radii * np.sin(angles)]))
        if not ring.is_valid or ring.area <= 0:
            ring = shapely.Point(0, 0).buffer(1.0, 3)
        scale = math.sqrt(area_m2 / ring.area)
        return shapely.affinity.translate(
            shapely.affinity.scale(ring, scale, scale, origin=(0, 0)), cx, cy
        )

    sites = []
    for i in range(n):
        c = centres[i % clusters]
        x, y = np.clip(c + rng.normal(0, spread_m, 2), margin, extent - margin)
        area = math.exp(rng.uniform(math.log(3e4), math.log(80e4)))  # 3..80 ha
        if rng.uniform() < 0.1:  # two plots 130 m apart
            a = polygon(x, y, area * 0.55)
            b = polygon(0.0, y, area * 0.45)
            b = shapely.affinity.translate(b, a.bounds[2] + 130.0 - b.bounds[0], 0.0)
            geom: Any = shapely.MultiPolygon([a, b])
        else:
            geom = polygon(x, y, area)
        geom = shapely.affinity.translate(geom, memory.WEST, memory.NORTH - extent)
        lonlat = shapely.transform(geom, lambda xy: np.column_stack(to_ll.transform(*xy.T)))
        sites.append(Site(id=i + 1, start_year=None, geometry=lonlat))
    return sites


# --- read counting -------------------------------------------------------------------------


def install_read_counter(block_px: int = memory.BLOCK_PX) -> None:
    """Wrap ``cog._read_tile`` in this process to count window reads (idempotent; resets).

    Self-contained (imports inside), so ``Client.run`` can call it in workers.
    """
    import threading

    from xembed.sources import cog

    mod: Any = cog
    if getattr(mod, "_bench_original", None) is None:
        mod._bench_original = cog._read_tile
        mod._bench_lock = threading.Lock()

        def counted(tile: Any, band_index: Any, src_rows: Any, src_cols: Any) -> Any:
            inside_r = (src_rows >= 0) & (src_rows < tile.height)
            inside_c = (src_cols >= 0) & (src_cols < tile.width)
            if src_rows.ndim == 1:
                ok = inside_r.any() and inside_c.any()
                rows, cols = src_rows[inside_r], src_cols[inside_c]
            else:
                inside = inside_r & inside_c
                ok = inside.any()
                rows, cols = src_rows[inside], src_cols[inside]
            if ok:
                r0, r1 = int(rows.min()), int(rows.max()) + 1
                c0, c1 = int(cols.min()), int(cols.max()) + 1
                bands = len(band_index)
                b = mod._bench_block
                blocks = ((r1 - 1) // b - r0 // b + 1) * ((c1 - 1) // b - c0 // b + 1)
                with mod._bench_lock:
                    stats = mod._bench_stats
                    stats["reads"] += 1
                    stats["window"] += bands * (r1 - r0) * (c1 - c0)
                    stats["blocks"] += bands * blocks * b * b
            return mod._bench_original(tile, band_index, src_rows, src_cols)

        cog._read_tile = counted  # type: ignore[assignment]
    mod._bench_block = block_px
    mod._bench_stats = {"reads": 0, "window": 0, "blocks": 0}


def read_counts() -> dict[str, int]:
    """The counts since :func:`install_read_counter`, plus this process's ``rchar``."""
    from xembed.sources import cog

    stats = dict(getattr(cog, "_bench_stats", {"reads": 0, "window": 0, "blocks": 0}))
    stats["rchar"] = rchar()
    times = os.times()
    stats["cpu"] = int(1000 * (times.user + times.system))  # ms of this process
    return stats


def rchar() -> int:
    """Bytes this process has read with read(2) and friends (Linux /proc/self/io)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:  # pragma: no cover - not Linux
        pass
    return 0


class Reads:
    """Counts of one run: here (threads) or summed over a cluster's workers."""

    def __init__(self, client: Any = None) -> None:
        self.client = client

    def _now(self) -> dict[str, int]:
        if self.client is None:
            return read_counts()
        per_worker = self.client.run(read_counts)
        return {
            k: sum(w[k] for w in per_worker.values())
            for k in ("reads", "window", "blocks", "rchar", "cpu")
        }

    def __enter__(self) -> Reads:
        if self.client is None:
            install_read_counter()
        else:
            self.client.run(install_read_counter)
        self.start = self._now()
        return self

    def __exit__(self, *exc: Any) -> None:
        end = self._now()
        self.counts = {k: end[k] - (self.start[k] if k in ("rchar", "cpu") else 0) for k in end}


# --- the runs --------------------------------------------------------------------------------


def per_site_loop(sites: Sequence[Any], years: Sequence[int], root: Any) -> list[Any]:
    import xembed

    return [
        xembed.open_embeddings(site, years, source=root).embed.polygon_mean().compute()
        for site in sites
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 sites x 2 years, small mirror")
    parser.add_argument("--sites", type=int, help="number of sites (default 1000; quick 100)")
    parser.add_argument("--clusters", type=int, help="site clusters (default sites / 10)")
    parser.add_argument("--threads", type=int, default=2, help="dask threads (default 2)")
    parser.add_argument("--chunks", type=int, help="extract's spatial chunk size (default 256)")
    parser.add_argument("--no-cluster", action="store_true", help="skip the LocalCluster run")
    parser.add_argument("--no-loop", action="store_true", help="skip the per-site loop")
    add_idle_timeout(parser, default=60.0)
    args = parser.parse_args(argv)

    import xembed
    from xembed.batch import extract, group_sites, mirror_lattice

    if args.quick:
        size_px, years = memory.QUICK_PX, list(memory.QUICK_YEARS)
        n = args.sites or 100
    else:
        size_px, years = memory.FULL_PX, list(memory.FULL_YEARS)
        n = args.sites or 1000
    clusters = args.clusters or max(1, n // 10)
    root = memory.synthetic_mirror(size_px, years)
    sites = demo_like_sites(n, clusters=clusters, extent_px=size_px)
    groups, _ = group_sites(sites, lattice=lambda crs: mirror_lattice(str(root), crs))
    area_km2 = (size_px * memory.RES / 1000) ** 2

    print(f"# Batch extraction: {n} demo-like sites x {len(years)} years")
    print()
    print(f"`{command_line()}`")
    print()
    print(machine())
    print()
    print(
        f"mirror {root} ({size_px} x {size_px} px = {area_km2:.0f} km^2, files of "
        f"{memory.FILE_PX} px, internal tiles {memory.BLOCK_PX} px); {n} sites in {clusters} "
        f"clusters ({n / area_km2:.2f} sites/km^2); extract made {len(groups)} groups "
        f"({n / len(groups):.1f} sites per group)"
    )
    print()

    # Warm-up: index and file headers cached, imports done, page cache filled.
    with dask_threads(args.threads):
        xembed.open_embeddings(sites[0], years, source=root).embed.polygon_mean().compute()
        extract(sites[:5], years, source=root, progress=False)

    results: dict[str, tuple[Measurement, dict[str, int], Any]] = {}

    def run(name: str, fn: Callable[[], Any], client: Any = None) -> None:
        m = Measurement(name)
        box: dict[str, Any] = {}

        def go() -> None:
            with Reads(client) as reads:
                box["out"] = fn()
            box["reads"] = reads.counts

        m.record(go, args.idle_timeout)
        results[name] = (m, box["reads"], box["out"])

    if not args.no_loop:
        with dask_threads(args.threads):
            run("per-site loop", lambda: per_site_loop(sites, years, root))
    with dask_threads(args.threads):
        run(
            "extract, threads",
            lambda: extract(sites, years, source=root, progress=False, chunks=args.chunks),
        )

    cluster_note = ""
    if not args.no_cluster:
        from distributed import Client, LocalCluster

        t0 = time.perf_counter()
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            startup = time.perf_counter() - t0
            client.run(install_read_counter)
            # Warm the workers like the threads (imports, index, headers).
            extract(sites[:5], years, source=root, progress=False, client=client)
            run(
                "extract, LocalCluster",
                lambda: extract(
                    sites, years, source=root, progress=False, client=client, chunks=args.chunks
                ),
                client,
            )
        cluster_note = (
            f"LocalCluster(n_workers=2, threads_per_worker=1) start-up: {startup:.1f} s "
            "(not in the times)."
        )

    # Check: the batch equals the loop (float64 accumulation vs polygon_mean's float32).
    batch = results["extract, threads"][2]
    if "per-site loop" in results:
        loop = np.stack([r.values for r in results["per-site loop"][2]]).reshape(-1, 64)
        diff = float(np.nanmax(np.abs(batch.iloc[:, 3:].to_numpy() - loop)))
        print(f"max |extract - per-site loop| = {diff:.2e} (float32 accumulation in the loop)")
    if "extract, LocalCluster" in results:
        other = results["extract, LocalCluster"][2]
        same = batch.equals(other)
        print(f"LocalCluster table identical to the threaded one: {same}")
    print()

    rows = []
    base = results.get("per-site loop")
    for name, (m, reads, _) in results.items():
        # The cluster's work runs in its worker processes: add their CPU time.
        cpu = m.best_cpu + (reads["cpu"] / 1000 if "LocalCluster" in name else 0.0)
        rows.append(
            [
                name,
                f"{m.best:.1f}",
                f"{cpu:.1f}",
                f"{reads['reads']:,}",
                f"{reads['window'] / 1e6:,.0f}",
                f"{reads['blocks'] / 1e6:,.0f}",
                f"{reads['rchar'] / 1e6:,.0f}",
                f"{mib(m.peak):,.0f}",
            ]
        )
    print(
        table(
            [
                "method",
                "time (s)",
                "CPU (s, all processes)",
                "window reads",
                "window MB",
                "block MB",
                "file MB",
                "peak RSS + (MiB)",
            ],
            rows,
        )
    )
    print()
    if base is not None:
        bm, br, _ = base
        for name, (m, reads, _) in results.items():
            if name == "per-site loop":
                continue
            print(
                f"- {name} vs per-site loop: {bm.best / m.best:.1f}x faster, "
                f"{br['window'] / max(reads['window'], 1):.1f}x fewer window bytes, "
                f"{br['blocks'] / max(reads['blocks'], 1):.1f}x fewer block bytes, "
                f"{br['rchar'] / max(reads['rchar'], 1):.1f}x fewer file bytes, "
                f"{br['reads'] / max(reads['reads'], 1):.1f}x fewer window reads"
            )
    if "extract, LocalCluster" in results:
        t = results["extract, threads"][0].best
        c = results["extract, LocalCluster"][0].best
        print(f"- LocalCluster / threads time: {c / t:.2f} ({cluster_note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
