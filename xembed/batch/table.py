"""The table :func:`xembed.batch.extract` returns: its rows in order, its errors, the warning.

See :mod:`xembed.batch` for the table's layout. Failures travel as
``{position: [(year or None, message), ...]}`` until :func:`errors_frame`
turns them into ``table.attrs["errors"]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from xembed._util import stacklevel
from xembed.ops.reduce import COVERAGE_COLUMNS
from xembed.schema import BANDS
from xembed.sites import Site

__all__ = ["assemble", "describe_error", "errors_frame", "site_id_type", "warn_failures"]

_MAX_LISTED = 5  # failures named in the warning


def describe_error(err: BaseException) -> str:
    """An error as one line of the errors table: ``"Type: message"``.

    Examples
    --------
    >>> describe_error(ValueError("no data"))
    'ValueError: no data'
    """
    return f"{type(err).__name__}: {err}"


def site_id_type(sites: Sequence[Site]) -> str:
    """``"int"`` if every site id is an int (the table keeps them as int64), else ``"str"``."""
    return "int" if all(isinstance(s.id, int) for s in sites) else "str"


def _id_dtype(sites: Sequence[Site]) -> Any:
    """The ``site_id`` column's dtype: int64 for int ids, else object (ids as given)."""
    return "int64" if site_id_type(sites) == "int" else object


def assemble(
    sites: Sequence[Site],
    years: tuple[int, ...],
    stats: tuple[str, ...],
    rows: Mapping[int, pd.DataFrame],
) -> pd.DataFrame:
    """The final table, in a canonical order and dtypes whatever the rows' origin."""
    columns = ["site_id", "year", "stat", *COVERAGE_COLUMNS, *BANDS]
    ids = [s.id for s in sites]
    id_dtype = _id_dtype(sites)
    if not rows:
        empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
        return empty.astype({"site_id": id_dtype, "year": "int64", "stat": object})
    frames = []
    for position in sorted(rows):
        frame = rows[position].drop(columns=["position"], errors="ignore")
        frame = frame.assign(_pos=position)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    year_rank = {y: i for i, y in enumerate(years)}
    stat_rank = {s: i for i, s in enumerate(stats)}
    table["_year"] = table["year"].map(year_rank)
    table["_stat"] = table["stat"].map(stat_rank)
    table = table.sort_values(["_pos", "_year", "_stat"], kind="stable")
    site_id = pd.Series([ids[p] for p in table["_pos"]], dtype=id_dtype)
    out = pd.DataFrame(
        {
            "site_id": site_id.to_numpy(),
            "year": table["year"].to_numpy(dtype=np.int64),
            "stat": table["stat"].astype(str).to_numpy(dtype=object),
        }
    )
    numbers = [*COVERAGE_COLUMNS, *BANDS]
    values = table[numbers].to_numpy(dtype=np.float64)
    return pd.concat([out, pd.DataFrame(values, columns=numbers)], axis=1)


def errors_frame(
    sites: Sequence[Site], failures: Mapping[int, list[tuple[int | None, str]]]
) -> pd.DataFrame:
    """``site_id, year, error``: the failures by input position (``year`` <NA>: the whole site)."""
    records = [
        (sites[p].id, year, message)
        for p in sorted(failures)
        for year, message in sorted(failures[p], key=lambda f: -1 if f[0] is None else f[0])
    ]
    return pd.DataFrame(
        {
            "site_id": pd.Series([r[0] for r in records], dtype=_id_dtype(sites)),
            "year": pd.Series([r[1] for r in records], dtype="Int64"),
            "error": pd.Series([r[2] for r in records], dtype=object),
        }
    )


def warn_failures(errors: pd.DataFrame, n_sites: int) -> None:
    """Warn once, summarising the failures (the first few named) and how to retry them."""
    whole = errors[errors["year"].isna()]
    failed_sites = errors["site_id"].nunique()
    listed = []
    for row in errors.head(_MAX_LISTED).itertuples():
        when = "" if pd.isna(row.year) else f" {row.year}"
        listed.append(f"site {row.site_id!r}{when}: {row.error}")
    more = f"; ... ({len(errors)} failures in all)" if len(errors) > _MAX_LISTED else ""
    warnings.warn(
        f"xembed.extract: {failed_sites} of {n_sites} sites failed ({len(whole)} entirely, "
        f"the others some years): " + "; ".join(listed) + more + ". The table holds every "
        "other site and year; the failures are in table.attrs['errors'] (re-run with the "
        "same store= to retry only them)",
        UserWarning,
        stacklevel=stacklevel(),
    )
