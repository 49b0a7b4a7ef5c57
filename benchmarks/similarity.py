"""Per-pixel cosine similarity between years: xembed vs naive xarray vs numpy kernels.

One synthetic float32 cube ``(years, 64, size, size)`` of unit vectors is
held in memory once, and the dask cube is a graph of views of it (nothing
copied: ``dask.array.from_array`` would copy a numpy array), every chunk
holding all years and bands like :func:`xembed.open_embeddings`. Two memory
layouts (``--layout``):

- ``array`` (default): one plain ``(years, 64, size, size)`` numpy array;
  a ``256 x 256`` chunk is then a strided view whose rows are 1 KiB runs
  scattered over 512 band planes;
- ``chunked``: every chunk its own contiguous array, as a reader (the COG
  source, rioxarray, Zarr) hands them to dask.

Three chunkings of the dask cube are timed side by side (``--chunkings``):

- ``default``: all years and bands, ``--chunk`` pixels (256 x 256), as
  :func:`xembed.open_embeddings` gives;
- ``strips``: all years and bands, full-width strips of about as many pixels;
- ``year``: one year per chunk (``--chunk`` pixels), what per-year Zarr
  stores, rioxarray and ``chunks={"year": 1}`` give.

In the array layout each chunking is a graph of views of the one array; in
the chunked layout a chunking other than ``--chunk`` is its own contiguous
copy of the cube (one more cube in memory), and a year of a chunk is a
contiguous array, as a per-year Zarr store hands it to dask.

Every method writes into a preallocated, already-touched output array of the
same shape, so timings and peak memory compare the computation, not the
allocation of a result. Methods run in interleaved rounds (round 1: every
method, round 2: every method, ...; before each run the script waits up to
``--idle-timeout`` s for other processes to leave the CPUs idle) and the
best round counts.

Methods, for ``pairwise_similarity`` (all year pairs), ``similarity(
reference="previous")`` and ``similarity(reference="first")`` (``--modes``):

- ``numpy kernel (DESIGN 6)``: the reference kernel of the design's
  performance model, no dask: 4096-pixel tiles copied contiguous and
  normalised, one einsum per pair of years, 2 threads over regions of tiles
  (full-width strips of rows, or the contiguous chunks);
- ``xembed kernel, no dask``: xembed's block kernel (``xembed.ops.cosine.cosine_block``)
  called on the same regions by the same 2 threads: the practical limit of
  that kernel on this layout, so ``xembed / this`` is the cost of dask;
- ``xembed``, ``xembed, strips``, ``xembed, year``: the public function on
  each chunking of the dask cube, stored with ``da.store``;
- ``xembed, chunks ...`` (``--also-chunks``, array layout): more chunkings
  of the same array, xembed only;
- ``naive xarray`` (one per chunking): ``(a * b).sum("band") / (norm_a *
  norm_b)`` on the same dask cube, what one writes by hand (``--naive-rows``:
  on a subset of rows, time scaled per pixel).

After each table one line per chunking gives naive xarray / xembed (target
>= 2) and xembed / the best numpy kernel (target <= 1.3).

Usage::

    python -m benchmarks.similarity --naive-rows 256    # (8, 64, 2000, 2000): 8.2 GB
    python -m benchmarks.similarity --size 1000 --layout chunked   # 2 GB, minutes
    python -m benchmarks.similarity --quick             # (8, 64, 512, 512), seconds
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from benchmarks._util import (
    Measurement,
    PeakRSS,
    add_idle_timeout,
    command_line,
    dask_threads,
    machine,
    mib,
    table,
)
from xembed.cube import DEFAULT_CHUNKS
from xembed.ops import pairwise_similarity, similarity
from xembed.ops.cosine import cosine_block
from xembed.schema import BANDS

N_BANDS = 64
Region = tuple[np.ndarray, slice, slice]  # a (years, bands, h, w) piece and where it goes


# --- data ----------------------------------------------------------------------


def synth(years: int, size: int, rows: slice, cols: slice, seed: int = 0) -> np.ndarray:
    """The ``(years, 64, h, w)`` window ``rows, cols`` of a synthetic cube of unit vectors.

    Each pixel has a random base direction; every year adds its own noise
    (cosines between years around 0.9) and a square changes direction from
    the middle year on. A corner square is NaN in the first year (no data)
    and a strip on the east edge in every year (outside the footprint).
    """
    rng = np.random.default_rng([seed, rows.start, cols.start])
    h, w = rows.stop - rows.start, cols.stop - cols.start
    out = np.empty((years, N_BANDS, h, w), np.float32)
    base = rng.standard_normal((N_BANDS, h, w), dtype=np.float32)
    other = rng.standard_normal((N_BANDS, h, w), dtype=np.float32)
    lo_r, hi_r = max(rows.start, size // 4), min(rows.stop, size // 2)
    lo_c, hi_c = max(cols.start, size // 4), min(cols.stop, size // 2)
    for y in range(years):
        v = rng.standard_normal((N_BANDS, h, w), dtype=np.float32)
        v *= 0.3
        v += base
        if y >= years // 2 and lo_r < hi_r and lo_c < hi_c:
            win = (slice(None), slice(lo_r - rows.start, hi_r - rows.start))
            win += (slice(lo_c - cols.start, hi_c - cols.start),)
            v[win] += 2 * other[win]
        v /= np.sqrt(np.einsum("bij,bij->ij", v, v))
        out[y] = v
    corner = size // 10
    out[0, :, : max(0, corner - rows.start), : max(0, corner - cols.start)] = np.nan
    east = size - max(1, size // 100)
    out[:, :, :, max(0, east - cols.start) :] = np.nan
    return out


def bounds(n: int, step: int) -> list[slice]:
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


class Storage:
    """The cube in memory once: one plain array, or one contiguous array per chunk."""

    def __init__(self, years: int, size: int, layout: str, chunk: tuple[int, int]) -> None:
        self.years, self.size, self.layout, self.chunk = years, size, layout, chunk
        self.shape = (years, N_BANDS, size, size)
        self.nbytes = int(np.prod(self.shape)) * 4
        self.row_slices = bounds(size, chunk[0])
        self.col_slices = bounds(size, chunk[1])
        if layout == "array":
            self.array = np.empty(self.shape, np.float32)
            strip = max(1, (1 << 18) // size)
            for rows in bounds(size, strip):
                self.array[:, :, rows] = synth(years, size, rows, slice(0, size))
        else:
            self.blocks = {
                (i, j): synth(years, size, rows, cols)
                for i, rows in enumerate(self.row_slices)
                for j, cols in enumerate(self.col_slices)
            }
        self._copies: dict[tuple[int, int], dict[tuple[int, int], np.ndarray]] = {}

    def window(self, rows: slice, cols: slice) -> np.ndarray:
        """A contiguous copy of one window of the cube (chunked layout)."""
        shape = (self.years, N_BANDS, rows.stop - rows.start, cols.stop - cols.start)
        out = np.empty(shape, np.float32)
        for (i, j), block in self.blocks.items():
            r, c = self.row_slices[i], self.col_slices[j]
            lo_r, hi_r = max(r.start, rows.start), min(r.stop, rows.stop)
            lo_c, hi_c = max(c.start, cols.start), min(c.stop, cols.stop)
            if lo_r < hi_r and lo_c < hi_c:
                out[
                    :,
                    :,
                    lo_r - rows.start : hi_r - rows.start,
                    lo_c - cols.start : hi_c - cols.start,
                ] = block[:, :, lo_r - r.start : hi_r - r.start, lo_c - c.start : hi_c - c.start]
        return out

    def dask(self, chunk: tuple[int, int] | None = None, year_chunk: int | None = None) -> Any:
        """A dask array of views: nothing is copied."""
        name = f"bench-cube-{uuid.uuid4().hex}"
        year_slices = bounds(self.years, year_chunk or self.years)
        dsk: dict[tuple[Any, ...], np.ndarray] = {}
        if self.layout == "array":
            row_slices = bounds(self.size, (chunk or self.chunk)[0])
            col_slices = bounds(self.size, (chunk or self.chunk)[1])
            for k, ys in enumerate(year_slices):
                for i, rows in enumerate(row_slices):
                    for j, cols in enumerate(col_slices):
                        dsk[(name, k, 0, i, j)] = self.array[ys, :, rows, cols]
        else:
            row_slices, col_slices, blocks = self.row_slices, self.col_slices, self.blocks
            if chunk is not None and chunk != self.chunk:
                row_slices, col_slices = bounds(self.size, chunk[0]), bounds(self.size, chunk[1])
                if chunk not in self._copies:
                    self._copies[chunk] = {
                        (i, j): self.window(rows, cols)
                        for i, rows in enumerate(row_slices)
                        for j, cols in enumerate(col_slices)
                    }
                blocks = self._copies[chunk]
            for k, ys in enumerate(year_slices):
                for (i, j), block in blocks.items():
                    dsk[(name, k, 0, i, j)] = block[ys]
        chunks = tuple(
            tuple(s.stop - s.start for s in slices)
            for slices in (year_slices, [slice(0, N_BANDS)], row_slices, col_slices)
        )
        return da.Array(dsk, name, chunks=chunks, dtype=np.float32, meta=np.empty((0,) * 4))

    def regions(self) -> Iterator[Region]:
        """Pieces for the numpy kernels: full-width strips of rows, or the chunks."""
        if self.layout == "array":
            strip = max(1, (1 << 16) // self.size)  # ~64k pixels, like a 256 x 256 chunk
            for rows in bounds(self.size, strip):
                yield self.array[:, :, rows], rows, slice(0, self.size)
        else:
            for (i, j), block in self.blocks.items():
                yield block, self.row_slices[i], self.col_slices[j]


def as_cube(data: Any, years: list[int]) -> xr.Dataset:
    ny, nx = data.shape[2:]
    return xr.Dataset(
        {"embeddings": (("year", "band", "y", "x"), data)},
        coords={
            "year": years,
            "band": list(BANDS[: data.shape[1]]),
            "y": 7_500_000.0 - 10.0 * (np.arange(ny) + 0.5),
            "x": 600_000.0 + 10.0 * (np.arange(nx) + 0.5),
        },
    )


# --- the methods -------------------------------------------------------------------


def naive_pairwise(ds: xr.Dataset) -> xr.DataArray:
    a = ds["embeddings"]
    b = a.rename(year="year_2")
    norm_a = np.sqrt((a * a).sum("band"))
    norm_b = norm_a.rename(year="year_2")
    return ((a * b).sum("band") / (norm_a * norm_b)).transpose("year", "year_2", "y", "x")


def naive_previous(ds: xr.Dataset) -> xr.DataArray:
    a = ds["embeddings"]
    cur = a.isel(year=slice(1, None))
    prev = a.isel(year=slice(None, -1)).assign_coords(year=cur["year"])
    norm = np.sqrt((a * a).sum("band"))
    norm_cur = norm.isel(year=slice(1, None))
    norm_prev = norm.isel(year=slice(None, -1)).assign_coords(year=cur["year"])
    return ((cur * prev).sum("band") / (norm_cur * norm_prev)).transpose("year", "y", "x")


def naive_first(ds: xr.Dataset) -> xr.DataArray:
    a = ds["embeddings"]
    first = a.isel(year=0, drop=True)
    norm = np.sqrt((a * a).sum("band"))
    return ((a * first).sum("band") / (norm * norm.isel(year=0, drop=True))).transpose(
        "year", "y", "x"
    )


def store(result: xr.DataArray, out: np.ndarray) -> None:
    with np.errstate(invalid="ignore", divide="ignore"):
        da.store(result.data, out, lock=False)


def _reference_region(view: np.ndarray, mode: str) -> np.ndarray:
    """DESIGN section 6 on one region: 4096-pixel tiles made contiguous, einsum per pair."""
    n_years, n_bands, h, w = view.shape
    flat = view.reshape(n_years, n_bands, h * w)  # a view: full-width strip or contiguous chunk
    pairwise = mode == "pairwise"
    res = np.empty((n_years, n_years, h * w) if pairwise else (n_years, h * w), np.float32)
    tile = 4096
    with np.errstate(invalid="ignore", divide="ignore"):
        for p0 in range(0, h * w, tile):
            sl = slice(p0, min(p0 + tile, h * w))
            t = np.array(flat[:, :, sl], order="C")  # always a copy (normalised in place)
            norm = np.sqrt(np.einsum("ybt,ybt->yt", t, t))
            norm[norm == 0] = np.nan
            t /= norm[:, None, :]
            if pairwise:
                for i in range(n_years):
                    res[i, i, sl] = np.where(np.isnan(norm[i]), np.nan, 1.0)
                    for j in range(i + 1, n_years):
                        dot = np.clip(np.einsum("bt,bt->t", t[i], t[j]), -1.0, 1.0)
                        res[i, j, sl] = dot
                        res[j, i, sl] = dot
            elif mode == "first":
                res[0, sl] = np.where(np.isnan(norm[0]), np.nan, 1.0)
                for i in range(1, n_years):
                    res[i, sl] = np.clip(np.einsum("bt,bt->t", t[i], t[0]), -1.0, 1.0)
            else:
                res[0, sl] = np.nan
                for i in range(1, n_years):
                    res[i, sl] = np.clip(np.einsum("bt,bt->t", t[i], t[i - 1]), -1.0, 1.0)
    return res.reshape(*res.shape[:-1], h, w)


def pool_kernel(storage: Storage, out: np.ndarray, mode: str, threads: int, kernel: str) -> None:
    """A numpy kernel on the storage's regions, ``threads`` threads, no dask."""

    def work(region: Region) -> None:
        view, rows, cols = region
        if kernel == "reference":
            out[..., rows, cols] = _reference_region(view, mode)
        else:
            out[..., rows, cols] = cosine_block(view, "reference" if mode == "first" else mode)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, storage.regions()))


# --- checking ------------------------------------------------------------------------


def max_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, bool]:
    """Largest |a - b| where both have values, and whether the NaNs agree (chunked)."""
    worst, same_nan = 0.0, True
    flat_a = a.reshape(-1, a.shape[-1])
    flat_b = b.reshape(-1, b.shape[-1])
    step = max(1, (1 << 24) // a.shape[-1])
    for r0 in range(0, flat_a.shape[0], step):
        x, y = flat_a[r0 : r0 + step], flat_b[r0 : r0 + step]
        nx, ny = np.isnan(x), np.isnan(y)
        same_nan &= bool(np.array_equal(nx, ny))
        both = ~nx & ~ny
        if both.any():
            worst = max(worst, float(np.abs(x[both] - y[both]).max()))
    return worst, same_nan


# --- main ---------------------------------------------------------------------------

Method = tuple[str, Callable[[np.ndarray], Any], float, str]


def run_mode(
    label: str,
    methods: list[Method],
    out_shape: tuple[int, ...],
    repeat: int,
    n_pixels: int,
    idle_timeout: float,
) -> tuple[str, dict[str, Measurement]]:
    """Interleaved rounds of every method; the first method gives the reference output."""
    # Touched now (np.zeros would map pages lazily, on the first write).
    ref = np.full(out_shape, np.nan, np.float32)
    scratch = np.full(out_shape, np.nan, np.float32)
    results = {name: Measurement(name, scale=scale, note=note) for name, _, scale, note in methods}
    diffs: dict[str, tuple[float, bool]] = {}
    for round_ in range(repeat):
        print(f"[{label}] round {round_ + 1}/{repeat}", file=sys.stderr, flush=True)
        for k, (name, fn, scale, _) in enumerate(methods):
            target = ref if k == 0 else scratch
            results[name].record(lambda: fn(target), idle_timeout)  # noqa: B023
            if k > 0 and round_ == 0:
                rows = round(out_shape[-2] / scale)  # a subset of rows if scaled
                diffs[name] = max_diff(ref[..., :rows, :], scratch[..., :rows, :])
    xembed_best = results["xembed"].best
    table_rows = []
    for name, m in results.items():
        d = diffs.get(name)
        check = "reference" if d is None else f"{d[0]:.1e}" + ("" if d[1] else " (NaN differ!)")
        table_rows.append(
            [
                name + (f" [{m.note}]" if m.note else ""),
                f"{m.best:.2f}",
                f"{m.best / n_pixels * 1e9:,.0f}",
                f"{m.best / xembed_best:.2f}",
                f"{m.best_cpu:.2f}",
                f"{m.best_others:.2f}",
                f"{mib(m.peak):,.0f}",
                check,
            ]
        )
    headers = [
        label,
        "best s",
        "ns/pixel",
        "time / xembed",
        "CPU s",
        "others' CPUs",
        "peak RSS +MiB",
        "max |diff|",
    ]
    return table(headers, table_rows), results


def parse_chunk(text: str) -> tuple[int, int]:
    """``"256"`` -> (256, 256); ``"32x2000"`` -> (32, 2000)."""
    parts = [int(p) for p in text.lower().split("x")]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


CHUNKINGS = ("default", "strips", "year")
MODES = {
    "pairwise": ("pairwise_similarity", pairwise_similarity, naive_pairwise),
    "previous": ('similarity("previous")', lambda d: similarity(d, "previous"), naive_previous),
    "first": ('similarity("first")', lambda d: similarity(d, "first"), naive_first),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--years", type=int, default=8)
    parser.add_argument("--size", type=int, default=2000, help="pixels per side (default 2000)")
    parser.add_argument("--layout", choices=("array", "chunked"), default="array")
    parser.add_argument(
        "--chunk",
        default=str(DEFAULT_CHUNKS["y"]),
        help="spatial chunk of the dask cube, 'N' or 'NxM' (rows x columns) "
        f"(default {DEFAULT_CHUNKS['y']}, xembed.open_embeddings')",
    )
    parser.add_argument(
        "--chunkings",
        default=",".join(CHUNKINGS),
        help="comma-separated chunkings to time xembed and naive xarray on: default (all "
        "years, --chunk), strips (all years, full-width rows of about as many pixels), "
        "year (one year per chunk, --chunk) (default: all three)",
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated functions to time, of {', '.join(MODES)} (default: all)",
    )
    parser.add_argument(
        "--also-chunks",
        action="append",
        default=[],
        metavar="NxM",
        help="also time xembed (only) with these spatial chunks, all years (repeatable)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds; best counts (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="dask / pool threads (default 2)")
    parser.add_argument(
        "--naive-rows",
        type=int,
        default=None,
        help="run naive xarray on this many rows only, time scaled per pixel (default: all)",
    )
    add_idle_timeout(parser)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: --size 512 --repeat 1 --idle-timeout 0"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.repeat, args.idle_timeout = 512, 1, 0.0
    args.chunkings = [c for c in args.chunkings.split(",") if c]
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(args.chunkings) - set(CHUNKINGS)) + sorted(set(args.modes) - set(MODES))
    if unknown or "default" not in args.chunkings:
        parser.error(f"unknown chunkings or modes {unknown}; --chunkings must include default")
    return args


Variant = tuple[str, xr.Dataset, xr.Dataset, str]  # name, cube, naive cube, chunks


def variants_of(args: argparse.Namespace, storage: Storage, years: list[int]) -> list[Variant]:
    """The dask cubes to time: one per chunking, and the naive subsets of them."""
    chunk = parse_chunk(args.chunk)
    strip = (max(1, chunk[0] * chunk[1] // args.size), args.size)
    specs: dict[str, tuple[str, tuple[int, int], int]] = {
        "default": ("xembed", chunk, args.years),
        "strips": ("xembed, strips", strip, args.years),
        "year": ("xembed, year", chunk, 1),
    }
    out = []
    for key in args.chunkings:
        name, (r, c), ny = specs[key]
        cube = as_cube(storage.dask(chunk=(r, c), year_chunk=ny), years)
        naive = cube
        if args.naive_rows and args.naive_rows < args.size:
            naive = cube.isel(y=slice(0, args.naive_rows))
        out.append((name, cube, naive, f"({ny}, 64, {r}, {c})"))
    return out


def methods_for(
    mode: str, args: argparse.Namespace, storage: Storage, variants: list[Variant]
) -> list[Method]:
    _, public, naive = MODES[mode]
    methods: list[Method] = [
        (
            "numpy kernel (DESIGN 6)",
            lambda out: pool_kernel(storage, out, mode, args.threads, "reference"),
            1.0,
            "",
        ),
        (
            "xembed kernel, no dask",
            lambda out: pool_kernel(storage, out, mode, args.threads, "xembed"),
            1.0,
            "",
        ),
    ]

    def naive_into(out: np.ndarray, cube: xr.Dataset) -> None:
        result = naive(cube)
        if mode == "previous":
            out[0] = np.nan
            out = out[1:]
        store(result, out[..., : cube.sizes["y"], :])

    scale, note = 1.0, ""
    if args.naive_rows and args.naive_rows < args.size:
        scale = args.size / args.naive_rows
        note = f"{args.naive_rows} of {args.size} rows, time x{scale:g}"
    for name, cube, _, chunks in variants:
        methods.append((name, lambda out, c=cube: store(public(c), out), 1.0, f"chunks {chunks}"))
    for spec in args.also_chunks:
        c = parse_chunk(spec)
        cube = as_cube(storage.dask(chunk=c), list(variants[0][1]["year"].values))
        name = f"xembed, chunks {c[0]}x{c[1]}"
        methods.append((name, lambda out, c=cube: store(public(c), out), 1.0, ""))
    for name, _, naive_cube, _ in variants:
        label = name.replace("xembed", "naive xarray")
        methods.append((label, lambda out, c=naive_cube: naive_into(out, c), scale, note))
    return methods


def verdicts(res: dict[str, Measurement], variants: list[Variant]) -> list[str]:
    """One line per chunking: the two target ratios."""
    kernel = min(res["numpy kernel (DESIGN 6)"].best, res["xembed kernel, no dask"].best)
    lines = []
    for name, *_ in variants:
        x = res[name].best
        naive = res[name.replace("xembed", "naive xarray")].best / x
        lines.append(
            f"{name}: naive xarray / xembed = {naive:.2f} (target >= 2: "
            f"{'met' if naive >= 2 else 'NOT met'}); xembed / best numpy kernel = "
            f"{x / kernel:.2f} (target <= 1.3: {'met' if x / kernel <= 1.3 else 'NOT met'})"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    years = list(range(2017, 2017 + args.years))
    n_pixels = args.size * args.size
    chunk = parse_chunk(args.chunk)

    t0 = time.perf_counter()
    with PeakRSS() as build:
        storage = Storage(args.years, args.size, args.layout, chunk)
        variants = variants_of(args, storage, years)
    print(
        f"cube {storage.shape} float32, {storage.nbytes / 1e9:.2f} GB ({args.layout} layout), "
        f"built in {time.perf_counter() - t0:.1f} s; RSS +{mib(build.increase):,.0f} MiB "
        "(the data, and in the chunked layout a copy per other chunking; wrapping it in "
        "dask copied nothing)",
        file=sys.stderr,
        flush=True,
    )
    chunk_bytes = args.years * N_BANDS * chunk[0] * chunk[1] * 4
    header = [
        f"Command: `{command_line()}`",
        f"Machine: {machine()}",
        f"Cube: {storage.shape} float32 = {storage.nbytes / 1e9:.2f} GB in memory, "
        f"{args.layout} layout; default dask chunks ({args.years}, 64, {chunk[0]}, {chunk[1]})"
        f" = {chunk_bytes / 2**20:,.0f} MiB "
        + (
            "(strided views of the array)"
            if args.layout == "array"
            else "(each a contiguous array)"
        )
        + f"; {args.threads} threads; best of {args.repeat} interleaved rounds.",
    ]
    tables = []
    with dask_threads(args.threads):
        for mode in args.modes:
            label = MODES[mode][0]
            out_shape: tuple[int, ...] = (args.years, args.size, args.size)
            if mode == "pairwise":
                out_shape = (args.years, *out_shape)
            text, res = run_mode(
                label,
                methods_for(mode, args, storage, variants),
                out_shape,
                args.repeat,
                n_pixels,
                args.idle_timeout,
            )
            out_chunk = int(np.prod(out_shape[:-2])) * chunk[0] * chunk[1] * 4
            tables.append(
                f"{text}\n\n"
                + "\n".join(f"- {line}" for line in verdicts(res, variants))
                + f"\n\nDefault output chunk {out_chunk / 2**20:,.0f} MiB; the result "
                f"({np.prod(out_shape) * 4 / 2**20:,.0f} MiB) goes into a preallocated array "
                "and is not counted in peak RSS."
            )
    print("\n".join(header))
    print()
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
