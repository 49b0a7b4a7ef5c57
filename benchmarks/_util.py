"""Timing, peak-memory sampling and table printing shared by the benchmarks."""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with distributed
    psutil = None

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident set size of this process in bytes."""
    if psutil is not None:
        return int(psutil.Process().memory_info().rss)
    with open("/proc/self/statm") as f:  # pragma: no cover - Linux fallback
        return int(f.read().split()[1]) * _PAGE


class PeakRSS:
    """Sample the RSS in a background thread: peak increase over the start.

    ``with PeakRSS() as peak: ...`` then ``peak.increase`` (bytes). Sampling
    every 2 ms catches any allocation that lives longer than that; numpy
    temporaries are touched page by page, so shorter ones are small anyway.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.start = self.peak = rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def increase(self) -> int:
        return self.peak - self.start


@dataclass
class Measurement:
    """Best-of-N wall time of one method, and its largest peak RSS increase."""

    name: str
    times: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    idle: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)  # CPUs busy with other processes
    scale: float = 1.0  # measured on a subset: times are multiplied by this
    note: str = ""

    @property
    def best(self) -> float:
        return min(self.times) * self.scale

    @property
    def best_cpu(self) -> float:
        """CPU seconds (all threads) of the fastest run, scaled like the time."""
        return self.cpu[self.times.index(min(self.times))] * self.scale

    @property
    def best_others(self) -> float:
        """How many CPUs other processes kept busy, on average, during the fastest run."""
        return self.others[self.times.index(min(self.times))]

    def record(self, fn: Callable[[], Any], idle_timeout: float) -> None:
        """Wait for an idle machine, then run ``fn`` once, timing it."""
        idle = wait_for_idle(timeout=idle_timeout) if idle_timeout > 0 else float("nan")
        with PeakRSS() as peak:
            busy0 = machine_busy_seconds()
            cpu0 = cpu_seconds()
            t0 = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds() - cpu0
            others = max(0.0, machine_busy_seconds() - busy0 - cpu) / elapsed
        self.times.append(elapsed)
        self.cpu.append(cpu)
        self.peaks.append(peak.increase)
        self.idle.append(idle)
        self.others.append(others)
        print(
            f"  {self.name}: {elapsed:.2f} s wall, {cpu:.2f} s CPU"
            + (f" (x{self.scale:g} for the whole)" if self.scale != 1 else "")
            + f", peak RSS +{mib(peak.increase):,.0f} MiB, machine idle before {idle:.0%},"
            f" other processes used {others:.2f} CPUs meanwhile",
            file=sys.stderr,
            flush=True,
        )

    @property
    def peak(self) -> int:
        return max(self.peaks)


def _cpu_times() -> tuple[float, float]:
    """(idle, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)


def idle_fraction(interval: float = 0.5) -> float:
    """Fraction of the machine's CPU time that was idle over ``interval`` seconds."""
    try:
        idle0, total0 = _cpu_times()
        time.sleep(interval)
        idle1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return 1.0
    return (idle1 - idle0) / max(total1 - total0, 1e-9)


def wait_for_idle(threshold: float = 0.85, timeout: float = 60.0) -> float:
    """Wait (up to ``timeout`` s) until other processes leave the CPUs mostly idle.

    On a shared machine a benchmark that starts while something else runs
    measures both. Returns the idle fraction last seen.
    """
    deadline = time.monotonic() + timeout
    idle = idle_fraction()
    while idle < threshold and time.monotonic() < deadline:
        idle = idle_fraction()
    return idle


def machine_busy_seconds() -> float:
    """CPU seconds all processes have spent busy (not idle), machine-wide."""
    try:
        idle, total = _cpu_times()
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return 0.0
    return (total - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    t = os.times()
    return t.user + t.system


def mib(n: float) -> float:
    return n / 2**20


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pipes), right-aligned numbers."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def machine() -> str:
    """One line on the machine and the library versions."""
    import dask
    import xarray

    cores = os.cpu_count()
    mem = (
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
        if psutil is not None
        else "RAM unknown"
    )
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for row in f:
                if row.startswith("model name"):
                    cpu = row.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover
        pass
    load = os.getloadavg()[0]
    return (
        f"{cores} cores ({cpu}), {mem}; Python {platform.python_version()}, "
        f"numpy {np.__version__}, dask {dask.__version__}, xarray {xarray.__version__}; "
        f"load average at start {load:.1f}"
    )


@contextmanager
def dask_threads(n: int) -> Iterator[None]:
    """The threaded scheduler with ``n`` workers for the block."""
    import dask

    with dask.config.set(scheduler="threads", num_workers=n):
        yield


def command_line() -> str:
    """How this script was started, as one would type it."""
    spec = sys.modules["__main__"].__spec__
    if spec is None:
        return " ".join(["python", *sys.argv])
    return " ".join(["python -m", spec.name, *sys.argv[1:]])


def add_idle_timeout(parser: argparse.ArgumentParser, default: float = 30.0) -> None:
    """The ``--idle-timeout`` option every benchmark shares (see :func:`wait_for_idle`)."""
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=default,
        help="before each run wait up to this many seconds for the CPUs to be idle "
        f"(other processes); 0: do not wait (default {default:g})",
    )
