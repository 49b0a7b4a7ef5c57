"""xembed's errors: one base class, subclasses of the builtin they refine.

Every message names what was wrong, what was expected, and the fix.
"""

from __future__ import annotations

__all__ = [
    "DataNotFoundError",
    "EarthEngineError",
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
