"""Small helpers every layer may use: atomic writes, the cache folder, CRS transformers.

This module imports nothing from xembed but :mod:`xembed.errors`, so any
module can use it without creating an import cycle.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyproj

__all__ = ["atomic_write", "cache_dir", "stacklevel", "temp_sibling", "transformer"]

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def cache_dir() -> Path:
    """Where xembed caches data: ``$XEMBED_CACHE``, else the platform's user cache.

    Examples
    --------
    >>> import os
    >>> os.environ["XEMBED_CACHE"] = "/tmp/xembed-cache-doc"
    >>> str(cache_dir())
    '/tmp/xembed-cache-doc'
    >>> del os.environ["XEMBED_CACHE"]
    """
    env = os.environ.get("XEMBED_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("xembed"))


def temp_sibling(path: str | os.PathLike[str]) -> Path:
    """A hidden, unique name beside ``path`` ending in ``.tmp`` (for write-then-rename).

    Examples
    --------
    >>> name = temp_sibling("/data/means.csv").name
    >>> name.startswith(".means.csv.") and name.endswith(".tmp")
    True
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], Any], *, durable: bool = False
) -> Path:
    """``write(tmp)`` to a hidden temporary sibling of ``path``, then rename it into place.

    Readers see either the old file or the whole new one, never a torn one;
    on any error (KeyboardInterrupt included) the temporary is removed and
    ``path`` is left as it was. The parent folder is created.

    Parameters
    ----------
    path : str or path
        The file to write.
    write : callable
        Called with the temporary path; writes the whole file there.
    durable : bool
        Also ``fsync`` the file and its folder, so the file survives a power
        loss once this returns (for resumable stores).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    IsADirectoryError
        If ``path`` is a folder.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "a" / "note.txt"
    >>> atomic_write(target, lambda tmp: tmp.write_text("hello")).read_text()
    'hello'
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{str(path)!r} is a folder; give a file name, e.g. {path / 'out.png'}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        with contextlib.suppress(OSError):  # make the rename itself durable
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return path


@functools.lru_cache(maxsize=128)
def transformer(src: Any, dst: Any) -> pyproj.Transformer:
    """A cached ``always_xy`` :class:`pyproj.Transformer` from ``src`` to ``dst``.

    Building one costs milliseconds; sites reuse a handful of CRS pairs.
    ``src`` and ``dst`` are anything hashable :meth:`pyproj.CRS.from_user_input`
    accepts (a CRS, ``"EPSG:32722"``, 4326).

    Examples
    --------
    >>> x, y = transformer("EPSG:4326", "EPSG:32622").transform(-51.0, 0.0)
    >>> round(x, 3), round(y, 3)
    (500000.0, 0.0)
    """
    return pyproj.Transformer.from_crs(src, dst, always_xy=True)


def stacklevel() -> int:
    """Stack level of the first caller outside xembed, so warnings point at user code."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PKG_DIR)
        # dataclass-generated __init__ has no file but an xembed module's globals
        or str(frame.f_globals.get("__name__", "")).startswith("xembed.")
    ):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level
