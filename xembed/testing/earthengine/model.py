"""The fake's request model, fault rules, API errors and expression values.

:class:`FakeRequest` records each HTTP request; a fault rule maps one to an
HTTP status to fail it with. :class:`ApiError` is an error the fake replies
with. The frozen dataclasses below are the values an expression graph
evaluates to (images, collections, dates, filters...): the
:mod:`~xembed.testing.fake_earthengine.evaluator` builds them, the
:mod:`~xembed.testing.fake_earthengine.pixels` module reads their pixels and
the :mod:`~xembed.testing.fake_earthengine.server` answers with them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import shapely

#: The Earth Engine functions the fake evaluates: those xembed's graphs and
#: Xee 0.1.x's reads use. Anything else is answered with HTTP 400.
SUPPORTED_FUNCTIONS: frozenset[str] = frozenset(
    {
        "Collection.filter",
        "Collection.first",
        "Collection.iterate",
        "Collection.reduceColumns",
        "Collection.size",
        "Collection.toList",
        "Date",
        "DateRange",
        "Dictionary.get",
        "Element.set",
        "Element.toDictionary",
        "Filter.and",
        "Filter.dateRangeContains",
        "Feature",
        "Filter.intersects",
        "GeometryConstructors.Polygon",
        "GeometryConstructors.Rectangle",
        "Image.addBands",
        "Image.bandNames",
        "Image.constant",
        "Image.mask",
        "Image.select",
        "Image.unmask",
        "ImageCollection.fromImages",
        "ImageCollection.load",
        "ImageCollection.mosaic",
        "List.slice",
        "Reducer.repeat",
        "Reducer.toList",
    }
)

# --------------------------------------------------------------------------- requests, faults


@dataclass(frozen=True)
class FakeRequest:
    """One HTTP request the fake received (retries are separate requests).

    Attributes
    ----------
    number : int
        1-based serial number among all requests.
    kind : str
        ``"discovery"``, ``"algorithms"``, ``"value:compute"``,
        ``"computePixels"`` or ``"other"``.
    kind_number : int
        1-based serial number among requests of the same kind.
    method, path : str
        HTTP method and path (without the query string).
    functions : tuple of str
        Sorted names of the Earth Engine functions in the request's expression.
    status : int
        The HTTP status the fake replied with (0 while it is being answered).
    shape : tuple of int or None
        For a successful ``computePixels``: ``(bands, height, width)`` of the
        reply (for Xee, bands are the years of one variable).
    """

    number: int
    kind: str
    kind_number: int
    method: str
    path: str
    functions: tuple[str, ...] = ()
    status: int = 0
    shape: tuple[int, int, int] | None = None


#: A fault rule: given a request, the HTTP status to fail it with, or None.
FaultRule = Callable[[FakeRequest], "int | None"]


def first_requests_fail(n: int, status: int = 429, *, kind: str = "computePixels") -> FaultRule:
    """A fault rule: the first ``n`` requests of ``kind`` get HTTP ``status``.

    Examples
    --------
    >>> rule = first_requests_fail(2)
    >>> [rule(FakeRequest(i, "computePixels", i, "POST", "/")) for i in (1, 2, 3)]
    [429, 429, None]
    """

    def rule(request: FakeRequest) -> int | None:
        return status if request.kind == kind and request.kind_number <= n else None

    return rule


def all_requests_fail(status: int = 500, *, kind: str = "computePixels") -> FaultRule:
    """A fault rule: every request of ``kind`` gets HTTP ``status``.

    Examples
    --------
    >>> all_requests_fail()(FakeRequest(7, "computePixels", 5, "POST", "/"))
    500
    """

    def rule(request: FakeRequest) -> int | None:
        return status if request.kind == kind else None

    return rule


def as_fault_rule(faults: FaultRule | Mapping[int, int] | None) -> FaultRule:
    if faults is None:
        return lambda request: None
    if isinstance(faults, Mapping):
        table = {int(k): int(v) for k, v in faults.items()}
        return lambda request: (
            table.get(request.kind_number) if request.kind == "computePixels" else None
        )
    if callable(faults):
        return faults
    raise TypeError(
        f"faults must be None, a mapping {{computePixels number: HTTP status}} or a callable "
        f"taking a FakeRequest and returning a status or None; got {type(faults).__name__}"
    )


class ApiError(Exception):
    """An error the fake replies with (status and Earth Engine style message)."""

    _STATUS_NAMES: ClassVar[dict[int, str]] = {
        400: "INVALID_ARGUMENT",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
    }

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> bytes:
        error = {
            "code": self.status,
            "message": self.message,
            "status": self._STATUS_NAMES.get(self.status, "UNKNOWN"),
        }
        return json.dumps({"error": error}).encode()


class Unsupported(ApiError):
    def __init__(self, function: str) -> None:
        super().__init__(
            400,
            f"Function {function!r} is not supported by xembed's fake Earth Engine (it "
            "evaluates only xembed.testing.fake_earthengine.SUPPORTED_FUNCTIONS); if an ee or "
            "Xee upgrade changed the request graph, teach xembed/testing/earthengine/ "
            "the new function and check "
            "that the reads still mean the same thing",
        )
        self.function = function


# --------------------------------------------------------------------------- the data model


@dataclass(frozen=True, eq=False)  # identity: cheap hashing for the caches
class File:
    """One mirror file: one image of the fake collection."""

    href: str
    path: str
    year: int
    zone: str
    crs: str
    footprint: shapely.Geometry  # EPSG:4326
    utm_bounds: tuple[float, float, float, float]


@dataclass(frozen=True)
class Source:
    """Pixels of one band of a mosaic of mirror files (one file: no mosaic)."""

    files: tuple[File, ...]  # bottom to top
    band: int


@dataclass(frozen=True)
class Constant:
    value: float
    masked: bool = False


@dataclass(frozen=True)
class Unmask:
    inner: Any
    value: float


@dataclass(frozen=True)
class Band:
    name: str
    pixels: Any  # Source, Constant or Unmask
    precision: str = "float"


@dataclass(frozen=True)
class Image:
    bands: tuple[Band, ...]
    properties: Mapping[str, Any] = field(default_factory=dict)
    # The native grid of an unmosaicked file (crs, transform, (width, height)).
    native: tuple[str, tuple[float, ...], tuple[int, int]] | None = None
    footprint: shapely.Geometry | None = None


@dataclass(frozen=True)
class Collection:
    images: tuple[Image, ...]
    properties: Mapping[str, Any] = field(default_factory=dict)
    # What the collection was made from, when that is known and hashable: the
    # server caches filter results by it (every request re-sends the graph).
    key: Any = None


@dataclass(frozen=True)
class Date:
    millis: float


@dataclass(frozen=True)
class DateRange:
    start: float
    end: float


@dataclass(frozen=True)
class Geometry:
    shape: shapely.Geometry  # EPSG:4326


@dataclass(frozen=True)
class Filter:
    test: Callable[[Image], bool]
    key: Any = None


@dataclass(frozen=True)
class Reducer:
    kind: str
    count: int = 1


@dataclass(frozen=True)
class Function:
    """A ``functionDefinitionValue`` closed over its graph."""

    argument_names: tuple[str, ...]
    body: str
    scope: Mapping[str, Any]


def functions_in(expression: Mapping[str, Any]) -> tuple[str, ...]:
    """Sorted names of every function an expression graph invokes (nested ones too)."""
    names = set()
    stack: list[Any] = list(expression.get("values", {}).values())
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            call = node.get("functionInvocationValue")
            if isinstance(call, Mapping) and "functionName" in call:
                names.add(call["functionName"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return tuple(sorted(names))
