"""Benchmarks of xembed's analyses: ratios measured side by side in one run.

Run from the repository root::

    python -m benchmarks.similarity   # per-pixel cosine vs naive xarray and a numpy kernel
    python -m benchmarks.zonal        # zonal_mean of 1000 polygons vs exactextract

Each accepts ``--quick`` (a smoke run in seconds) and ``--help``. The
recorded output is in ``docs/benchmarks.md``. These are benchmarks, not
tests: they print numbers and never fail on them.
"""
