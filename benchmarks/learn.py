"""Learning from labels: ``predict`` vs the hand-written baseline, ``xembed.sample`` vs a loop.

``predict`` (:func:`xembed.ops.learn.predict`), with a fitted
``KNeighborsClassifier(3)`` and a ``RandomForestClassifier(100 trees)``, on
a lazy ``(8, 64, N, N)`` cube (chunks of one year x 64 bands x 256 x 256
px, ~16 MiB; values drawn per chunk around 6 class centres, like unit
embeddings of 6 land covers), computed; against the baseline every
tutorial writes: ``cube.values`` (the whole cube in memory), reshaped to
``(pixels, 64)``, ``model.predict``, reshaped back. Both include making the
cube's values (the same dask graph); the models are fitted on 20 points
per class. Time and peak RSS increase (sampled every 2 ms), xembed first
and freed memory given back (``malloc_trim``) before each run, so neither
run reuses pages the other freed.

``xembed.sample`` of ``--points`` points spread uniformly over the sample's
four Earth Engine images, all 8 years, against a per-point loop:
``open_embeddings(point.buffer(1e-5), years)`` and the pixel under the
point, for ``--loop-points`` of the same points, extrapolated linearly to
all of them (each point's reads are independent of the others'). Reads are
counted by wrapping ``xembed.sources.cog.read_windows``: ``tiles`` is the
number of compressed internal tiles (one band plane each) the windows
touch, ``tile MB`` their compressed bytes (what a remote read fetches),
and ``file MB`` the bytes this process read from disk (``rchar``).

Usage::

    python -m benchmarks.learn                    # N=1000, 10,000 points (loop: 200)
    python -m benchmarks.learn --quick            # N=256, 1,000 points (loop: 50)
"""

from __future__ import annotations

import argparse
import sys
import threading
import warnings
from collections.abc import Callable
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
from benchmarks.batch import rchar

CLASSES = 6
TRAIN_PER_CLASS = 20


# --- predict ------------------------------------------------------------------------------


def _centres() -> np.ndarray:
    rng = np.random.default_rng(7)
    c = rng.standard_normal((CLASSES, 64))
    return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)


def _chunk(block_id: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """One chunk of the synthetic cube: each pixel a class centre plus noise."""
    rng = np.random.default_rng(list(block_id))
    _, _, h, w = shape
    labels = rng.integers(0, CLASSES, h * w)
    values = _centres()[labels] + 0.15 * rng.standard_normal((h * w, 64), dtype=np.float32)
    return np.ascontiguousarray(values.T.reshape(1, 64, h, w))


def synthetic_cube(n: int, years: int = 8, chunk: int = 256) -> Any:
    """A lazy ``(year, band, y, x)`` cube of ``n`` x ``n`` px with a CRS and coords."""
    import dask.array as da
    import rioxarray  # noqa: F401
    import xarray as xr

    from xembed.schema import BANDS

    chunks = ((1,) * years, (64,), _sizes(n, chunk), _sizes(n, chunk))
    data = da.map_blocks(
        lambda block_info=None: _chunk(
            block_info[None]["chunk-location"], block_info[None]["chunk-shape"]
        ),
        chunks=chunks,
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), np.float32),
    )
    x = 500_005.0 + 10.0 * np.arange(n)
    y = 7_500_005.0 - 10.0 * np.arange(n)
    emb = xr.DataArray(
        data,
        dims=("year", "band", "y", "x"),
        coords={"year": np.arange(2017, 2017 + years), "band": list(BANDS), "y": y, "x": x},
        name="embeddings",
    ).rio.write_crs("EPSG:32722")
    return xr.Dataset({"embeddings": emb})


def _sizes(n: int, chunk: int) -> tuple[int, ...]:
    return tuple(min(chunk, n - i) for i in range(0, n, chunk))


def fitted_models() -> dict[str, Any]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(CLASSES), TRAIN_PER_CLASS)
    x = _centres()[labels] + 0.15 * rng.standard_normal((len(labels), 64), dtype=np.float32)
    return {
        "KNeighborsClassifier(3)": KNeighborsClassifier(n_neighbors=3).fit(x, labels),
        "RandomForestClassifier(100)": RandomForestClassifier(n_estimators=100, random_state=0).fit(
            x, labels
        ),
    }


def release_memory() -> None:
    """Give freed heap pages back to the system, so each peak RSS starts from the floor."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - not glibc
        pass


def baseline_predict(cube: Any, model: Any) -> np.ndarray:
    values = cube.embeddings.values  # the whole cube in memory
    years, bands, h, w = values.shape
    pixels = values.transpose(0, 2, 3, 1).reshape(-1, bands)
    return model.predict(pixels).reshape(years, h, w)


def xembed_predict(cube: Any, model: Any) -> np.ndarray:
    from xembed.ops.learn import predict

    return predict(cube, model).values


def run_predict(n: int, idle_timeout: float, threads: int) -> list[list[Any]]:
    cube = synthetic_cube(n)
    rows = []
    for name, model in fitted_models().items():
        results = {}
        measured = []
        # xembed first: a run after the baseline's would reuse the pages it freed
        for label, fn in (("xembed predict", xembed_predict), ("baseline", baseline_predict)):
            m = Measurement(f"{name}, {label}")
            release_memory()

            def run(
                fn: Any = fn, model: Any = model, label: str = label, out: dict = results
            ) -> None:
                out[label] = fn(cube, model)

            with dask_threads(threads):
                m.record(run, idle_timeout)
            measured.append(m)
        same = np.array_equal(results["baseline"], results["xembed predict"])
        ours, base = measured
        rows.append(
            [
                name,
                f"{base.best:.1f}",
                f"{ours.best:.1f}",
                f"{base.best / ours.best:.2f}x",
                f"{base.best_cpu:.1f} / {ours.best_cpu:.1f}",
                f"{mib(base.peak):,.0f}",
                f"{mib(ours.peak):,.0f}",
                f"{base.peak / max(ours.peak, 1):.1f}x",
                "yes" if same else "NO",
            ]
        )
    return rows


# --- sample -------------------------------------------------------------------------------


class ReadCounter:
    """Count the tiles and compressed bytes of every window ``cog.read_windows`` reads."""

    def __init__(self) -> None:
        self.tiles = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def __enter__(self) -> ReadCounter:
        from xembed.sources import cog

        self._original = cog.read_windows
        self._rchar = rchar()

        def counted(windows: Any, *args: Any, **kwargs: Any) -> Any:
            for w in windows:
                th, tw = w.layout.tile_height, w.layout.tile_width
                tiles = w.layout.counts[  # (band, tile row, tile column) of the stored file
                    list(w.bands),
                    w.r0 // th : (w.r1 - 1) // th + 1,
                    w.c0 // tw : (w.c1 - 1) // tw + 1,
                ]
                with self._lock:
                    self.tiles += tiles.size
                    self.bytes += int(tiles.sum())
            return self._original(windows, *args, **kwargs)

        cog.read_windows = counted
        return self

    def __exit__(self, *exc: Any) -> None:
        from xembed.sources import cog

        cog.read_windows = self._original
        self.file_bytes = rchar() - self._rchar


def spread_points(n: int) -> list[Any]:
    """``n`` lon/lat points uniform over the sample's images (some on nodata strips)."""
    import shapely

    from xembed._util import transformer
    from xembed.sources.sample import sample_images

    rng = np.random.default_rng(11)
    images = sample_images()
    which = rng.integers(0, len(images), n)
    points = []
    for i, image in enumerate(images):
        k = int((which == i).sum())
        west, south, east, north = image.bounds
        x, y = rng.uniform(west, east, k), rng.uniform(south, north, k)
        lon, lat = transformer(image.crs, "EPSG:4326").transform(x, y)
        points += [shapely.Point(a, b) for a, b in zip(lon, lat, strict=True)]
    return [points[i] for i in rng.permutation(len(points))]


def loop_sample(points: list[Any], years: list[int]) -> np.ndarray:
    import xembed
    from xembed._util import transformer

    out = []
    for p in points:
        try:
            cube = xembed.open_embeddings(p.buffer(1e-5), years, clip=False)
        except xembed.DataNotFoundError:
            out.append(np.full((len(years), 64), np.nan, np.float32))
            continue
        x, y = transformer("EPSG:4326", cube.rio.crs).transform(p.x, p.y)
        pix = cube.embeddings.sel(x=x, y=y, method="nearest")
        out.append(pix.values)
    return np.stack(out)


def run_sample(n_points: int, n_loop: int, idle_timeout: float, threads: int) -> list[list[Any]]:
    import xembed

    years = list(range(2017, 2025))
    points = spread_points(n_points)
    results: dict[str, Any] = {}
    counts = {}

    def batch() -> None:
        results["batch"] = xembed.sample(points, years, progress=False)

    def loop() -> None:
        results["loop"] = loop_sample(points[:n_loop], years)

    rows = []
    measured = {}
    for label, fn, scale in (
        ("per-point open_embeddings loop", loop, n_points / n_loop),
        ("xembed.sample", batch, 1.0),
    ):
        m = Measurement(label, scale=scale)
        release_memory()
        with warnings.catch_warnings(), dask_threads(threads), ReadCounter() as reads:
            warnings.simplefilter("ignore")  # points on nodata strips: NaN rows
            m.record(fn, idle_timeout)
        counts[label] = (reads.tiles * scale, reads.bytes * scale, reads.file_bytes * scale)
        measured[label] = m
    batch_values = results["batch"][list(xembed.BANDS)].to_numpy(np.float32)
    batch_values = batch_values.reshape(n_points, len(years), 64)[:n_loop]
    same = np.array_equal(batch_values, results["loop"], equal_nan=True)
    loop_m, batch_m = measured.values()
    for label, m in measured.items():
        tiles, nbytes, fbytes = counts[label]
        rows.append(
            [
                label + (f" ({n_loop} points, x{m.scale:g})" if m.scale != 1 else ""),
                f"{m.best:,.1f}",
                f"{tiles:,.0f}",
                f"{nbytes / 1e6:,.1f}",
                f"{fbytes / 1e6:,.1f}",
            ]
        )
    ratio_t = loop_m.best / batch_m.best
    ratio_b = counts["per-point open_embeddings loop"][1] / max(counts["xembed.sample"][1], 1)
    rows.append(["ratio (loop / sample)", f"{ratio_t:.0f}x", "", f"{ratio_b:.0f}x", ""])
    rows.append(["same values as the loop", "yes" if same else "NO", "", "", ""])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1000, help="cube side N in pixels")
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--loop-points", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="N=256, 1000 points, loop 50")
    parser.add_argument("--skip", choices=("predict", "sample"), help="leave one part out")
    add_idle_timeout(parser, default=0.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.points, args.loop_points = 256, 1000, 50
    print(f"$ {command_line()}")
    print(machine())
    parts: list[tuple[str, Callable[[], list[list[Any]]], list[str]]] = []
    if args.skip != "predict":
        parts.append(
            (
                f"predict on a (8, 64, {args.size}, {args.size}) cube, {args.threads} threads",
                lambda: run_predict(args.size, args.idle_timeout, args.threads),
                ["model", "baseline s", "predict s", "speed-up", "CPU s (baseline / predict)",
                 "baseline MiB", "predict MiB", "memory ratio", "equal"],
            )
        )  # fmt: skip
    if args.skip != "sample":
        parts.append(
            (
                f"sampling {args.points:,} points x 8 years over the sample",
                lambda: run_sample(args.points, args.loop_points, args.idle_timeout, args.threads),
                ["method", "time s", "tiles read", "tile MB", "file MB"],
            )
        )
    for title, run, headers in parts:
        rows = run()
        print(f"\n{title}\n")
        print(table(headers, rows))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
