"""xembed's errors: one base class, subclasses of the builtin they refine.

Every message names what was wrong, what was expected, and the fix.
"""

from __future__ import annotations

__all__ = [
    "CoverageWarning",
    "DataNotFoundError",
    "EarthEngineError",
    "ReadError",
    "SchemaError",
    "SiteError",
    "SourceError",
    "XembedError",
]


class XembedError(Exception):
    """Base class of every error xembed raises on purpose."""


class SiteError(XembedError, ValueError):
    """A site or site file cannot be used (no geometry, invalid, empty...)."""


class SchemaError(XembedError, ValueError):
    """A dataset does not follow the cube schema."""


class SourceError(XembedError, ValueError):
    """A data source is unknown or malformed (no index, missing columns...)."""


class DataNotFoundError(XembedError, LookupError):
    """The requested place or years are not covered by the source."""


class EarthEngineError(XembedError, RuntimeError):
    """Earth Engine could not be reached, set up, or could not compute a read."""


class ReadError(XembedError, OSError):
    """A file of the mirror could not be read: truncated, corrupt, or unreachable.

    Raised after the retry budget (:data:`xembed.sources.cog.RETRY`) is spent for remote files,
    at once for local ones. The message names the file, the part that failed
    and the fix. Picklable, so it crosses ``dask.distributed`` workers intact.

    Attributes
    ----------
    href : str or None
        The file (local path or URL).
    attempts : int
        How many times the read was tried.

    Examples
    --------
    >>> err = ReadError("could not read 'x.tiff'", href="x.tiff", attempts=3)
    >>> isinstance(err, OSError), err.href, err.attempts
    (True, 'x.tiff', 3)
    """

    def __init__(self, message: str, *, href: str | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.href = href
        self.attempts = attempts


class CoverageWarning(UserWarning):
    """Some site-years stand on only part of their site: data covers less than ``min_valid``.

    Raised (once per call, listing the site-years) by the functions that
    return tables of means: :func:`xembed.to_frame`, :func:`xembed.extract`
    and :func:`xembed.check_coverage`. The means of those site-years are
    those of the part with data; the tables' ``valid_fraction`` column says
    how much that is. Pass ``min_valid=0`` to silence it, or filter it::

        warnings.filterwarnings("ignore", category=xembed.CoverageWarning)

    Examples
    --------
    >>> issubclass(CoverageWarning, UserWarning)
    True
    """
