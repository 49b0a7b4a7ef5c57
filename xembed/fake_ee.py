"""A local fake of the Earth Engine REST API, serving a mirror-format folder.

:func:`fake_earthengine` starts a small threaded HTTP server on 127.0.0.1
that answers the four calls the ``earthengine-api`` client and Xee make to
open and read an image collection:

- ``GET /$discovery/rest``: the API description (the one ``ee`` ships in
  ``ee/tests/``, relabelled ``v1``);
- ``GET /v1/projects/{project}/algorithms``: the function list (``ee``'s
  ``ee/tests/algorithms.json``);
- ``POST /v1/projects/{project}/value:compute``: ``getInfo`` of a value;
- ``POST /v1/projects/{project}/image:computePixels``: pixels as ``.npy``.

It serves ``GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL`` from a local mirror (the
bundled sample by default), one collection image per mirror file, by
evaluating the request's expression graph itself. It knows only the handful of
functions xembed's graphs use (:data:`SUPPORTED_FUNCTIONS`) and answers any
other with HTTP 400 naming it, so an ``ee`` or Xee upgrade that changes the
graph fails loudly instead of silently computing something else.

Nothing here talks to the internet; the real client and the real Xee run end
to end against it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as _dt
import functools
import http.server
import io
import json
import os
import re
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import numpy as np
import pyproj
import shapely

from xembed.schema import BANDS, COLLECTION, NODATA, dequantize

__all__ = [
    "SUPPORTED_FUNCTIONS",
    "FakeEarthEngine",
    "FakeRequest",
    "all_requests_fail",
    "fake_earthengine",
    "first_requests_fail",
]

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

_MS_PER_DAY = 86_400_000


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


def _as_fault_rule(faults: FaultRule | Mapping[int, int] | None) -> FaultRule:
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


class _ApiError(Exception):
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


class _Unsupported(_ApiError):
    def __init__(self, function: str) -> None:
        super().__init__(
            400,
            f"Function {function!r} is not supported by xembed's fake Earth Engine (it "
            "evaluates only xembed.fake_ee.SUPPORTED_FUNCTIONS); if an ee or Xee upgrade "
            "changed the request graph, teach xembed/fake_ee.py the new function and check "
            "that the reads still mean the same thing",
        )
        self.function = function


# --------------------------------------------------------------------------- the data model


@dataclass(frozen=True, eq=False)  # identity: cheap hashing for the caches
class _File:
    """One mirror file: one image of the fake collection."""

    href: str
    path: str
    year: int
    zone: str
    crs: str
    footprint: shapely.Geometry  # EPSG:4326
    utm_bounds: tuple[float, float, float, float]


@dataclass(frozen=True)
class _Source:
    """Pixels of one band of a mosaic of mirror files (one file: no mosaic)."""

    files: tuple[_File, ...]  # bottom to top
    band: int


@dataclass(frozen=True)
class _Constant:
    value: float
    masked: bool = False


@dataclass(frozen=True)
class _Unmask:
    inner: Any
    value: float


@dataclass(frozen=True)
class _Band:
    name: str
    pixels: Any  # _Source, _Constant or _Unmask
    precision: str = "float"


@dataclass(frozen=True)
class _Image:
    bands: tuple[_Band, ...]
    properties: Mapping[str, Any] = field(default_factory=dict)
    # The native grid of an unmosaicked file (crs, transform, (width, height)).
    native: tuple[str, tuple[float, ...], tuple[int, int]] | None = None
    footprint: shapely.Geometry | None = None


@dataclass(frozen=True)
class _Collection:
    images: tuple[_Image, ...]
    properties: Mapping[str, Any] = field(default_factory=dict)
    # What the collection was made from, when that is known and hashable: the
    # server caches filter results by it (every request re-sends the graph).
    key: Any = None


@dataclass(frozen=True)
class _Date:
    millis: float


@dataclass(frozen=True)
class _DateRange:
    start: float
    end: float


@dataclass(frozen=True)
class _Geometry:
    shape: shapely.Geometry  # EPSG:4326


@dataclass(frozen=True)
class _Filter:
    test: Callable[[_Image], bool]
    key: Any = None


@dataclass(frozen=True)
class _Reducer:
    kind: str
    count: int = 1


@dataclass(frozen=True)
class _Function:
    """A ``functionDefinitionValue`` closed over its graph."""

    argument_names: tuple[str, ...]
    body: str
    scope: Mapping[str, Any]


def _millis(value: Any) -> float:
    """Milliseconds since 1970 of a date given as ms, an ISO string or a _Date."""
    if isinstance(value, _Date):
        return value.millis
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=_dt.UTC)
        return parsed.timestamp() * 1000.0
    raise _ApiError(400, f"cannot interpret {value!r} as a date")


def _year_millis(year: int) -> int:
    return int(_dt.datetime(year, 1, 1, tzinfo=_dt.UTC).timestamp() * 1000)


# --------------------------------------------------------------------------- the evaluator


def _functions_in(expression: Mapping[str, Any]) -> tuple[str, ...]:
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


class _Evaluator:
    """Evaluates one serialized expression graph (``{"result": id, "values": {...}}``)."""

    def __init__(self, server: FakeEarthEngine, values: Mapping[str, Any]) -> None:
        self.server = server
        self.values = values
        self.cache: dict[str, Any] = {}

    def reference(self, ref: str, scope: Mapping[str, Any]) -> Any:
        # Only closed (argument-free) subgraphs are cached: function bodies
        # depend on their arguments.
        if not scope and ref in self.cache:
            return self.cache[ref]
        try:
            node = self.values[ref]
        except KeyError:
            raise _ApiError(400, f"expression refers to missing value {ref!r}") from None
        value = self.node(node, scope)
        if not scope:
            self.cache[ref] = value
        return value

    def node(self, node: Any, scope: Mapping[str, Any]) -> Any:
        if not isinstance(node, Mapping) or len(node) != 1:
            raise _ApiError(400, f"malformed expression node {node!r}")
        ((kind, body),) = node.items()
        if kind == "constantValue":
            return body
        if kind == "integerValue":
            return int(body)
        if kind == "bytesValue":
            return base64.b64decode(body)
        if kind == "valueReference":
            return self.reference(body, scope)
        if kind == "argumentReference":
            try:
                return scope[body]
            except KeyError:
                raise _ApiError(400, f"unbound function argument {body!r}") from None
        if kind == "arrayValue":
            return [self.node(v, scope) for v in body.get("values", [])]
        if kind == "dictionaryValue":
            return {k: self.node(v, scope) for k, v in body.get("values", {}).items()}
        if kind == "functionDefinitionValue":
            return _Function(tuple(body.get("argumentNames", ())), body["body"], dict(scope))
        if kind == "functionInvocationValue":
            args = {k: self.node(v, scope) for k, v in body.get("arguments", {}).items()}
            if "functionReference" in body:
                function = self.reference(body["functionReference"], scope)
                return self.call_function(function, list(args.values()), args)
            return self.invoke(body["functionName"], args)
        raise _ApiError(400, f"unknown expression node kind {kind!r}")

    def call_function(self, function: Any, positional: list[Any], named: Mapping[str, Any]) -> Any:
        if not isinstance(function, _Function):
            raise _ApiError(400, f"{function!r} is not a function")
        scope = dict(function.scope)
        if named and set(named) <= set(function.argument_names):
            scope.update(named)
        else:
            scope.update(zip(function.argument_names, positional, strict=False))
        return self.reference(function.body, scope)

    def invoke(self, name: str, args: Mapping[str, Any]) -> Any:
        if name not in SUPPORTED_FUNCTIONS:
            raise _Unsupported(name)
        handler = getattr(self, "fn_" + name.replace(".", "_"))
        return handler(**args)

    # ----------------------------------------------------------------- collections

    def fn_ImageCollection_load(self, id: str, version: Any = None) -> _Collection:
        if id != COLLECTION:
            raise _ApiError(
                404,
                f"ImageCollection asset {id!r} not found: xembed's fake Earth Engine serves "
                f"only {COLLECTION!r}",
            )
        return self.server.collection()

    def fn_ImageCollection_fromImages(self, images: list[Any]) -> _Collection:
        return _Collection(tuple(_as_image(i) for i in images))

    def fn_ImageCollection_mosaic(self, collection: _Collection) -> _Image:
        images = _as_collection(collection).images
        if not images:
            return _Image(())  # Earth Engine: the mosaic of nothing has no bands
        first = images[0].bands
        sources = [(b.name, b.pixels) for b in first]
        for image in images[1:]:
            # Collection images share band order (A00..A63 from band 0 up).
            if len(image.bands) != len(first) or image.bands[0].name != first[0].name:
                raise _ApiError(400, "the fake mosaics only images with identical band names")
        if not all(isinstance(p, _Source) and len(p.files) == 1 for _, p in sources):
            raise _ApiError(400, "the fake mosaics only images of the collection itself")
        files = tuple(f for image in images for f in image.bands[0].pixels.files)
        return self.server.mosaic(files, tuple(name for name, _ in sources))

    def fn_Collection_filter(self, collection: _Collection, filter: _Filter) -> _Collection:
        collection = _as_collection(collection)
        key = None
        if collection.key is not None and filter.key is not None:
            key = ("filter", collection.key, filter.key)
            cached = self.server.cached(key)
            if cached is not None:
                return cached
        kept = tuple(i for i in collection.images if filter.test(i))
        result = _Collection(kept, collection.properties, key)
        if key is not None:
            self.server.cache(key, result)
        return result

    def fn_Collection_size(self, collection: _Collection) -> int:
        return len(_as_collection(collection).images)

    def fn_Collection_first(self, collection: _Collection) -> _Image | None:
        images = _as_collection(collection).images
        return images[0] if images else None

    def fn_Collection_toList(
        self, collection: _Collection, count: int, offset: int = 0
    ) -> list[_Image]:
        images = _as_collection(collection).images
        return list(images[int(offset) : int(offset) + int(count)])

    def fn_Collection_iterate(
        self, collection: _Collection, function: _Function, first: Any = None
    ) -> Any:
        state = first
        for image in _as_collection(collection).images:
            state = self.call_function(function, [image, state], {})
        return state

    def fn_Collection_reduceColumns(
        self,
        collection: _Collection,
        reducer: _Reducer,
        selectors: list[str],
        weightSelectors: Any = None,
    ) -> dict[str, Any]:
        if reducer.kind != "toList" or reducer.count != len(selectors) or weightSelectors:
            raise _ApiError(
                400, "the fake reduces columns only with toList().repeat(len(selectors))"
            )
        columns: list[list[Any]] = [[] for _ in selectors]
        for image in _as_collection(collection).images:
            row = [image.properties.get(s) for s in selectors]
            # Earth Engine skips rows with a missing input (mosaics have no
            # system:id, so Xee gets empty lists and labels time 0..n-1).
            if any(v is None for v in row):
                continue
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        if reducer.count == 1:
            return {"list": columns[0]}
        return {"list": columns}

    def fn_Reducer_toList(self, tupleSize: Any = None, numOptional: Any = None) -> _Reducer:
        return _Reducer("toList", 1)

    def fn_Reducer_repeat(self, reducer: _Reducer, count: int) -> _Reducer:
        return _Reducer(reducer.kind, reducer.count * int(count))

    # ----------------------------------------------------------------- elements, values

    def fn_Element_set(self, object: Any, key: str, value: Any) -> Any:
        if isinstance(object, _Image):
            return _Image(
                object.bands,
                {**object.properties, key: _plain(value)},
                object.native,
                object.footprint,
            )
        if isinstance(object, _Collection):
            return _Collection(object.images, {**object.properties, key: _plain(value)})
        raise _ApiError(400, f"Element.set on {type(object).__name__} is not supported")

    def fn_Element_toDictionary(self, element: Any, properties: Any = None) -> dict[str, Any]:
        props = dict(element.properties)
        if properties is not None:
            return {k: props[k] for k in properties if k in props}
        return {k: v for k, v in props.items() if not k.startswith("system:")}

    def fn_Dictionary_get(
        self, dictionary: Mapping[str, Any], key: str, defaultValue: Any = None
    ) -> Any:
        if key in dictionary:
            return dictionary[key]
        if defaultValue is not None:
            return defaultValue
        raise _ApiError(400, f"Dictionary.get: key {key!r} not found in {sorted(dictionary)}")

    def fn_List_slice(
        self, list: list[Any], start: int, end: Any = None, step: Any = None
    ) -> list[Any]:
        return list[slice(start, end, step)]

    def fn_Date(self, value: Any, timeZone: Any = None) -> _Date:
        if timeZone not in (None, "UTC"):
            raise _ApiError(400, f"the fake supports dates in UTC only, got {timeZone!r}")
        return _Date(_millis(value))

    def fn_DateRange(self, start: Any, end: Any = None, timeZone: Any = None) -> _DateRange:
        if timeZone not in (None, "UTC"):
            raise _ApiError(400, f"the fake supports dates in UTC only, got {timeZone!r}")
        begin = _millis(start)
        return _DateRange(begin, begin + _MS_PER_DAY if end is None else _millis(end))

    # ----------------------------------------------------------------- filters, geometry

    def fn_Filter_dateRangeContains(
        self,
        leftValue: Any = None,
        rightField: Any = None,
        **other: Any,
    ) -> _Filter:
        if not isinstance(leftValue, _DateRange) or rightField is None or other:
            raise _ApiError(
                400, "the fake supports Filter.dateRangeContains(leftValue=range, rightField=...)"
            )
        window = leftValue

        def test(image: _Image) -> bool:
            t = image.properties.get(rightField)
            return t is not None and window.start <= float(t) < window.end

        return _Filter(test, ("dateRangeContains", window.start, window.end, rightField))

    def fn_Filter_intersects(
        self,
        leftField: Any = None,
        rightValue: Any = None,
        maxError: Any = None,
        **other: Any,
    ) -> _Filter:
        if leftField != ".all" or not isinstance(rightValue, _Geometry) or other:
            raise _ApiError(
                400, "the fake supports Filter.intersects(leftField='.all', rightValue=geometry)"
            )
        region = rightValue.shape

        def test(image: _Image) -> bool:
            return image.footprint is not None and bool(shapely.intersects(image.footprint, region))

        return _Filter(test, ("intersects", region.wkb))

    def fn_Feature(self, geometry: Any = None, metadata: Any = None) -> _Geometry:
        # filterBounds wraps its region in a Feature; only the geometry matters.
        if not isinstance(geometry, _Geometry):
            raise _ApiError(400, "the fake supports Feature(geometry) only as a filter region")
        return geometry

    def fn_Filter_and(self, filters: list[_Filter]) -> _Filter:
        keys = tuple(f.key for f in filters)
        key = None if any(k is None for k in keys) else ("and", keys)
        return _Filter(lambda image: all(f.test(image) for f in filters), key)

    def fn_GeometryConstructors_Rectangle(
        self,
        coordinates: Any,
        crs: Any = None,
        geodesic: Any = None,
        evenOdd: Any = None,
    ) -> _Geometry:
        flat = np.asarray(coordinates, dtype=float).ravel()
        if flat.size != 4:
            raise _ApiError(400, f"Rectangle needs [west, south, east, north], got {coordinates!r}")
        return _Geometry(_to_wgs84(shapely.box(*flat), crs))

    def fn_GeometryConstructors_Polygon(
        self,
        coordinates: Any,
        crs: Any = None,
        geodesic: Any = None,
        maxError: Any = None,
        evenOdd: Any = None,
    ) -> _Geometry:
        # One ring [[x, y], ...] or rings [[[x, y], ...], ...] (outer first).
        rings = [coordinates] if isinstance(coordinates[0][0], (int, float)) else coordinates
        return _Geometry(_to_wgs84(shapely.Polygon(rings[0], rings[1:]), crs))

    # ----------------------------------------------------------------- images

    def fn_Image_constant(self, value: Any) -> _Image:
        values = value if isinstance(value, list) else [value]
        precision = "int" if all(isinstance(v, int) for v in values) else "float"
        names = ["constant"] if len(values) == 1 else [f"constant_{i}" for i in range(len(values))]
        return _Image(
            tuple(
                _Band(n, _Constant(float(v)), precision) for n, v in zip(names, values, strict=True)
            )
        )

    def fn_Image_mask(self, image: Any, mask: Any = None) -> Any:
        # ee.Image() is Image.mask(Image.constant(0), Image.constant(0)): a
        # fully masked constant, the seed of Xee's band stacking.
        image = _as_image(image)
        mask_image = _as_image(mask) if mask is not None else None
        if mask_image is None or not all(isinstance(b.pixels, _Constant) for b in mask_image.bands):
            raise _ApiError(400, "the fake supports Image.mask only with a constant mask")
        if any(b.pixels.value != 0 for b in mask_image.bands):
            return image
        if not all(isinstance(b.pixels, _Constant) for b in image.bands):
            raise _ApiError(400, "the fake masks only constant images")
        bands = tuple(_Band(b.name, _Constant(0.0, masked=True), b.precision) for b in image.bands)
        return _Image(bands, image.properties, image.native, image.footprint)

    def fn_Image_addBands(
        self,
        dstImg: Any,
        srcImg: Any,
        names: Any = None,
        overwrite: Any = False,
    ) -> _Image:
        dst, src = _as_image(dstImg), _as_image(srcImg)
        added = src.bands if names is None else _select(src, names)
        bands = list(dst.bands)
        for band in added:
            taken = {b.name for b in bands}
            name = band.name
            if name in taken:
                if overwrite:
                    bands = [b for b in bands if b.name != name]
                else:
                    # Earth Engine keeps both, renaming the newcomer A00_1, A00_2...
                    k = 1
                    while f"{name}_{k}" in taken:
                        k += 1
                    name = f"{name}_{k}"
            bands.append(_Band(name, band.pixels, band.precision))
        return _Image(tuple(bands), dst.properties, dst.native, dst.footprint)

    def fn_Image_bandNames(self, image: Any) -> list[str]:
        return [b.name for b in _as_image(image).bands]

    def fn_Image_select(self, input: Any, bandSelectors: Any, newNames: Any = None) -> _Image:
        image = _as_image(input)
        bands = _select(image, bandSelectors)
        if newNames is not None:
            if len(newNames) != len(bands):
                raise _ApiError(400, f"select: {len(newNames)} new names for {len(bands)} bands")
            bands = [_Band(n, b.pixels, b.precision) for n, b in zip(newNames, bands, strict=True)]
        return _Image(tuple(bands), image.properties, image.native, image.footprint)

    def fn_Image_unmask(self, input: Any, value: Any = None, sameFootprint: Any = True) -> _Image:
        image = _as_image(input)
        if value is None:
            fill = 0.0
        elif isinstance(value, (int, float)):
            fill = float(value)
        else:
            fill_image = _as_image(value)
            if len(fill_image.bands) != 1 or not isinstance(fill_image.bands[0].pixels, _Constant):
                raise _ApiError(400, "the fake unmasks only with a constant value")
            fill = fill_image.bands[0].pixels.value
        if sameFootprint is not False:
            # True (the default) keeps pixels outside the footprint masked: the
            # fake does not model footprints, so it cannot honour it faithfully.
            raise _ApiError(400, "the fake supports Image.unmask only with sameFootprint=False")
        bands = tuple(_Band(b.name, _Unmask(b.pixels, fill), b.precision) for b in image.bands)
        return _Image(bands, image.properties, image.native, image.footprint)


def _plain(value: Any) -> Any:
    if isinstance(value, _Date):
        return value.millis
    return value


def _as_image(value: Any) -> _Image:
    if isinstance(value, _Image):
        return value
    if isinstance(value, (int, float)):
        return _Image(
            (
                _Band(
                    "constant",
                    _Constant(float(value)),
                    "int" if isinstance(value, int) else "float",
                ),
            )
        )
    raise _ApiError(400, f"expected an Image, got {type(value).__name__}")


def _as_collection(value: Any) -> _Collection:
    if isinstance(value, _Collection):
        return value
    raise _ApiError(400, f"expected an ImageCollection, got {type(value).__name__}")


def _select(image: _Image, selectors: Any) -> list[_Band]:
    selectors = selectors if isinstance(selectors, list) else [selectors]
    chosen: list[_Band] = []
    for selector in selectors:
        if isinstance(selector, int):
            try:
                chosen.append(image.bands[selector])
            except IndexError:
                raise _ApiError(400, f"band index {selector} out of range") from None
            continue
        pattern = re.compile(str(selector))
        matches = [b for b in image.bands if pattern.fullmatch(b.name)]
        if not matches:
            names = [b.name for b in image.bands]
            raise _ApiError(
                400, f"Image.select: pattern {selector!r} did not match any bands: {names}"
            )
        chosen.extend(matches)
    return chosen


def _to_wgs84(shape: shapely.Geometry, crs: Any) -> shapely.Geometry:
    """A geometry given in ``crs`` (a code such as ``"EPSG:32722"``; None: lon/lat)."""
    if crs is None or str(crs).upper() == "EPSG:4326":
        return shape
    if not isinstance(crs, str):
        raise _ApiError(400, f"the fake takes geometry CRSs as codes ('EPSG:32722'), not {crs!r}")
    # Straight edges in the source CRS: densify before carrying them to lon/lat.
    dense = shapely.segmentize(shape, max(shape.length / 64, 1e-9))
    to_wgs84 = _transformer(crs, "EPSG:4326")
    return shapely.transform(dense, lambda c: np.column_stack(to_wgs84.transform(*c.T)))


# --------------------------------------------------------------------------- JSON results


def _encode(value: Any) -> Any:
    """An evaluated value as Earth Engine's value:compute JSON."""
    if isinstance(value, _Image):
        return _image_info(value)
    if isinstance(value, _Collection):
        return {
            "type": "ImageCollection",
            "bands": [],
            "features": [_image_info(i) for i in value.images],
            "properties": dict(value.properties),
        }
    if isinstance(value, _Date):
        return {"type": "Date", "value": value.millis}
    if isinstance(value, _Geometry):
        return shapely.geometry.mapping(value.shape)
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (_Filter, _Reducer, _Function, _DateRange)):
        raise _ApiError(400, f"the fake cannot return a {type(value).__name__[1:]} by value")
    return value


def _image_info(image: _Image) -> dict[str, Any]:
    if image.native is not None:
        crs, transform, dims = image.native
        grid = {"crs": crs, "crs_transform": list(transform), "dimensions": list(dims)}
    else:
        # Computed images (mosaics) are in Earth Engine's default projection.
        grid = {"crs": "EPSG:4326", "crs_transform": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]}
    bands = [
        {"id": b.name, "data_type": {"type": "PixelType", "precision": b.precision}, **grid}
        for b in image.bands
    ]
    info: dict[str, Any] = {"type": "Image", "bands": bands}
    if image.properties:
        info["properties"] = dict(image.properties)
    return info


# --------------------------------------------------------------------------- pixels


@dataclass(frozen=True)
class _RequestGrid:
    crs: str
    west: float
    north: float
    res: float
    width: int
    height: int

    @functools.cached_property
    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        x = self.west + self.res * (np.arange(self.width) + 0.5)
        y = self.north - self.res * (np.arange(self.height) + 0.5)
        return x, y


def _parse_grid(grid: Mapping[str, Any]) -> _RequestGrid:
    try:
        dims = grid["dimensions"]
        t = grid["affineTransform"]
        crs = grid["crsCode"]
        width, height = int(dims["width"]), int(dims["height"])
        sx, shx, tx = float(t["scaleX"]), float(t.get("shearX", 0)), float(t["translateX"])
        shy, sy, ty = float(t.get("shearY", 0)), float(t["scaleY"]), float(t["translateY"])
    except (KeyError, TypeError, ValueError) as err:
        raise _ApiError(400, f"malformed computePixels grid {dict(grid)!r}: {err}") from None
    if shx or shy or sy != -sx or sx <= 0:
        raise _ApiError(
            400,
            f"the fake serves only north-up, square-pixel grids (scaleY == -scaleX, no shear); "
            f"got {dict(t)!r}",
        )
    if width <= 0 or height <= 0 or width * height > 32768 * 32768:
        raise _ApiError(400, f"bad grid dimensions {width} x {height}")
    return _RequestGrid(str(crs), tx, ty, sx, width, height)


#: Files whose 64 bands hold at most this many bytes are read whole and kept
#: in memory (the sample's are 2.4 MB): a window's 64 band requests then read
#: each file once. Bigger files (the real mirror's 4 GB) are read by window.
_WHOLE_FILE_BYTES = 64 * 2**20
#: Memory the whole-file cache may use.
_CACHE_BYTES = 512 * 2**20


class _FileCache:
    """A thread-safe, byte-bounded LRU of whole files (int8, bands x rows x cols)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, href: str) -> np.ndarray:
        with self._lock:
            if href in self._data:
                self._data[href] = self._data.pop(href)  # most recently used last
                return self._data[href]
            loading = self._loading.setdefault(href, threading.Lock())
        with loading:  # one reader per file; the others wait for it
            with self._lock:
                if href in self._data:
                    return self._data[href]
            import rasterio

            with rasterio.open(href) as src:
                data = src.read()
            with self._lock:
                self._data[href] = data
                self._loading.pop(href, None)
                while (
                    sum(a.nbytes for a in self._data.values()) > self.capacity
                    and len(self._data) > 1
                ):
                    self._data.pop(next(iter(self._data)))
            return data


_FILES = _FileCache(_CACHE_BYTES)


@dataclass(frozen=True)
class _Header:
    transform: tuple[float, ...]
    width: int
    height: int
    count: int


@functools.lru_cache(maxsize=4096)
def _header(href: str) -> _Header:
    import rasterio

    with rasterio.open(href) as src:
        t = src.transform
        return _Header((t.a, t.b, t.c, t.d, t.e, t.f), src.width, src.height, src.count)


@functools.lru_cache(maxsize=64)
def _transformer(src: str, dst: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(src, dst, always_xy=True)


@functools.lru_cache(maxsize=64)
def _same_crs(a: str, b: str) -> bool:
    return pyproj.CRS.from_user_input(a) == pyproj.CRS.from_user_input(b)


@functools.lru_cache(maxsize=1024)
def _source_pixels(
    crs: str, header: _Header, grid: _RequestGrid
) -> tuple[np.ndarray, np.ndarray] | None:
    """Source (rows, cols) of the file pixel that holds each destination centre.

    The rule of the COG reader: the pixel containing the destination pixel
    centre, transformed exactly (pyproj) when the file is in another UTM
    zone. ``None`` if no centre falls in the file. Cached by the file's
    grid, which every year's file at that place shares, so a window's
    requests (64 bands x years) transform its centres once per place.
    """
    a, _, c, _, e, f = header.transform
    xs, ys = grid.centres
    if _same_crs(crs, grid.crs):
        rows = np.floor((ys - f) / e).astype(np.int64)[:, None]
        cols = np.floor((xs - c) / a).astype(np.int64)[None, :]
        rows, cols = (np.ascontiguousarray(v) for v in np.broadcast_arrays(rows, cols))
    else:
        # Cheap rejection first: the window's (densified) bounds in the file's CRS.
        west, north = grid.west, grid.north
        east, south = west + grid.res * grid.width, north - grid.res * grid.height
        bx0, by0, bx1, by1 = _transformer(grid.crs, crs).transform_bounds(
            west, south, east, north, densify_pts=21
        )
        fx = sorted((c, c + a * header.width))
        fy = sorted((f, f + e * header.height))
        margin = 2 * grid.res
        if (
            bx1 < fx[0] - margin
            or bx0 > fx[1] + margin
            or by1 < fy[0] - margin
            or by0 > fy[1] + margin
        ):
            return None
        xx, yy = np.meshgrid(xs, ys)
        sx, sy = _transformer(grid.crs, crs).transform(xx, yy)
        rows = np.floor((sy - f) / e).astype(np.int64)
        cols = np.floor((sx - c) / a).astype(np.int64)
    inside = (rows >= 0) & (rows < header.height) & (cols >= 0) & (cols < header.width)
    if not inside.any():
        return None
    return rows, cols


def _read_mosaic(files: tuple[_File, ...], bands: list[int], grid: _RequestGrid) -> np.ndarray:
    """int8 ``(len(bands), height, width)`` mosaic on ``grid``: later files on top, -128 empty."""
    out = np.full((len(bands), grid.height, grid.width), NODATA, dtype=np.int8)
    for file in files:
        header = _header(file.href)
        found = _source_pixels(file.crs, header, grid)
        if found is None:
            continue
        rows, cols = found
        inside = (rows >= 0) & (rows < header.height) & (cols >= 0) & (cols < header.width)
        r, c = rows[inside], cols[inside]
        if header.width * header.height * header.count <= _WHOLE_FILE_BYTES:
            block = _FILES.get(file.href)[bands]
            r0 = c0 = 0
        else:
            import rasterio
            from rasterio.windows import Window

            r0, r1, c0, c1 = int(r.min()), int(r.max()) + 1, int(c.min()), int(c.max()) + 1
            with rasterio.open(file.href) as src:
                block = src.read(
                    indexes=[b + 1 for b in bands], window=Window(c0, r0, c1 - c0, r1 - r0)
                )
        values = np.full(out.shape, NODATA, dtype=np.int8)
        values[:, inside] = block[:, r - r0, c - c0]
        # Earth Engine's mosaic(): later images on top, masked pixels transparent.
        np.copyto(out, values, where=values != NODATA)
    return out


def _compute_pixels(image: _Image, grid: _RequestGrid) -> bytes:
    """The ``.npy`` bytes of a structured array, one float32 field per band."""
    if not image.bands:
        raise _ApiError(400, "computePixels: the image has no bands")
    planes: dict[int, np.ndarray] = {}
    # Read each mosaic once for all the bands the request takes from it.
    wanted: dict[tuple[_File, ...], set[int]] = {}
    for band in image.bands:
        source = _innermost(band.pixels)
        if isinstance(source, _Source):
            wanted.setdefault(source.files, set()).add(source.band)
    mosaics: dict[tuple[tuple[_File, ...], int], np.ndarray] = {}
    for files, band_set in wanted.items():
        order = sorted(band_set)
        values = dequantize(_read_mosaic(files, order, grid))
        for i, b in enumerate(order):
            mosaics[files, b] = values[i]
    for i, band in enumerate(image.bands):
        planes[i] = _evaluate_pixels(band.pixels, grid, mosaics)
    names = [b.name for b in image.bands]
    if len(set(names)) != len(names):
        raise _ApiError(400, f"computePixels: duplicate band names {names}")
    out = np.empty((grid.height, grid.width), dtype=[(n, "<f4") for n in names])
    for i, name in enumerate(names):
        out[name] = planes[i]
    buffer = io.BytesIO()
    np.save(buffer, out, allow_pickle=False)
    return buffer.getvalue()


def _innermost(pixels: Any) -> Any:
    while isinstance(pixels, _Unmask):
        pixels = pixels.inner
    return pixels


def _evaluate_pixels(
    pixels: Any, grid: _RequestGrid, mosaics: Mapping[Any, np.ndarray]
) -> np.ndarray:
    """float32 plane with NaN where masked."""
    if isinstance(pixels, _Source):
        return mosaics[pixels.files, pixels.band]
    if isinstance(pixels, _Constant):
        value = np.nan if pixels.masked else pixels.value
        return np.full((grid.height, grid.width), value, dtype=np.float32)
    if isinstance(pixels, _Unmask):
        inner = _evaluate_pixels(pixels.inner, grid, mosaics)
        return np.where(np.isnan(inner), np.float32(pixels.value), inner).astype(np.float32)
    raise _ApiError(400, f"cannot compute pixels of {pixels!r}")


# --------------------------------------------------------------------------- the server


def _ee_test_file(name: str) -> Path:
    import ee

    path = Path(ee.__file__).parent / "tests" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: xembed's fake Earth Engine serves the discovery document and "
            "algorithm list that earthengine-api ships in ee/tests/; reinstall earthengine-api"
        )
    return path


@functools.lru_cache(maxsize=1)
def _discovery_document() -> bytes:
    text = _ee_test_file("cloud_api_discovery_document.json").read_text()
    # The shipped document describes v1alpha; the client asks for v1.
    return text.replace("v1alpha", "v1").encode()


@functools.lru_cache(maxsize=1)
def _algorithms() -> bytes:
    return _ee_test_file("algorithms.json").read_bytes()


class FakeEarthEngine:
    """A running fake Earth Engine server (see :func:`fake_earthengine`).

    Attributes
    ----------
    url : str
        ``http://127.0.0.1:PORT``.
    root : str
        The mirror folder the collection is served from.
    requests : list of FakeRequest
        Every request received, in order (retries included).
    unsupported : list of str
        Names of unsupported functions that requests asked for.
    max_concurrent : int
        The most requests the fake was answering at once (since the last
        :meth:`reset_counters`).
    """

    def __init__(self, root: str | os.PathLike[str], faults: Any = None) -> None:
        self.root = str(root)
        self.requests: list[FakeRequest] = []
        self.unsupported: list[str] = []
        self._fault_rule = _as_fault_rule(faults)
        self._lock = threading.Lock()
        self._collection: _Collection | None = None
        self._collection_lock = threading.Lock()
        self._mosaics: dict[Any, _Image] = {}
        self._in_flight = 0
        self.max_concurrent = 0
        self._results: dict[Any, Any] = {}
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ----------------------------------------------------------------- counters

    @property
    def compute_pixels_count(self) -> int:
        """Number of ``image:computePixels`` requests received (retries included)."""
        return sum(r.kind == "computePixels" for r in self.requests)

    @property
    def value_compute_count(self) -> int:
        """Number of ``value:compute`` (``getInfo``) requests received."""
        return sum(r.kind == "value:compute" for r in self.requests)

    @property
    def functions_used(self) -> frozenset[str]:
        """Every Earth Engine function named by any request so far."""
        return frozenset(f for r in self.requests for f in r.functions)

    def reset_counters(self) -> None:
        """Forget the requests seen so far (numbering, and faults, restart at 1)."""
        with self._lock:
            self.requests.clear()
            self.unsupported.clear()
            self.max_concurrent = self._in_flight

    # ----------------------------------------------------------------- data

    def collection(self) -> _Collection:
        """The fake ``GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL``: one image per mirror file."""
        with self._collection_lock:  # built once, by the first request that needs it
            if self._collection is None:
                self._collection = self._load_collection()
            return self._collection

    def _load_collection(self) -> _Collection:
        from xembed.sources.cog import read_index

        # Sorted by path within a year: the order the COG reader mosaics in.
        index = read_index(self.root).sort_values(["year", "path"], kind="stable")
        images = []
        for row in index.itertuples():
            file = _File(
                href=str(row.href),
                path=str(row.path),
                year=int(row.year),
                zone=str(row.utm_zone),
                crs=str(row.crs),
                footprint=row.footprint,
                utm_bounds=(row.utm_west, row.utm_south, row.utm_east, row.utm_north),
            )
            props = {
                "system:index": Path(file.path).stem,
                "system:time_start": _year_millis(file.year),
                "system:time_end": _year_millis(file.year + 1),
                "UTM_ZONE": file.zone,
            }
            west, south, east, north = file.utm_bounds
            native = (  # north-up, as Earth Engine describes the (bottom-up) files
                file.crs,
                (10.0, 0.0, float(west), 0.0, -10.0, float(north)),
                (round((east - west) / 10), round((north - south) / 10)),
            )
            bands = tuple(_Band(name, _Source((file,), i)) for i, name in enumerate(BANDS))
            images.append(_Image(bands, props, native, file.footprint))
        return _Collection(tuple(images), {}, ("load", COLLECTION))

    def cached(self, key: Any) -> Any:
        with self._lock:
            return self._results.get(key)

    def cache(self, key: Any, value: Any) -> None:
        with self._lock:
            if len(self._results) > 10_000:  # bounded: a long-lived fake in a notebook
                self._results.clear()
            self._results[key] = value

    def mosaic(self, files: tuple[_File, ...], names: tuple[str, ...]) -> _Image:
        """The mosaic image of ``files`` (bottom to top), built once per set of files."""
        key = (files, names)
        with self._lock:
            image = self._mosaics.get(key)
            if image is None:
                # Made once: a window's 64 band requests rebuild the same mosaics.
                bands = tuple(_Band(n, _Source(files, i)) for i, n in enumerate(names))
                image = self._mosaics[key] = _Image(bands)
            return image

    # ----------------------------------------------------------------- HTTP

    def _begin(
        self, method: str, path: str, kind: str, functions: tuple[str, ...]
    ) -> tuple[FakeRequest, int | None]:
        with self._lock:
            number = len(self.requests) + 1
            kind_number = sum(r.kind == kind for r in self.requests) + 1
            request = FakeRequest(number, kind, kind_number, method, path, functions)
            self.requests.append(request)
            self._in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self._in_flight)
            return request, self._fault_rule(request)

    def _finish(
        self, request: FakeRequest, status: int, shape: tuple[int, int, int] | None
    ) -> None:
        with self._lock:
            self._in_flight -= 1
            for i in range(len(self.requests) - 1, -1, -1):
                if self.requests[i] is request:
                    self.requests[i] = dataclasses.replace(request, status=status, shape=shape)
                    break

    def handle(self, method: str, raw_path: str, body: bytes) -> tuple[int, str, bytes]:
        """Answer one request: (status, content type, body)."""
        path = raw_path.split("?", 1)[0]
        kind, payload = "other", None
        functions: tuple[str, ...] = ()
        if method == "GET" and path == "/$discovery/rest":
            kind = "discovery"
        elif method == "GET" and re.fullmatch(r"/v1/projects/[^/]+/algorithms", path):
            kind = "algorithms"
        elif method == "POST" and re.fullmatch(r"/v1/projects/[^/]+/value:compute", path):
            kind = "value:compute"
        elif method == "POST" and re.fullmatch(r"/v1/projects/[^/]+/image:computePixels", path):
            kind = "computePixels"
        if kind in ("value:compute", "computePixels"):
            try:
                payload = json.loads(body or b"{}")
                functions = _functions_in(payload.get("expression", {}))
            except (ValueError, AttributeError):
                payload = None
        request, fault = self._begin(method, path, kind, functions)
        try:
            if fault is not None:
                raise _ApiError(
                    int(fault),
                    "Too many concurrent aggregations (injected by the fake)"
                    if int(fault) == 429
                    else f"Internal error (HTTP {int(fault)} injected by the fake)",
                )
            status, ctype, data, shape = self._answer(kind, path, payload)
        except _ApiError as err:
            if isinstance(err, _Unsupported):
                with self._lock:
                    self.unsupported.append(err.function)
            status, ctype, data, shape = err.status, "application/json", err.body(), None
        except Exception as err:  # a bug in the fake: say so, and do not invite retries
            message = f"xembed's fake Earth Engine failed: {type(err).__name__}: {err}"
            status, ctype, data = 400, "application/json", _ApiError(400, message).body()
            shape = None
        self._finish(request, status, shape)
        return status, ctype, data

    def _answer(
        self, kind: str, path: str, payload: Any
    ) -> tuple[int, str, bytes, tuple[int, int, int] | None]:
        if kind == "discovery":
            return 200, "application/json", _discovery_document(), None
        if kind == "algorithms":
            return 200, "application/json", _algorithms(), None
        if kind == "other":
            raise _ApiError(
                404,
                f"xembed's fake Earth Engine does not serve {path!r}; it answers "
                "GET /$discovery/rest, GET /v1/projects/P/algorithms, "
                "POST /v1/projects/P/value:compute and POST /v1/projects/P/image:computePixels",
            )
        if not isinstance(payload, Mapping) or "expression" not in payload:
            raise _ApiError(400, "request body must be JSON with an 'expression'")
        expression = payload["expression"]
        evaluator = _Evaluator(self, expression.get("values", {}))
        result = evaluator.reference(expression["result"], {})
        if kind == "value:compute":
            return 200, "application/json", json.dumps({"result": _encode(result)}).encode(), None
        if payload.get("fileFormat", "NPY") != "NPY":
            raise _ApiError(
                400, f"the fake returns only fileFormat 'NPY', not {payload.get('fileFormat')!r}"
            )
        if payload.get("bandIds"):
            result = _Image(tuple(_select(_as_image(result), payload["bandIds"])))
        if "grid" not in payload:
            raise _ApiError(400, "computePixels needs a 'grid' (the fake has no native grid)")
        image, grid = _as_image(result), _parse_grid(payload["grid"])
        shape = (len(image.bands), grid.height, grid.width)
        return 200, "application/octet-stream", _compute_pixels(image, grid), shape

    def start(self) -> FakeEarthEngine:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the client reuses connections
            # Headers and body go out as separate writes: without TCP_NODELAY,
            # Nagle's algorithm and the client's delayed ACK add ~40 ms to each.
            disable_nagle_algorithm = True

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, ctype, data = fake.handle(method, self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests read fake.requests instead

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="fake-earthengine", daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Transport:
    """An httplib2-like transport on a proxy-free ``requests`` session.

    ``ee`` sends requests through ``requests``, which would honour
    ``HTTP(S)_PROXY`` and route 127.0.0.1 through a proxy.
    """

    def __init__(self) -> None:
        import requests
        import requests.adapters

        self.session = requests.Session()
        self.session.trust_env = False
        # Room for every concurrent request: a full pool discards connections.
        self.session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=64))

    def request(
        self, uri: str, method: str = "GET", body: Any = None, headers: Any = None, **_: Any
    ) -> Any:
        import httplib2
        import requests

        try:
            response = self.session.request(method, uri, data=body, headers=headers, timeout=120)
        except requests.exceptions.ConnectionError as err:
            raise ConnectionError(err) from err
        info: dict[str, Any] = dict(response.headers)
        info["status"] = response.status_code
        return httplib2.Response(info), response.content


@contextlib.contextmanager
def fake_earthengine(
    root: str | os.PathLike[str] | None = None,
    *,
    faults: FaultRule | Mapping[int, int] | None = None,
    backoff_scale: float = 0.001,
) -> Iterator[FakeEarthEngine]:
    """Serve a fake Earth Engine on 127.0.0.1 and point ``ee`` at it.

    Inside the ``with`` block, ``ee`` is initialised against a local server
    that answers the Earth Engine REST API from a mirror-format folder:
    ``ee.ImageCollection("GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL")`` holds one
    image per mirror file (``system:time_start`` on 1 January of its year,
    ``UTM_ZONE``, the file's footprint), and ``getInfo``, ``computePixels``
    and Xee's ``xr.open_dataset(..., engine="ee")`` work offline, with the
    real ``earthengine-api`` client and the real Xee. Mosaics are composited
    as Earth Engine does (later images on top, masked pixels transparent)
    and resampled to the requested grid by nearest neighbour (the source
    pixel that contains each destination pixel centre), exactly as
    :mod:`xembed.sources.cog` does, so results can be compared bit for bit.

    Only the functions in :data:`SUPPORTED_FUNCTIONS` are evaluated; a
    request using any other gets HTTP 400 whose message names the function
    (``ee.EEException`` on the client), and the name is recorded in
    ``fake.unsupported``.

    Parameters
    ----------
    root : str or path, optional
        A mirror folder (``aef_index.parquet`` plus the ``.tiff`` files).
        Default: the bundled sample (:func:`xembed.sources.sample.sample_root`).
    faults : callable, mapping or None
        Failures to inject: a callable taking each :class:`FakeRequest` and
        returning an HTTP status to fail it with (or ``None``), e.g.
        :func:`first_requests_fail` ``(3, 429)`` or :func:`all_requests_fail`
        ``(500)``; or a mapping ``{n: status}`` failing the n-th (1-based)
        ``computePixels`` request, counting retries.
    backoff_scale : float, default 0.001
        While the fake runs, the ``ee`` client's retry sleeps (it retries
        HTTP 429 and 5xx up to 5 times, sleeping up to 2**n s) are multiplied
        by this, so fault tests run in milliseconds. Use 1.0 for real timing.

    Yields
    ------
    FakeEarthEngine
        The running server: ``.url``, ``.requests`` (every
        :class:`FakeRequest`), ``.compute_pixels_count``,
        ``.value_compute_count``, ``.functions_used``, ``.unsupported`` and
        ``.reset_counters()``.

    Notes
    -----
    ``ee`` is initialised with ``AnonymousCredentials`` and project
    ``"fake"``, and ``ee.deprecation._FetchDataCatalogStac`` (which would
    download the data catalogue) is stubbed. On exit the server stops and
    ``ee`` goes back to the state it had before: reset if it was not
    initialised, otherwise re-pointed at the previous server and credentials
    (the function list loaded from the fake, which is ``ee``'s own copy,
    stays). ``ee`` state is process-wide: do not run two fakes at once.

    Examples
    --------
    >>> import ee
    >>> from xembed.fake_ee import fake_earthengine
    >>> with fake_earthengine() as fake:  # doctest: +SKIP
    ...     years = ee.ImageCollection("GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL").filterDate(
    ...         "2020-01-01", "2021-01-01")
    ...     print(years.size().getInfo() > 0, fake.value_compute_count)
    True 1

    Xee reads through it too; count the pixel requests a pipeline makes:

    >>> import xembed  # doctest: +SKIP
    >>> with fake_earthengine() as fake:  # doctest: +SKIP
    ...     site = xembed.demo_sites()[0]
    ...     ds = xembed.open_embeddings(site, range(2018, 2020), source="ee")
    ...     ds.embeddings.load()
    ...     print(fake.compute_pixels_count)
    64
    """
    import ee
    import googleapiclient.http
    from google.auth.credentials import AnonymousCredentials

    if root is None:
        from xembed.sources.sample import sample_root

        root = sample_root()
    fake = FakeEarthEngine(root, faults).start()
    previous = ee.data._get_state() if ee.data.is_initialized() else None
    fast_time = types.SimpleNamespace(
        **{k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
    )
    fast_time.sleep = lambda seconds: time.sleep(seconds * backoff_scale)
    with contextlib.ExitStack() as stack:
        stack.callback(fake.stop)
        # The catalogue of deprecated assets is fetched from the internet.
        stack.enter_context(mock.patch.object(ee.deprecation, "_FetchDataCatalogStac", lambda: {}))
        if backoff_scale != 1.0:
            stack.enter_context(mock.patch.object(googleapiclient.http, "time", fast_time))
        ee.Reset()
        stack.callback(_restore_ee, previous)
        ee.Initialize(
            credentials=AnonymousCredentials(),
            url=fake.url,
            project="fake",
            http_transport=_Transport(),
        )
        yield fake


def _restore_ee(previous: Any) -> None:
    import ee
    from ee import _state

    if previous is None:
        ee.Reset()
    else:
        _state._state = previous
