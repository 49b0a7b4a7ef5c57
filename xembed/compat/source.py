"""Where the notebook's calls read from: :func:`use_source` and its setting."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import xarray as xr

from xembed.cube import check_source_name, is_source_path

_SOURCE_OPTIONS = ("root", "project", "chunks")


STATE: dict[str, Any] = {"source": "sample"}


class SourceSetting:
    """What :func:`use_source` set; also a context manager that restores the previous one.

    Examples
    --------
    >>> with use_source("cog", root="/data/aef"):
    ...     current_source()["source"]
    'cog'
    >>> current_source()["source"]
    'sample'
    """

    def __init__(self, setting: dict[str, Any], previous: dict[str, Any]) -> None:
        self.setting = setting
        self.previous = previous

    def __enter__(self) -> SourceSetting:
        return self

    def __exit__(self, *exc: object) -> None:
        STATE.clear()
        STATE.update(self.previous)

    def __repr__(self) -> str:
        args = [repr(self.setting["source"])]
        args += [f"{k}={v!r}" for k, v in self.setting.items() if k != "source"]
        return f"use_source({', '.join(args)})"


def use_source(source: str | os.PathLike[str] = "sample", **options: Any) -> SourceSetting:
    """Point the notebook's calls at a data source (the one line to change).

    Parameters
    ----------
    source : {"sample", "cog", "ee"} or path, default "sample"
        ``"sample"``: the bundled demo data (offline; generated on first
        use). ``"cog"``: the public Cloud-Optimized GeoTIFF mirror (no
        account). ``"ee"``: Earth Engine (replaces the notebook's
        ``ee.Authenticate()`` / ``ee.Initialize(project=...)`` lines; run
        ``earthengine authenticate`` once). A path: a local mirror folder.
    **options
        Passed to :func:`xembed.open_embeddings`: ``root=`` (mirror
        location for ``"cog"``/``"sample"``), ``project=`` (Cloud project
        for ``"ee"``), ``chunks=``.

    Returns
    -------
    SourceSetting
        Usable as a context manager to switch sources for a block only.

    Raises
    ------
    xembed.errors.SourceError
        For an unknown source name.
    TypeError
        For an option other than ``root``, ``project``, ``chunks``.

    Examples
    --------
    >>> use_source("ee", project="my-project")
    use_source('ee', project='my-project')
    >>> use_source("sample")  # back to the default
    use_source('sample')
    """
    unknown = sorted(set(options) - set(_SOURCE_OPTIONS))
    if unknown:
        raise TypeError(
            f"use_source() got unknown options {unknown}; it takes {list(_SOURCE_OPTIONS)} "
            "(passed to xembed.open_embeddings)"
        )
    check_source_name(source)
    is_path = is_source_path(source)
    if source == "ee" and options.get("root") is not None:
        raise TypeError("root= is for mirror sources; for source='ee' pass project=")
    if source != "ee" and options.get("project") is not None:
        raise TypeError(f"project= is only for source='ee', not source={source!r}")
    setting = {"source": os.fspath(source) if is_path else source, **options}
    previous = dict(STATE)
    STATE.clear()
    STATE.update(setting)
    return SourceSetting(dict(setting), previous)


def current_source() -> dict[str, Any]:
    """The source the compat calls read, as :func:`use_source` set it.

    Examples
    --------
    >>> current_source()
    {'source': 'sample'}
    """
    return dict(STATE)


def open_with_source(
    where: Any, years: Sequence[int], *, clip: bool, setting: Mapping[str, Any] | None = None
) -> xr.Dataset:
    from xembed.cube import open_embeddings

    opts = dict(STATE if setting is None else setting)
    return open_embeddings(where, years, clip=clip, **opts)
